package crypto

import (
	"errors"
	"fmt"

	grouprecord "go.mau.fi/libsignal/groups/state/record"
	"go.mau.fi/libsignal/state/record"
)

// ErrCorruptRecord is returned when a stored record cannot be decoded.
var ErrCorruptRecord = errors.New("corrupt stored record")

// catch turns a panic inside the library into an error. libsignal v0.2.1
// indexes into byte slices it has not length-checked (ecc.DecodePoint on an
// empty key, CBC on a partial block, …); hush validates every input it can
// before calling in, and catch is the backstop so a malformed record or
// message can never take the process down. State is never persisted after a
// recovered panic: every operation runs inside Store.Atomic and fails.
func catch(what string, err *error) {
	if r := recover(); r != nil {
		*err = fmt.Errorf("%w (library panic: %v)", ErrInvalidMessage, r)
		if what != "" {
			*err = fmt.Errorf("%s: %w", what, *err)
		}
	}
}

func decodeSessionRecord(b []byte) (rec *record.Session, err error) {
	defer catchRecord("session", &err)
	rec, err = record.NewSessionFromBytes(b, serializer.Session, serializer.State)
	if err != nil {
		return nil, fmt.Errorf("decode session record: %w: %w", ErrCorruptRecord, err)
	}
	if !rec.SessionState().HasSenderChain() {
		return nil, fmt.Errorf("decode session record: %w: no sender chain", ErrCorruptRecord)
	}
	return rec, nil
}

func decodePreKeyRecord(b []byte) (rec *record.PreKey, err error) {
	defer catchRecord("prekey", &err)
	rec, err = record.NewPreKeyFromBytes(b, serializer.PreKeyRecord)
	if err != nil {
		return nil, fmt.Errorf("decode prekey record: %w: %w", ErrCorruptRecord, err)
	}
	return rec, nil
}

func decodeSignedPreKeyRecord(b []byte) (rec *record.SignedPreKey, err error) {
	defer catchRecord("signed prekey", &err)
	rec, err = record.NewSignedPreKeyFromBytes(b, serializer.SignedPreKeyRecord)
	if err != nil {
		return nil, fmt.Errorf("decode signed prekey record: %w: %w", ErrCorruptRecord, err)
	}
	return rec, nil
}

func decodeSenderKeyRecord(b []byte) (rec *grouprecord.SenderKey, err error) {
	defer catchRecord("sender key", &err)
	rec, err = grouprecord.NewSenderKeyFromBytes(b, serializer.SenderKeyRecord, serializer.SenderKeyState)
	if err != nil {
		return nil, fmt.Errorf("decode sender key record: %w: %w", ErrCorruptRecord, err)
	}
	return rec, nil
}

func catchRecord(what string, err *error) {
	if r := recover(); r != nil {
		*err = fmt.Errorf("decode %s record: %w (library panic: %v)", what, ErrCorruptRecord, r)
	}
}
