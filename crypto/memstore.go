package crypto

import (
	"bytes"
	"context"
	"fmt"
	"slices"
	"sync"
)

// MemoryStore is an in-memory Store for tests, benchmarks and short-lived
// bots. It keeps copies of every record, so callers cannot alias its state.
// Atomic holds the store's lock for the duration of fn and undoes fn's
// writes when fn fails; operations outside Atomic take the lock per call.
type MemoryStore struct {
	mu         sync.Mutex
	identities map[Address]IdentityRecord
	preKeys    map[uint32][]byte
	signed     map[uint32][]byte
	sessions   map[Address][]byte
	senderKeys map[senderKeyID][]byte
}

type senderKeyID struct {
	group  string
	sender Address
}

// NewMemoryStore returns an empty MemoryStore.
func NewMemoryStore() *MemoryStore {
	return &MemoryStore{
		identities: map[Address]IdentityRecord{},
		preKeys:    map[uint32][]byte{},
		signed:     map[uint32][]byte{},
		sessions:   map[Address][]byte{},
		senderKeys: map[senderKeyID][]byte{},
	}
}

var _ Store = (*MemoryStore)(nil)

// memTx is the undo log of one Atomic call, carried in its context.
type memTx struct {
	store   *MemoryStore
	undo    []func()
	undoBuf [4]func() // room for the writes of one message
}

type memTxKey struct{}

// lock takes the store lock unless ctx is inside this store's Atomic (which
// already holds it). It returns the undo log to append to, if any, and the
// function that releases the lock.
func (m *MemoryStore) lock(ctx context.Context) (*memTx, func()) {
	if tx, ok := ctx.Value(memTxKey{}).(*memTx); ok && tx.store == m {
		return tx, func() {}
	}
	m.mu.Lock()
	return nil, m.mu.Unlock
}

// Atomic implements Store.
func (m *MemoryStore) Atomic(ctx context.Context, fn func(ctx context.Context) error) error {
	if tx, ok := ctx.Value(memTxKey{}).(*memTx); ok && tx.store == m {
		return fn(ctx)
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	tx := &memTx{store: m}
	tx.undo = tx.undoBuf[:0]
	err := fn(context.WithValue(ctx, memTxKey{}, tx))
	if err != nil {
		for i := len(tx.undo) - 1; i >= 0; i-- {
			tx.undo[i]()
		}
	}
	return err
}

// put sets k in mp, recording how to undo it when inside Atomic.
func put[K comparable, V any](tx *memTx, mp map[K]V, k K, v V) {
	if tx != nil {
		old, had := mp[k]
		tx.undo = append(tx.undo, func() {
			if had {
				mp[k] = old
			} else {
				delete(mp, k)
			}
		})
	}
	mp[k] = v
}

func del[K comparable, V any](tx *memTx, mp map[K]V, k K) {
	old, had := mp[k]
	if !had {
		return
	}
	if tx != nil {
		tx.undo = append(tx.undo, func() { mp[k] = old })
	}
	delete(mp, k)
}

func load[K comparable](mp map[K][]byte, k K, what string) ([]byte, error) {
	v, ok := mp[k]
	if !ok {
		return nil, fmt.Errorf("%s %v: %w", what, k, ErrNotFound)
	}
	return bytes.Clone(v), nil
}

// LoadIdentity implements IdentityStore.
func (m *MemoryStore) LoadIdentity(ctx context.Context, addr Address) (IdentityRecord, error) {
	_, unlock := m.lock(ctx)
	defer unlock()
	rec, ok := m.identities[addr]
	if !ok {
		return IdentityRecord{}, fmt.Errorf("identity %s: %w", addr, ErrNotFound)
	}
	rec.Key = bytes.Clone(rec.Key)
	return rec, nil
}

// StoreIdentity implements IdentityStore.
func (m *MemoryStore) StoreIdentity(ctx context.Context, addr Address, rec IdentityRecord) error {
	tx, unlock := m.lock(ctx)
	defer unlock()
	rec.Key = bytes.Clone(rec.Key)
	put(tx, m.identities, addr, rec)
	return nil
}

// LoadPreKey implements PreKeyStore.
func (m *MemoryStore) LoadPreKey(ctx context.Context, id uint32) ([]byte, error) {
	_, unlock := m.lock(ctx)
	defer unlock()
	return load(m.preKeys, id, "prekey")
}

// StorePreKey implements PreKeyStore.
func (m *MemoryStore) StorePreKey(ctx context.Context, id uint32, record []byte) error {
	tx, unlock := m.lock(ctx)
	defer unlock()
	put(tx, m.preKeys, id, bytes.Clone(record))
	return nil
}

// RemovePreKey implements PreKeyStore.
func (m *MemoryStore) RemovePreKey(ctx context.Context, id uint32) error {
	tx, unlock := m.lock(ctx)
	defer unlock()
	del(tx, m.preKeys, id)
	return nil
}

// PreKeyCount returns how many prekeys are stored (for tests).
func (m *MemoryStore) PreKeyCount() int {
	m.mu.Lock()
	defer m.mu.Unlock()
	return len(m.preKeys)
}

// LoadSignedPreKey implements SignedPreKeyStore.
func (m *MemoryStore) LoadSignedPreKey(ctx context.Context, id uint32) ([]byte, error) {
	_, unlock := m.lock(ctx)
	defer unlock()
	return load(m.signed, id, "signed prekey")
}

// StoreSignedPreKey implements SignedPreKeyStore.
func (m *MemoryStore) StoreSignedPreKey(ctx context.Context, id uint32, record []byte) error {
	tx, unlock := m.lock(ctx)
	defer unlock()
	put(tx, m.signed, id, bytes.Clone(record))
	return nil
}

// RemoveSignedPreKey implements SignedPreKeyStore.
func (m *MemoryStore) RemoveSignedPreKey(ctx context.Context, id uint32) error {
	tx, unlock := m.lock(ctx)
	defer unlock()
	del(tx, m.signed, id)
	return nil
}

// SignedPreKeyIDs implements SignedPreKeyStore.
func (m *MemoryStore) SignedPreKeyIDs(ctx context.Context) ([]uint32, error) {
	_, unlock := m.lock(ctx)
	defer unlock()
	ids := make([]uint32, 0, len(m.signed))
	for id := range m.signed {
		ids = append(ids, id)
	}
	slices.Sort(ids)
	return ids, nil
}

// LoadSession implements SessionStore.
func (m *MemoryStore) LoadSession(ctx context.Context, addr Address) ([]byte, error) {
	_, unlock := m.lock(ctx)
	defer unlock()
	return load(m.sessions, addr, "session")
}

// StoreSession implements SessionStore.
func (m *MemoryStore) StoreSession(ctx context.Context, addr Address, record []byte) error {
	tx, unlock := m.lock(ctx)
	defer unlock()
	put(tx, m.sessions, addr, bytes.Clone(record))
	return nil
}

// DeleteSession implements SessionStore.
func (m *MemoryStore) DeleteSession(ctx context.Context, addr Address) error {
	tx, unlock := m.lock(ctx)
	defer unlock()
	del(tx, m.sessions, addr)
	return nil
}

// SessionDeviceIDs implements SessionStore.
func (m *MemoryStore) SessionDeviceIDs(ctx context.Context, name string) ([]uint32, error) {
	_, unlock := m.lock(ctx)
	defer unlock()
	var ids []uint32
	for a := range m.sessions {
		if a.Name == name {
			ids = append(ids, a.DeviceID)
		}
	}
	slices.Sort(ids)
	return ids, nil
}

// LoadSenderKey implements SenderKeyStore.
func (m *MemoryStore) LoadSenderKey(ctx context.Context, groupID string, sender Address) ([]byte, error) {
	_, unlock := m.lock(ctx)
	defer unlock()
	return load(m.senderKeys, senderKeyID{groupID, sender}, "sender key")
}

// StoreSenderKey implements SenderKeyStore.
func (m *MemoryStore) StoreSenderKey(ctx context.Context, groupID string, sender Address, record []byte) error {
	tx, unlock := m.lock(ctx)
	defer unlock()
	put(tx, m.senderKeys, senderKeyID{groupID, sender}, bytes.Clone(record))
	return nil
}

// DeleteSenderKey implements SenderKeyStore.
func (m *MemoryStore) DeleteSenderKey(ctx context.Context, groupID string, sender Address) error {
	tx, unlock := m.lock(ctx)
	defer unlock()
	del(tx, m.senderKeys, senderKeyID{groupID, sender})
	return nil
}
