package crypto

import (
	"encoding/hex"
	"errors"
	"fmt"
)

// Session and group errors. Test with errors.Is; each wraps the library's
// reason where there is one.
var (
	// ErrDuplicateMessage: the message was already decrypted (its key is
	// used up). No plaintext is returned and the session is unchanged: drop
	// the message and acknowledge it. A replay older than the retained
	// ratchet state (five DH ratchet steps, or 2,000 skipped keys) cannot
	// be told apart from a forgery and fails with ErrInvalidMessage instead.
	ErrDuplicateMessage = errors.New("duplicate message")
	// ErrNoSession: there is no session with that device; fetch its bundle.
	ErrNoSession = errors.New("no session")
	// ErrUntrustedIdentity: the device's identity key differs from the one
	// recorded. The concrete error is *UntrustedIdentityError.
	ErrUntrustedIdentity = errors.New("untrusted identity")
	// ErrBadSignedPreKeySignature: a bundle's signed prekey is not signed by
	// its identity key. Wraps ErrBadSignature.
	ErrBadSignedPreKeySignature = fmt.Errorf("bundle signed prekey: %w", ErrBadSignature)
	// ErrInvalidBundle: a bundle field is missing or malformed.
	ErrInvalidBundle = errors.New("invalid bundle")
	// ErrUnknownPreKey: a PreKeySignalMessage names a one-time or signed
	// prekey this device no longer has (already used, or rotated away). The
	// sender has to start a new session from a fresh bundle.
	ErrUnknownPreKey = errors.New("message uses an unknown prekey")
	// ErrTooFarInFuture: the message skips more than 2,000 messages of its
	// chain; libsignal refuses to derive that many keys.
	ErrTooFarInFuture = errors.New("message too far in the future")
	// ErrNoSenderKey: no sender key from that member for that group (its
	// distribution message has not arrived, or was for an older chain).
	ErrNoSenderKey = errors.New("no sender key")
)

// UntrustedIdentityError reports a device whose identity key changed.
// Nothing was decrypted or sent. After the user accepts the new key
// (Protocol.TrustIdentity) the same message can be processed again.
type UntrustedIdentityError struct {
	Address Address
	// Key is the new 33-byte identity key, Known the recorded one.
	Key, Known []byte
}

func (e *UntrustedIdentityError) Error() string {
	return fmt.Sprintf("identity key of %s changed (recorded %s…, now %s…)", e.Address,
		hex.EncodeToString(e.Known[:min(len(e.Known), 9)]), hex.EncodeToString(e.Key[:min(len(e.Key), 9)]))
}

// Is makes errors.Is(err, ErrUntrustedIdentity) true.
func (e *UntrustedIdentityError) Is(target error) bool { return target == ErrUntrustedIdentity }
