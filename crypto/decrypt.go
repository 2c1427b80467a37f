package crypto

import (
	"context"
	"errors"
	"fmt"

	"go.mau.fi/libsignal/protocol"
	"go.mau.fi/libsignal/session"
	"go.mau.fi/libsignal/signalerror"
	"go.mau.fi/libsignal/state/record"
)

// Pairwise decryption with side-effect-free trial decryption.
//
// A session record holds the current session state and up to 40 archived
// ones (sessions replaced by a newer one with the same device). A message
// may belong to any of them: when two devices start sessions with each
// other at the same moment each ends up with both sessions, and after a
// session reset messages sent on the old session are still in flight. So,
// as in Signal's SessionCipher, a message is tried on the current state
// first and then on each archived one, and the state that accepts it is
// promoted to current.
//
// libsignal v0.2.1 tries every state in place. Trying a state is not
// read-only: a message with an unknown ratchet key makes the state run a
// DH ratchet step (new root key, new receiver and sender chains) before
// the MAC check fails. When a later state then accepted the message, the
// record was stored with the refusing states damaged; once such a state
// was promoted back, nothing its peer sent on it decrypted again ("no
// valid sessions"). Its promotion also only removed the winner from its
// own copy of the slice, storing the last archived state twice.
//
// Here, as in Java libsignal, every state is tried on a copy and only the
// one that accepted the message is written back. The common case costs
// nothing extra: the current state is tried in place on a record that is
// exactly the decoding of the stored bytes — just decoded, or taken from
// the session cache, which hands one out only for byte-identical stored
// bytes and never to two operations (sessioncache.go) — and only if it
// refuses the message is the record decoded again from those bytes, which
// the failed try did not touch. The ratchet itself (chain and message key derivation, MAC, CBC)
// stays the library's, through Cipher.DecryptWithState; this file only
// chooses which state it runs on.

// decryptSignal decrypts a SignalMessage from remote. It runs inside the
// caller's Store.Atomic.
func (p *Protocol) decryptSignal(ctx context.Context, l *libStore, remote Address, msg *protocol.SignalMessage) ([]byte, error) {
	raw, rec, err := l.session(ctx, remote)
	if errors.Is(err, ErrNotFound) {
		return nil, ErrNoSession
	}
	if err != nil {
		return nil, err
	}
	c := session.NewCipherFromSession(remote.signal(), l, l, l, serializer.PreKeySignalMessage, serializer.SignalMessage)
	pt, rec, err := decryptRecord(ctx, c, rec, msg, func() (*record.Session, error) { return decodeSessionRecord(raw) })
	if err != nil {
		return nil, err
	}
	if err := p.storeSession(ctx, l, remote, rec); err != nil {
		return nil, err
	}
	return pt, nil
}

// decryptPreKey decrypts a PreKeySignalMessage from remote: the library's
// Builder.Process builds the session the message starts (X3DH) unless the
// record already holds it, then the inner SignalMessage is decrypted as in
// decryptSignal, and the one-time prekey it used is removed. It runs
// inside the caller's Store.Atomic.
func (p *Protocol) decryptPreKey(ctx context.Context, l *libStore, remote Address, msg *protocol.PreKeySignalMessage) ([]byte, error) {
	raw, rec, err := l.session(ctx, remote)
	switch {
	case errors.Is(err, ErrNotFound):
		raw, rec = nil, record.NewSession(serializer.Session, serializer.State)
	case err != nil:
		return nil, err
	}
	builder := session.NewBuilder(l, l, l, l, remote.signal(), serializer)
	current := rec.SessionState()
	preKeyID, err := builder.Process(ctx, rec, msg)
	if err != nil {
		return nil, err
	}
	// Process either leaves the record alone (it already holds the session
	// this message starts: a second message sent before we answered) or
	// builds a new current state — in the fresh state of an empty record,
	// or in a new one after archiving the old current state. Only in the
	// first case are the stored bytes a clean copy to fall back on; a new
	// state is tried on a copy (it is small: no receiver chain yet, and the
	// X3DH that built it costs far more).
	var pristine func() (*record.Session, error)
	if raw != nil && rec.SessionState() == current {
		pristine = func() (*record.Session, error) { return decodeSessionRecord(raw) }
	}
	c := session.NewCipher(builder, remote.signal())
	pt, rec, err := decryptRecord(ctx, c, rec, msg.WhisperMessage(), pristine)
	if err != nil {
		return nil, err
	}
	if err := p.storeSession(ctx, l, remote, rec); err != nil {
		return nil, err
	}
	if !preKeyID.IsEmpty {
		if err := l.RemovePreKey(ctx, preKeyID.Value); err != nil {
			return nil, err
		}
	}
	return pt, nil
}

// storeSession checks that the identity of the session that decrypted the
// message is still trusted (an archived state may predate a changed key)
// and stores the record.
func (p *Protocol) storeSession(ctx context.Context, l *libStore, remote Address, rec *record.Session) error {
	key := rec.SessionState().RemoteIdentityKey()
	trusted, err := l.IsTrustedIdentity(ctx, remote.signal(), key)
	if err != nil {
		return err
	}
	if !trusted {
		return signalerror.ErrUntrustedIdentity
	}
	if err := l.SaveIdentity(ctx, remote.signal(), key); err != nil {
		return err
	}
	return l.StoreSession(ctx, remote.signal(), rec)
}

// decryptRecord decrypts msg with the first of rec's states that accepts
// it — the current one, then the archived ones, newest first — and returns
// the record to store: rec itself when the current state accepted it,
// otherwise a record with the accepting state promoted to current and the
// old current state archived in front. A state that refuses the message is
// left exactly as it was.
//
// pristine, when not nil, returns a new, untouched decoding of rec: the
// current state is then tried in place (no copy in the common case) and
// pristine is called once if it refuses the message. With pristine nil
// the current state is tried on a copy too.
//
// A duplicate (signalerror.ErrOldCounter: a state has the message's chain
// and has used that message key) ends the search: ratchet keys are random,
// so no other state has that chain. When no state accepts the message the
// error is signalerror.ErrNoValidSessions, wrapping what the current state
// said about it.
func decryptRecord(ctx context.Context, c *session.Cipher, rec *record.Session, msg *protocol.SignalMessage,
	pristine func() (*record.Session, error)) ([]byte, *record.Session, error) {
	var (
		pt  []byte
		err error
	)
	if pristine != nil {
		pt, _, err = c.DecryptWithState(ctx, rec.SessionState(), msg)
		if err == nil {
			return pt, rec, nil
		}
		if errors.Is(err, signalerror.ErrOldCounter) {
			return nil, nil, err
		}
		var perr error
		if rec, perr = pristine(); perr != nil {
			return nil, nil, perr
		}
	} else {
		var cur *record.State
		cur, pt, err = tryState(ctx, c, rec.SessionState(), msg)
		if err == nil {
			rec.SetState(cur)
			return pt, rec, nil
		}
		if errors.Is(err, signalerror.ErrOldCounter) {
			return nil, nil, err
		}
	}
	currentErr := err
	for i, st := range rec.PreviousSessionStates() {
		won, pt, err := tryState(ctx, c, st, msg)
		if errors.Is(err, signalerror.ErrOldCounter) {
			return nil, nil, err
		}
		if err == nil {
			return pt, promote(rec, i, won), nil
		}
	}
	return nil, nil, fmt.Errorf("%w (current state: %w)", signalerror.ErrNoValidSessions, currentErr)
}

// tryState decrypts msg on a copy of s and returns the copy, advanced past
// the message, or the library's reason for refusing it. s is not changed.
func tryState(ctx context.Context, c *session.Cipher, s *record.State, msg *protocol.SignalMessage) (*record.State, []byte, error) {
	if !s.HasSenderChain() {
		// Never initialised (an archived empty state); it cannot be
		// serialized, and the library would refuse it anyway.
		return nil, nil, signalerror.ErrUninitializedSession
	}
	cp, err := record.NewStateFromBytes(s.Serialize(), serializer.State)
	if err != nil {
		return nil, nil, fmt.Errorf("copy session state: %w: %w", ErrCorruptRecord, err)
	}
	pt, _, err := c.DecryptWithState(ctx, cp, msg)
	if err != nil {
		return nil, nil, err
	}
	return cp, pt, nil
}

// promote returns rec with its archived state i replaced by s and promoted
// to current, and the old current state archived in front of the others —
// what Java libsignal does with previousStates.remove() followed by
// SessionRecord.promoteState. The record's archive is only reachable through
// PromoteState, which pushes the current state to the front, so the new
// record is assembled back to front.
func promote(rec *record.Session, i int, s *record.State) *record.Session {
	prev := rec.PreviousSessionStates()
	order := make([]*record.State, 0, len(prev)+1)
	order = append(order, s, rec.SessionState())
	order = append(order, prev[:i]...)
	order = append(order, prev[i+1:]...)
	out := record.NewSessionFromState(order[len(order)-1], serializer.Session)
	for k := len(order) - 2; k >= 0; k-- {
		// At most 40 archived states before, so at most 40 after: the
		// library's cap never drops one here.
		out.PromoteState(order[k])
	}
	return out
}
