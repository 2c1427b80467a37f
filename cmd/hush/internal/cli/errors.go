package cli

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/url"
	"syscall"

	"github.com/hushchat/hush/client"
	"github.com/hushchat/hush/keyserver/ksclient"
	"github.com/hushchat/hush/server/media/mediaclient"
)

// exitError carries an explicit exit code.
type exitError struct {
	code int
	err  error
}

func (e *exitError) Error() string { return e.err.Error() }
func (e *exitError) Unwrap() error { return e.err }

// errUnreachable marks "the server did not answer in time".
var errUnreachable = errors.New("the hush server could not be reached")

// exitCode maps an error to the documented exit code.
func exitCode(err error) int {
	var ee *exitError
	var ue *usageError
	switch {
	case err == nil:
		return ExitOK
	case errors.As(err, &ee):
		return ee.code
	case errors.As(err, &ue):
		return ExitUsage
	case errors.Is(err, client.ErrIdentityChanged):
		return ExitIdentity
	case errors.Is(err, client.ErrNotRegistered):
		return ExitNotRegistered
	case errors.Is(err, client.ErrProfileLocked):
		return ExitProfileLocked
	case isNetwork(err):
		return ExitNetwork
	}
	return ExitFailed
}

// isNetwork reports whether err means the server could not be reached
// (as opposed to a refusal it sent).
func isNetwork(err error) bool {
	if errors.Is(err, errUnreachable) || errors.Is(err, syscall.ECONNREFUSED) || errors.Is(err, syscall.ECONNRESET) ||
		errors.Is(err, syscall.EHOSTUNREACH) || errors.Is(err, syscall.ENETUNREACH) || errors.Is(err, context.DeadlineExceeded) {
		return true
	}
	var oe *net.OpError
	var de *net.DNSError
	var ue *url.Error
	if errors.As(err, &oe) || errors.As(err, &de) || (errors.As(err, &ue) && ue.Timeout()) {
		return true
	}
	var ke *ksclient.Error
	var me *mediaclient.Error
	// 502/503/504: a proxy or the server says it cannot serve now.
	return (errors.As(err, &ke) && ke.Status >= 502 && ke.Status <= 504) ||
		(errors.As(err, &me) && me.Status >= 502 && me.Status <= 504)
}

// describe words an error for stderr, with the next step where there is
// an obvious one.
func describe(err error) string {
	var ice *client.IdentityChangedError
	switch {
	case errors.As(err, &ice):
		return fmt.Sprintf("%v\nCompare safety numbers ('hush safety NAME' on both sides), then accept the new key with 'hush trust NAME'.", err)
	case errors.Is(err, client.ErrNotRegistered):
		return "this profile has no account yet: run 'hush register --server URL NAME' (or 'hush link CODE' to add this device to an account)"
	case errors.Is(err, client.ErrProfileLocked):
		return fmt.Sprintf("%v: another hush command (or listen) is using this profile; wait for it to finish, or send through 'hush listen --stdin'", err)
	}
	return err.Error()
}
