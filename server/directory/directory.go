// Package directory answers the relay's one question about accounts: which
// devices does this account have right now?
//
// The relay needs the answer twice. At connect, a token is honoured only
// while its device is still listed (device ids are never reused, so removing
// a device revokes all its tokens: that is hush's revocation). At every Send,
// the recipient list must name exactly the current devices of each addressed
// account, as Signal's 409/410 answers enforce, so a sender can never forget
// a newly added device or keep encrypting to a removed one.
//
// The key server owns the answer. In hush-server both run in one process and
// Func adapts the key server's own lookup; hush-relay asks the key server's
// internal endpoint through HTTP. Either way the relay wraps the source in a
// Cache: a Send to a 1,024-member group must not cost 1,024 round trips. The
// cache is short-lived (seconds) and the key server's device-change
// notifications invalidate an account at once, so a removed device is refused
// on the next connect, and a connected removed device is closed (see the
// relay's DeviceChanged).
package directory

import (
	"context"
	"errors"
)

// ErrUnknownAccount is wrapped by Devices when the account does not exist.
var ErrUnknownAccount = errors.New("unknown account")

// Directory looks up an account's current devices.
//
// Devices returns the device ids of account in ascending order, never empty
// for an existing account (an account keeps at least one device). For an
// account that does not exist it returns an error wrapping
// ErrUnknownAccount; any other error is a failure of the source (retry
// later). Implementations are safe for concurrent use; the caller must not
// modify the returned slice.
type Directory interface {
	Devices(ctx context.Context, account string) ([]uint32, error)
}

// Func adapts a lookup function to Directory; hush-server uses it to ask the
// key server in-process.
type Func func(ctx context.Context, account string) ([]uint32, error)

// Devices calls f.
func (f Func) Devices(ctx context.Context, account string) ([]uint32, error) { return f(ctx, account) }

// Static is a fixed directory: account → device ids. It serves tests and
// tools; a real deployment asks the key server.
type Static map[string][]uint32

// Devices returns s[account] or ErrUnknownAccount.
func (s Static) Devices(_ context.Context, account string) ([]uint32, error) {
	d, ok := s[account]
	if !ok || len(d) == 0 {
		return nil, &UnknownAccountError{Account: account}
	}
	return d, nil
}

// UnknownAccountError names the account that does not exist.
type UnknownAccountError struct{ Account string }

func (e *UnknownAccountError) Error() string { return "account " + e.Account + " does not exist" }

// Unwrap makes errors.Is(err, ErrUnknownAccount) true.
func (e *UnknownAccountError) Unwrap() error { return ErrUnknownAccount }

// HasDevice reports whether id is among devices (ascending or not).
func HasDevice(devices []uint32, id uint32) bool {
	for _, d := range devices {
		if d == id {
			return true
		}
	}
	return false
}
