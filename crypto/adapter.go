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
//
// It also carries the operation's session records: one read ahead for the
// library (Encrypt checks that a session exists, then the library loads
// it), and the ones stored, which enter Protocol's session cache once the
// operation has succeeded (see sessioncache.go).
type libStore struct {
	p *Protocol
	s Store

	seen      addrMap[IdentityRecord]
	untrusted *UntrustedIdentityError

	loaded addrMap[*record.Session]
	stored addrMap[cachedSession]
}

// addrMap is a map keyed by Address for the one or two devices an
// operation touches, held inline: an operation allocates no map.
type addrMap[V any] struct {
	n     int
	small [2]addrEntry[V]
	more  []addrEntry[V]
}

type addrEntry[V any] struct {
	addr Address
	v    V
}

func (m *addrMap[V]) entries() []addrEntry[V] {
	if m.more != nil {
		return m.more
	}
	return m.small[:m.n]
}

func (m *addrMap[V]) get(a Address) (V, bool) {
	for _, e := range m.entries() {
		if e.addr == a {
			return e.v, true
		}
	}
	var zero V
	return zero, false
}

func (m *addrMap[V]) set(a Address, v V) {
	es := m.entries()
	for i := range es {
		if es[i].addr == a {
			es[i].v = v
			return
		}
	}
	if m.more == nil && m.n < len(m.small) {
		m.small[m.n] = addrEntry[V]{a, v}
		m.n++
		return
	}
	if m.more == nil {
		m.more = append([]addrEntry[V](nil), m.small[:m.n]...)
	}
	m.more = append(m.more, addrEntry[V]{a, v})
}

func (m *addrMap[V]) del(a Address) {
	es := m.entries()
	for i := range es {
		if es[i].addr == a {
			copy(es[i:], es[i+1:])
			var zero addrEntry[V]
			es[len(es)-1] = zero
			if m.more != nil {
				m.more = m.more[:len(m.more)-1]
			} else {
				m.n--
			}
			return
		}
	}
}

func (p *Protocol) lib() *libStore { return &libStore{p: p, s: p.store} }

// atomicLib runs fn like atomic with a libStore for the operation, made
// afresh for each run of fn (a Store may run fn again after a conflict),
// and hands the session records the successful run stored to the cache.
func (p *Protocol) atomicLib(ctx context.Context, what string, fn func(ctx context.Context, l *libStore) error) error {
	var l *libStore
	err := p.atomic(ctx, what, func(ctx context.Context) error {
		l = p.lib()
		return fn(ctx, l)
	})
	if err == nil && l != nil {
		for _, s := range l.stored.entries() {
			p.sessions.put(s.addr, s.v.raw, s.v.rec)
		}
	}
	return err
}

// session reads the session record with addr: the cached decoding when the
// stored bytes are the ones cached, otherwise a new decoding. raw is what
// the store returned. A missing record is an error wrapping ErrNotFound.
func (l *libStore) session(ctx context.Context, addr Address) (raw []byte, rec *record.Session, err error) {
	raw, err = l.s.LoadSession(ctx, addr)
	if err != nil {
		return nil, nil, fmt.Errorf("load session with %s: %w", addr, err)
	}
	if rec = l.p.sessions.take(addr, raw); rec != nil {
		return raw, rec, nil
	}
	if rec, err = decodeSessionRecord(raw); err != nil {
		return nil, nil, fmt.Errorf("load session with %s: %w", addr, err)
	}
	return raw, rec, nil
}

// preload reads the session record with addr for the library's next
// LoadSession of it, and reports whether there is one.
func (l *libStore) preload(ctx context.Context, addr Address) (bool, error) {
	_, rec, err := l.session(ctx, addr)
	if errors.Is(err, ErrNotFound) {
		return false, nil
	}
	if err != nil {
		return false, err
	}
	l.loaded.set(addr, rec)
	return true, nil
}

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
	if rec, ok := l.seen.get(addr); ok {
		return rec, true, nil
	}
	rec, err := l.s.LoadIdentity(ctx, addr)
	if errors.Is(err, ErrNotFound) {
		return IdentityRecord{}, false, nil
	}
	if err != nil {
		return IdentityRecord{}, false, fmt.Errorf("load identity of %s: %w", addr, err)
	}
	l.seen.set(addr, rec)
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
	if !ok || sameKey(rec.Key, key) {
		return true, nil
	}
	l.untrusted = &UntrustedIdentityError{Address: addr, Key: key.Serialize(), Known: bytes.Clone(rec.Key)}
	return false, nil
}

// sameKey reports whether stored, a 33-byte serialized key, is key —
// bytes.Equal(stored, key.Serialize()) without serializing key on every
// message.
func sameKey(stored []byte, key *identity.Key) bool {
	pk := key.PublicKey().PublicKey()
	return len(stored) == PublicKeySize && stored[0] == KeyTypeDJB && bytes.Equal(stored[1:], pk[:])
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
	if ok {
		if sameKey(rec.Key, key) {
			return nil
		}
		return &UntrustedIdentityError{Address: addr, Key: key.Serialize(), Known: bytes.Clone(rec.Key)}
	}
	rec = IdentityRecord{Key: key.Serialize()}
	if err := l.s.StoreIdentity(ctx, addr, rec); err != nil {
		return fmt.Errorf("store identity of %s: %w", addr, err)
	}
	l.seen.set(addr, rec)
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
// expects. A record preloaded for addr is handed out once.
func (l *libStore) LoadSession(ctx context.Context, sa *protocol.SignalAddress) (*record.Session, error) {
	addr := toAddress(sa)
	if rec, ok := l.loaded.get(addr); ok {
		l.loaded.del(addr)
		return rec, nil
	}
	_, rec, err := l.session(ctx, addr)
	if errors.Is(err, ErrNotFound) {
		return record.NewSession(serializer.Session, serializer.State), nil
	}
	return rec, err
}

func (l *libStore) GetSubDeviceSessions(ctx context.Context, name string) ([]uint32, error) {
	return l.s.SessionDeviceIDs(ctx, name)
}

// StoreSession stores rec and remembers it for the cache; the operation
// must not change rec after storing it (every caller stores last).
func (l *libStore) StoreSession(ctx context.Context, sa *protocol.SignalAddress, rec *record.Session) error {
	addr := toAddress(sa)
	raw := rec.Serialize()
	if err := l.s.StoreSession(ctx, addr, raw); err != nil {
		return fmt.Errorf("store session with %s: %w", addr, err)
	}
	l.loaded.del(addr)
	l.stored.set(addr, cachedSession{addr: addr, raw: raw, rec: rec})
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
	addr := toAddress(sa)
	l.loaded.del(addr)
	l.stored.del(addr)
	l.p.sessions.drop(addr)
	return l.s.DeleteSession(ctx, addr)
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
