package crypto

import (
	"bytes"
	"context"
	"errors"
	"fmt"

	grouprecord "go.mau.fi/libsignal/groups/state/record"
	"go.mau.fi/libsignal/keys/identity"
	"go.mau.fi/libsignal/protocol"
	"go.mau.fi/libsignal/state/record"
)

// libStore adapts a Store (opaque byte records, hush addresses) to the
// interfaces go.mau.fi/libsignal calls. One is made per operation: it
// remembers the identity it looked up so that the library's
// IsTrustedIdentity-then-SaveIdentity pair costs one store read, and it
// remembers which key was refused so the caller can report it.
type libStore struct {
	p *Protocol
	s Store

	seen      map[Address]IdentityRecord
	untrusted *UntrustedIdentityError
}

func (p *Protocol) lib() *libStore { return &libStore{p: p, s: p.store} }

func toAddress(a *protocol.SignalAddress) Address {
	return Address{Name: a.Name(), DeviceID: a.DeviceID()}
}

func (a Address) signal() *protocol.SignalAddress {
	return protocol.NewSignalAddress(a.Name, a.DeviceID)
}

// --- store.IdentityKey ---

func (l *libStore) GetIdentityKeyPair() *identity.KeyPair { return l.p.identity.kp }

func (l *libStore) GetLocalRegistrationID() uint32 { return l.p.registrationID }

func (l *libStore) identity(ctx context.Context, addr Address) (IdentityRecord, bool, error) {
	if rec, ok := l.seen[addr]; ok {
		return rec, true, nil
	}
	rec, err := l.s.LoadIdentity(ctx, addr)
	if errors.Is(err, ErrNotFound) {
		return IdentityRecord{}, false, nil
	}
	if err != nil {
		return IdentityRecord{}, false, fmt.Errorf("load identity of %s: %w", addr, err)
	}
	if l.seen == nil {
		l.seen = map[Address]IdentityRecord{}
	}
	l.seen[addr] = rec
	return rec, true, nil
}

// IsTrustedIdentity is trust on first use: an unknown device is trusted, a
// known one only with the key recorded for it. A changed key stays refused
// until the user accepts it (Protocol.TrustIdentity).
func (l *libStore) IsTrustedIdentity(ctx context.Context, sa *protocol.SignalAddress, key *identity.Key) (bool, error) {
	addr := toAddress(sa)
	rec, ok, err := l.identity(ctx, addr)
	if err != nil {
		return false, err
	}
	if !ok || bytes.Equal(rec.Key, key.Serialize()) {
		return true, nil
	}
	l.untrusted = &UntrustedIdentityError{Address: addr, Key: key.Serialize(), Known: bytes.Clone(rec.Key)}
	return false, nil
}

// SaveIdentity records a first-seen key. The library calls it after every
// successful operation; a known, equal key costs no write. It never
// replaces a different key: that is the user's decision.
func (l *libStore) SaveIdentity(ctx context.Context, sa *protocol.SignalAddress, key *identity.Key) error {
	addr := toAddress(sa)
	rec, ok, err := l.identity(ctx, addr)
	if err != nil {
		return err
	}
	k := key.Serialize()
	if ok {
		if bytes.Equal(rec.Key, k) {
			return nil
		}
		return &UntrustedIdentityError{Address: addr, Key: k, Known: bytes.Clone(rec.Key)}
	}
	rec = IdentityRecord{Key: k}
	if err := l.s.StoreIdentity(ctx, addr, rec); err != nil {
		return fmt.Errorf("store identity of %s: %w", addr, err)
	}
	if l.seen == nil {
		l.seen = map[Address]IdentityRecord{}
	}
	l.seen[addr] = rec
	return nil
}

// --- store.PreKey ---

func (l *libStore) LoadPreKey(ctx context.Context, id uint32) (*record.PreKey, error) {
	b, err := l.s.LoadPreKey(ctx, id)
	if errors.Is(err, ErrNotFound) {
		return nil, nil // the library reports ErrNoOneTimeKeyFound
	}
	if err != nil {
		return nil, fmt.Errorf("load prekey %d: %w", id, err)
	}
	rec, err := decodePreKeyRecord(b)
	if err != nil {
		return nil, fmt.Errorf("load prekey %d: %w", id, err)
	}
	return rec, nil
}

func (l *libStore) StorePreKey(ctx context.Context, id uint32, rec *record.PreKey) error {
	return l.s.StorePreKey(ctx, id, rec.Serialize())
}

func (l *libStore) ContainsPreKey(ctx context.Context, id uint32) (bool, error) {
	_, err := l.s.LoadPreKey(ctx, id)
	if errors.Is(err, ErrNotFound) {
		return false, nil
	}
	return err == nil, err
}

// RemovePreKey is called by the library once a one-time prekey has been used.
// The library already skips LastResortPreKeyID; the check here keeps the
// last-resort key safe even if that ever changes.
func (l *libStore) RemovePreKey(ctx context.Context, id uint32) error {
	if id == LastResortPreKeyID {
		return nil
	}
	if err := l.s.RemovePreKey(ctx, id); err != nil {
		return fmt.Errorf("remove used prekey %d: %w", id, err)
	}
	return nil
}

// --- store.SignedPreKey ---

func (l *libStore) LoadSignedPreKey(ctx context.Context, id uint32) (*record.SignedPreKey, error) {
	b, err := l.s.LoadSignedPreKey(ctx, id)
	if errors.Is(err, ErrNotFound) {
		return nil, nil // the library reports ErrNoSignedPreKey
	}
	if err != nil {
		return nil, fmt.Errorf("load signed prekey %d: %w", id, err)
	}
	rec, err := decodeSignedPreKeyRecord(b)
	if err != nil {
		return nil, fmt.Errorf("load signed prekey %d: %w", id, err)
	}
	return rec, nil
}

func (l *libStore) LoadSignedPreKeys(ctx context.Context) ([]*record.SignedPreKey, error) {
	ids, err := l.s.SignedPreKeyIDs(ctx)
	if err != nil {
		return nil, err
	}
	out := make([]*record.SignedPreKey, 0, len(ids))
	for _, id := range ids {
		rec, err := l.LoadSignedPreKey(ctx, id)
		if err != nil {
			return nil, err
		}
		if rec != nil {
			out = append(out, rec)
		}
	}
	return out, nil
}

func (l *libStore) StoreSignedPreKey(ctx context.Context, id uint32, rec *record.SignedPreKey) error {
	return l.s.StoreSignedPreKey(ctx, id, rec.Serialize())
}

func (l *libStore) ContainsSignedPreKey(ctx context.Context, id uint32) (bool, error) {
	_, err := l.s.LoadSignedPreKey(ctx, id)
	if errors.Is(err, ErrNotFound) {
		return false, nil
	}
	return err == nil, err
}

func (l *libStore) RemoveSignedPreKey(ctx context.Context, id uint32) error {
	return l.s.RemoveSignedPreKey(ctx, id)
}

// --- store.Session ---

// LoadSession returns a fresh record when there is none, as the library
// expects.
func (l *libStore) LoadSession(ctx context.Context, sa *protocol.SignalAddress) (*record.Session, error) {
	addr := toAddress(sa)
	b, err := l.s.LoadSession(ctx, addr)
	if errors.Is(err, ErrNotFound) {
		return record.NewSession(serializer.Session, serializer.State), nil
	}
	if err != nil {
		return nil, fmt.Errorf("load session with %s: %w", addr, err)
	}
	rec, err := decodeSessionRecord(b)
	if err != nil {
		return nil, fmt.Errorf("load session with %s: %w", addr, err)
	}
	return rec, nil
}

func (l *libStore) GetSubDeviceSessions(ctx context.Context, name string) ([]uint32, error) {
	return l.s.SessionDeviceIDs(ctx, name)
}

func (l *libStore) StoreSession(ctx context.Context, sa *protocol.SignalAddress, rec *record.Session) error {
	addr := toAddress(sa)
	if err := l.s.StoreSession(ctx, addr, rec.Serialize()); err != nil {
		return fmt.Errorf("store session with %s: %w", addr, err)
	}
	return nil
}

func (l *libStore) ContainsSession(ctx context.Context, sa *protocol.SignalAddress) (bool, error) {
	_, err := l.s.LoadSession(ctx, toAddress(sa))
	if errors.Is(err, ErrNotFound) {
		return false, nil
	}
	return err == nil, err
}

func (l *libStore) DeleteSession(ctx context.Context, sa *protocol.SignalAddress) error {
	return l.s.DeleteSession(ctx, toAddress(sa))
}

// DeleteAllSessions is part of the library's interface but never called by
// it; hush deletes sessions per device.
func (l *libStore) DeleteAllSessions(ctx context.Context) error {
	return errors.New("delete all sessions: not supported; delete per device")
}

// --- groups store.SenderKey ---

func (l *libStore) LoadSenderKey(ctx context.Context, name *protocol.SenderKeyName) (*grouprecord.SenderKey, error) {
	addr := toAddress(name.Sender())
	b, err := l.s.LoadSenderKey(ctx, name.GroupID(), addr)
	if errors.Is(err, ErrNotFound) {
		// The library dereferences the record without a nil check.
		return grouprecord.NewSenderKey(serializer.SenderKeyRecord, serializer.SenderKeyState), nil
	}
	if err != nil {
		return nil, fmt.Errorf("load sender key of %s: %w", addr, err)
	}
	rec, err := decodeSenderKeyRecord(b)
	if err != nil {
		return nil, fmt.Errorf("load sender key of %s: %w", addr, err)
	}
	return rec, nil
}

func (l *libStore) StoreSenderKey(ctx context.Context, name *protocol.SenderKeyName, rec *grouprecord.SenderKey) error {
	addr := toAddress(name.Sender())
	if err := l.s.StoreSenderKey(ctx, name.GroupID(), addr, rec.Serialize()); err != nil {
		return fmt.Errorf("store sender key of %s: %w", addr, err)
	}
	return nil
}
