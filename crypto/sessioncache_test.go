package crypto

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"

	"go.mau.fi/libsignal/state/record"
)

// talking returns alice and bob with a session in which both have sent.
func talking(t *testing.T) (alice, bob *device) {
	t.Helper()
	ctx := context.Background()
	alice = newDevice(t, "alice", 1, 1)
	bob = newDevice(t, "bob", 1, 1)
	connect(t, alice, bob, 0)
	for _, d := range []struct{ from, to *device }{{alice, bob}, {bob, alice}} {
		c, err := d.from.Encrypt(ctx, d.to.Address(), []byte("hello"))
		if err != nil {
			t.Fatal(err)
		}
		if _, err := d.to.Decrypt(ctx, d.from.Address(), c); err != nil {
			t.Fatal(err)
		}
	}
	return alice, bob
}

// TestSessionCacheHits: on an established session, encrypt and decrypt use
// the record they stored last instead of decoding it.
func TestSessionCacheHits(t *testing.T) {
	ctx := context.Background()
	alice, bob := talking(t)
	_, _, aHits0, _ := alice.sessions.stats()
	_, _, bHits0, _ := bob.sessions.stats()
	for i := range 5 {
		c, err := alice.Encrypt(ctx, bob.Address(), []byte(fmt.Sprint("m", i)))
		if err != nil {
			t.Fatal(err)
		}
		if pt, err := bob.Decrypt(ctx, alice.Address(), c); err != nil || string(pt) != fmt.Sprint("m", i) {
			t.Fatalf("m%d: %q, %v", i, pt, err)
		}
	}
	entries, size, aHits, _ := alice.sessions.stats()
	_, _, bHits, _ := bob.sessions.stats()
	if aHits-aHits0 != 5 || bHits-bHits0 != 5 {
		t.Fatalf("cache hits: alice %d, bob %d; want 5 each", aHits-aHits0, bHits-bHits0)
	}
	if entries != 1 || size != len(mustLoad(t, alice.store, bob.Address())) {
		t.Fatalf("alice's cache: %d entries, %d bytes", entries, size)
	}
}

// TestSessionCacheStoredBytesChanged: when the stored record is not the one
// the cache remembers — restored from a backup, written by another
// Protocol — the stored one is used. Encryption is deterministic for a
// given state, so encrypting from a restored state must repeat the
// ciphertext first produced from it.
func TestSessionCacheStoredBytesChanged(t *testing.T) {
	ctx := context.Background()
	alice, bob := talking(t)
	B := bob.Address()
	snapshot := mustLoad(t, alice.store, B)
	first, err := alice.Encrypt(ctx, B, []byte("same text"))
	if err != nil {
		t.Fatal(err)
	}
	for range 3 { // the cache now holds a state three messages further on
		if _, err := alice.Encrypt(ctx, B, []byte("more")); err != nil {
			t.Fatal(err)
		}
	}
	if err := alice.store.StoreSession(ctx, B, snapshot); err != nil {
		t.Fatal(err)
	}
	again, err := alice.Encrypt(ctx, B, []byte("same text"))
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(first.Body, again.Body) {
		t.Fatal("encrypt after the record was replaced did not use the stored record")
	}

	// Two Protocols over one store, used alternately: each must see the
	// other's progress, so bob receives one unbroken chain.
	other, err := New(Config{Address: alice.self, Identity: alice.identity, RegistrationID: alice.registrationID, Store: alice.store, Logger: quiet})
	if err != nil {
		t.Fatal(err)
	}
	if pt, err := bob.Decrypt(ctx, alice.Address(), again); err != nil || string(pt) != "same text" {
		t.Fatalf("%q, %v", pt, err)
	}
	for i := range 6 {
		p := alice.Protocol
		if i%2 == 1 {
			p = other
		}
		c, err := p.Encrypt(ctx, B, []byte(fmt.Sprint("turn ", i)))
		if err != nil {
			t.Fatal(err)
		}
		if pt, err := bob.Decrypt(ctx, alice.Address(), c); err != nil || string(pt) != fmt.Sprint("turn ", i) {
			t.Fatalf("turn %d: %q, %v", i, pt, err)
		}
	}
}

// TestSessionCacheRollback: an operation inside an enclosing transaction
// that rolls back leaves the cache remembering bytes the store no longer
// has; the next operation uses the store's record.
func TestSessionCacheRollback(t *testing.T) {
	ctx := context.Background()
	alice, bob := talking(t)
	B := bob.Address()
	errAbort := errors.New("abort")
	var rolledBack Ciphertext
	err := alice.store.Atomic(ctx, func(ctx context.Context) error {
		var err error
		if rolledBack, err = alice.Encrypt(ctx, B, []byte("rolled back")); err != nil {
			return err
		}
		return errAbort
	})
	if !errors.Is(err, errAbort) {
		t.Fatal(err)
	}
	if entries, _, _, _ := alice.sessions.stats(); entries != 1 {
		t.Fatalf("cache entries after the inner operation: %d, want 1", entries)
	}
	c, err := alice.Encrypt(ctx, B, []byte("rolled back"))
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(c.Body, rolledBack.Body) {
		t.Fatal("encrypt after a rollback used the rolled-back state")
	}
	if pt, err := bob.Decrypt(ctx, alice.Address(), c); err != nil || string(pt) != "rolled back" {
		t.Fatalf("%q, %v", pt, err)
	}

	// The same for decrypt: bob's decryption is rolled back, so the message
	// decrypts again (not as a duplicate).
	m, err := alice.Encrypt(ctx, B, []byte("decrypt rolled back"))
	if err != nil {
		t.Fatal(err)
	}
	err = bob.store.Atomic(ctx, func(ctx context.Context) error {
		if _, err := bob.Decrypt(ctx, alice.Address(), m); err != nil {
			return err
		}
		return errAbort
	})
	if !errors.Is(err, errAbort) {
		t.Fatal(err)
	}
	if pt, err := bob.Decrypt(ctx, alice.Address(), m); err != nil || string(pt) != "decrypt rolled back" {
		t.Fatalf("after rollback: %q, %v", pt, err)
	}
}

// TestSessionCacheFailedTrial: a refused message may damage the cached
// record it was tried on in place (a DH ratchet step for an unknown ratchet
// key); the record must not come back from the cache.
func TestSessionCacheFailedTrial(t *testing.T) {
	ctx := context.Background()
	alice, bob := talking(t)
	A := alice.Address()
	m, err := alice.Encrypt(ctx, bob.Address(), []byte("real"))
	if err != nil {
		t.Fatal(err)
	}
	before := mustLoad(t, bob.store, A)
	// Byte 5 lies in the ratchet key (version, tag, length, 0x05 type byte):
	// the current state takes it for a new chain.
	forged := Ciphertext{Type: m.Type, Body: bytes.Clone(m.Body)}
	forged.Body[5] ^= 0x10
	if _, err := bob.Decrypt(ctx, A, forged); !errors.Is(err, ErrInvalidMessage) {
		t.Fatalf("forgery: %v", err)
	}
	if !bytes.Equal(before, mustLoad(t, bob.store, A)) {
		t.Fatal("a refused message changed the stored record")
	}
	if entries, _, _, _ := bob.sessions.stats(); entries != 0 {
		t.Fatalf("%d cache entries after a failed decrypt, want 0", entries)
	}
	if pt, err := bob.Decrypt(ctx, A, m); err != nil || string(pt) != "real" {
		t.Fatalf("after the forgery: %q, %v", pt, err)
	}
}

// TestSessionCacheNewSessionArchives: a new bundle archives the current
// session; a cached record must behave as a decoded one (the library does
// not archive in a record it created fresh).
func TestSessionCacheNewSessionArchives(t *testing.T) {
	ctx := context.Background()
	alice := newDevice(t, "alice", 1, 0)
	bob := newDevice(t, "bob", 1, 3)
	B := bob.Address()
	for i := range 3 {
		connect(t, alice, bob, i)
		c, err := alice.Encrypt(ctx, B, []byte("hi"))
		if err != nil {
			t.Fatal(err)
		}
		if pt, err := bob.Decrypt(ctx, alice.Address(), c); err != nil || string(pt) != "hi" {
			t.Fatalf("session %d: %q, %v", i, pt, err)
		}
		for _, d := range []*device{alice, bob} {
			other := B
			if d == bob {
				other = alice.Address()
			}
			rec, err := decodeSessionRecord(mustLoad(t, d.store, other))
			if err != nil {
				t.Fatal(err)
			}
			if n := len(rec.PreviousSessionStates()); n != i {
				t.Fatalf("%s after session %d: %d archived states, want %d", d.self.Name, i, n, i)
			}
		}
	}
}

// TestSessionCacheDelete: a deleted session is gone, cached or not.
func TestSessionCacheDelete(t *testing.T) {
	ctx := context.Background()
	alice, bob := talking(t)
	if err := alice.DeleteSession(ctx, bob.Address()); err != nil {
		t.Fatal(err)
	}
	if entries, _, _, _ := alice.sessions.stats(); entries != 0 {
		t.Fatalf("%d cache entries after delete", entries)
	}
	if _, err := alice.Encrypt(ctx, bob.Address(), []byte("x")); !errors.Is(err, ErrNoSession) {
		t.Fatalf("encrypt after delete: %v, want ErrNoSession", err)
	}
}

// TestSessionCacheBounds: entries and bytes stay under their caps, the
// least recently stored go first, oversized records are not kept, and
// concurrent use is safe (run with -race).
func TestSessionCacheBounds(t *testing.T) {
	c := newSessionCache()
	rec := func() *record.Session {
		// A non-fresh record, as a decoded one is.
		st := record.NewState(serializer.State)
		return record.NewSessionFromState(st, serializer.Session)
	}
	addr := func(i int) Address { return Address{Name: fmt.Sprint("peer", i), DeviceID: 1} }
	raw := func(i, n int) []byte { return bytes.Repeat([]byte{byte(i)}, n) }

	for i := range sessionCacheEntries + 10 {
		c.put(addr(i), raw(i, 100), rec())
	}
	entries, size, _, _ := c.stats()
	if entries != sessionCacheEntries || size != sessionCacheEntries*100 {
		t.Fatalf("%d entries, %d bytes; want %d, %d", entries, size, sessionCacheEntries, sessionCacheEntries*100)
	}
	if c.take(addr(0), raw(0, 100)) != nil {
		t.Fatal("the least recently stored entry was not evicted")
	}
	last := sessionCacheEntries + 9
	if c.take(addr(last), raw(last, 101)) != nil {
		t.Fatal("take with different bytes returned a record")
	}
	if c.take(addr(last), raw(last, 100)) != nil {
		t.Fatal("an entry survived a take with different bytes")
	}
	if c.take(addr(last-1), raw(last-1, 100)) == nil {
		t.Fatal("matching take missed")
	}
	if c.take(addr(last-1), raw(last-1, 100)) != nil {
		t.Fatal("an entry was handed out twice")
	}

	c = newSessionCache()
	c.put(addr(1), raw(1, sessionCacheMaxRecord+1), rec())
	if entries, _, _, _ := c.stats(); entries != 0 {
		t.Fatal("an oversized record was cached")
	}
	big := sessionCacheMaxRecord
	for i := range sessionCacheBytes/big + 3 {
		c.put(addr(i), raw(i, big), rec())
	}
	if _, size, _, _ := c.stats(); size > sessionCacheBytes {
		t.Fatalf("%d bytes cached, cap %d", size, sessionCacheBytes)
	}
	c.put(addr(1), raw(1, 10), record.NewSession(serializer.Session, serializer.State))
	if c.take(addr(1), raw(1, 10)) != nil {
		t.Fatal("a fresh record was cached")
	}

	c = newSessionCache()
	var wg sync.WaitGroup
	for g := range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range 2000 {
				a := addr((g*7 + i) % 20)
				b := raw(i%3, 50)
				switch i % 3 {
				case 0:
					c.put(a, b, rec())
				case 1:
					c.take(a, b)
				default:
					c.drop(a)
				}
			}
		}()
	}
	wg.Wait()
	if entries, size, _, _ := c.stats(); entries > 20 || size != entries*50 {
		t.Fatalf("after concurrent use: %d entries, %d bytes", entries, size)
	}
}

// TestSessionCacheConcurrentPeers: many goroutines talking to several
// peers at once through one Protocol (run with -race).
func TestSessionCacheConcurrentPeers(t *testing.T) {
	ctx := context.Background()
	alice := newDevice(t, "alice", 1, 0)
	const peers = 4
	bobs := make([]*device, peers)
	for i := range bobs {
		bobs[i] = newDevice(t, fmt.Sprint("bob", i), 1, 1)
		connect(t, alice, bobs[i], 0)
	}
	var wg sync.WaitGroup
	errs := make(chan error, peers*2)
	for i, b := range bobs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for j := range 20 {
				text := fmt.Sprint(i, "/", j)
				c, err := alice.Encrypt(ctx, b.Address(), []byte(text))
				if err != nil {
					errs <- err
					return
				}
				if pt, err := b.Decrypt(ctx, alice.Address(), c); err != nil || string(pt) != text {
					errs <- fmt.Errorf("%s: %q, %v", text, pt, err)
					return
				}
				r, err := b.Encrypt(ctx, alice.Address(), []byte("ack "+text))
				if err != nil {
					errs <- err
					return
				}
				if _, err := alice.Decrypt(ctx, b.Address(), r); err != nil {
					errs <- fmt.Errorf("ack %s: %v", text, err)
					return
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
}

// TestAddrMap: the per-operation map keeps its first entries inline and
// the rest in a slice, with the same behaviour throughout.
func TestAddrMap(t *testing.T) {
	var m addrMap[int]
	want := map[Address]int{}
	r := 0
	for step := range 200 {
		a := Address{Name: fmt.Sprint("d", step%5), DeviceID: 1}
		switch step % 3 {
		case 0, 1:
			r++
			m.set(a, r)
			want[a] = r
		default:
			m.del(a)
			delete(want, a)
		}
		if len(m.entries()) != len(want) {
			t.Fatalf("step %d: %d entries, want %d", step, len(m.entries()), len(want))
		}
		for i := range 5 {
			a := Address{Name: fmt.Sprint("d", i), DeviceID: 1}
			v, ok := m.get(a)
			w, wok := want[a]
			if ok != wok || v != w {
				t.Fatalf("step %d: get(%s) = %d, %v; want %d, %v", step, a, v, ok, w, wok)
			}
		}
	}
}

// retryStore runs every top-level Atomic function twice, as the client's
// SQLite store does after a conflict: a first run that is rolled back,
// then the real one.
type retryStore struct {
	*MemoryStore
	runs int
}

var errConflict = errors.New("conflict")

func (s *retryStore) Atomic(ctx context.Context, fn func(ctx context.Context) error) error {
	if _, inside := ctx.Value(memTxKey{}).(*memTx); inside {
		return s.MemoryStore.Atomic(ctx, fn)
	}
	err := s.MemoryStore.Atomic(ctx, func(ctx context.Context) error {
		s.runs++
		if err := fn(ctx); err != nil {
			return err
		}
		return errConflict
	})
	if !errors.Is(err, errConflict) {
		return err
	}
	return s.MemoryStore.Atomic(ctx, func(ctx context.Context) error {
		s.runs++
		return fn(ctx)
	})
}

// TestSessionCacheStoreRetriesAtomic: only the run of an operation that
// the store commits feeds the cache; the rolled-back run's record, which
// it advanced, must not be used again.
func TestSessionCacheStoreRetriesAtomic(t *testing.T) {
	ctx := context.Background()
	alice, bob := talking(t)
	rs := &retryStore{MemoryStore: alice.store}
	p, err := New(Config{Address: alice.self, Identity: alice.identity, RegistrationID: alice.registrationID, Store: rs, Logger: quiet})
	if err != nil {
		t.Fatal(err)
	}
	for i := range 6 {
		text := fmt.Sprint("retried ", i)
		c, err := p.Encrypt(ctx, bob.Address(), []byte(text))
		if err != nil {
			t.Fatal(err)
		}
		if pt, err := bob.Decrypt(ctx, alice.Address(), c); err != nil || string(pt) != text {
			t.Fatalf("%d: %q, %v", i, pt, err)
		}
		r, err := bob.Encrypt(ctx, alice.Address(), []byte("re: "+text))
		if err != nil {
			t.Fatal(err)
		}
		if pt, err := p.Decrypt(ctx, bob.Address(), r); err != nil || string(pt) != "re: "+text {
			t.Fatalf("reply %d: %q, %v", i, pt, err)
		}
	}
	if rs.runs != 24 {
		t.Fatalf("%d runs of Atomic functions, want 24", rs.runs)
	}
	if _, _, hits, _ := p.sessions.stats(); hits == 0 {
		t.Fatal("the cache was never used")
	}
}
