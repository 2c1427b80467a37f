package crypto

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
)

func TestSessionBasic(t *testing.T) {
	ctx := context.Background()
	alice := newDevice(t, "alice", 1, 2)
	bob := newDevice(t, "bob", 3, 2)
	connect(t, alice, bob, 0)

	c, err := alice.Encrypt(ctx, bob.Address(), []byte("hello"))
	if err != nil {
		t.Fatal(err)
	}
	if c.Type != MessageTypePreKey {
		t.Fatalf("first message type %v, want prekey", c.Type)
	}
	pt, err := bob.Decrypt(ctx, alice.Address(), c)
	if err != nil {
		t.Fatal(err)
	}
	if string(pt) != "hello" {
		t.Fatalf("got %q", pt)
	}
	// The one-time prekey is consumed, the other one and the last-resort key stay.
	if _, err := bob.store.LoadPreKey(ctx, bob.pks[0].ID()); !errors.Is(err, ErrNotFound) {
		t.Fatalf("used prekey still stored: %v", err)
	}
	if n := bob.store.PreKeyCount(); n != 2 {
		t.Fatalf("bob has %d prekeys, want 2", n)
	}
	if _, err := bob.Decrypt(ctx, alice.Address(), c); !errors.Is(err, ErrDuplicateMessage) {
		t.Fatalf("duplicate prekey message: got %v, want ErrDuplicateMessage", err)
	}
	r, err := bob.Encrypt(ctx, alice.Address(), []byte("hi"))
	if err != nil {
		t.Fatal(err)
	}
	if r.Type != MessageTypeSignal {
		t.Fatalf("reply type %v, want signal", r.Type)
	}
	pt, err = alice.Decrypt(ctx, bob.Address(), r)
	if err != nil || !bytes.Equal(pt, []byte("hi")) {
		t.Fatalf("reply: %q, %v", pt, err)
	}
	c2, err := alice.Encrypt(ctx, bob.Address(), []byte("after"))
	if err != nil || c2.Type != MessageTypeSignal {
		t.Fatalf("after reply: %v %v", c2.Type, err)
	}
}

func TestBadSignedPreKeySignatureRejected(t *testing.T) {
	ctx := context.Background()
	alice := newDevice(t, "alice", 1, 0)
	bob := newDevice(t, "bob", 1, 1)
	b := bob.bundle(0)
	b.SignedPreKeySignature = bytes.Clone(b.SignedPreKeySignature)
	b.SignedPreKeySignature[5] ^= 0x10
	err := alice.ProcessBundle(ctx, bob.Address(), b)
	if !errors.Is(err, ErrBadSignedPreKeySignature) || !errors.Is(err, ErrBadSignature) {
		t.Fatalf("got %v, want ErrBadSignedPreKeySignature", err)
	}
	// A signature by another identity is just as bad.
	mallory, _ := GenerateIdentityKeyPair()
	b = bob.bundle(0)
	b.SignedPreKeySignature, _ = mallory.Sign(b.SignedPreKey)
	if err := alice.ProcessBundle(ctx, bob.Address(), b); !errors.Is(err, ErrBadSignedPreKeySignature) {
		t.Fatalf("foreign signature: got %v", err)
	}
	if ok, _ := alice.HasSession(ctx, bob.Address()); ok {
		t.Fatal("session stored from a bad bundle")
	}
	if _, err := alice.Identity(ctx, bob.Address()); !errors.Is(err, ErrNotFound) {
		t.Fatalf("identity recorded from a bad bundle: %v", err)
	}
}

func TestBundleValidate(t *testing.T) {
	bob := newDevice(t, "bob", 1, 1)
	good := bob.bundle(0)
	if err := good.Validate(); err != nil {
		t.Fatal(err)
	}
	for name, mut := range map[string]func(b *Bundle){
		"identity size":   func(b *Bundle) { b.IdentityKey = b.IdentityKey[:32] },
		"identity type":   func(b *Bundle) { b.IdentityKey = append([]byte{6}, b.IdentityKey[1:]...) },
		"registration 0":  func(b *Bundle) { b.RegistrationID = 0 },
		"registration hi": func(b *Bundle) { b.RegistrationID = MaxRegistrationID + 1 },
		"device 0":        func(b *Bundle) { b.DeviceID = 0 },
		"device 128":      func(b *Bundle) { b.DeviceID = 128 },
		"spk id 0":        func(b *Bundle) { b.SignedPreKeyID = 0 },
		"spk size":        func(b *Bundle) { b.SignedPreKey = nil },
		"sig size":        func(b *Bundle) { b.SignedPreKeySignature = b.SignedPreKeySignature[:63] },
		"prekey no id":    func(b *Bundle) { b.PreKeyID = 0 },
		"prekey no key":   func(b *Bundle) { b.PreKey = nil },
		"prekey id range": func(b *Bundle) { b.PreKeyID = MaxPreKeyID + 5 },
	} {
		b := bob.bundle(0)
		mut(&b)
		if err := b.Validate(); !errors.Is(err, ErrInvalidBundle) {
			t.Errorf("%s: got %v, want ErrInvalidBundle", name, err)
		}
	}
	noPreKey := bob.bundle(0)
	noPreKey.PreKeyID, noPreKey.PreKey = 0, nil
	if err := noPreKey.Validate(); err != nil {
		t.Errorf("bundle without one-time prekey: %v", err)
	}
	if err := bob.bundle(-1).Validate(); err != nil {
		t.Errorf("bundle with last-resort prekey: %v", err)
	}
}

// A tampered or forged message is refused and the session carries on.
func TestTamperedMessageLeavesSessionIntact(t *testing.T) {
	ctx := context.Background()
	alice := newDevice(t, "alice", 1, 1)
	bob := newDevice(t, "bob", 1, 1)
	connect(t, alice, bob, 0)
	for i := range 3 {
		c, err := alice.Encrypt(ctx, bob.Address(), []byte(fmt.Sprint("m", i)))
		if err != nil {
			t.Fatal(err)
		}
		for j := 0; j < len(c.Body); j += 7 {
			bad := Ciphertext{Type: c.Type, Body: bytes.Clone(c.Body)}
			bad.Body[j] ^= 0x04
			if pt, err := bob.Decrypt(ctx, alice.Address(), bad); err == nil {
				t.Fatalf("message %d: flipped byte %d decrypted to %q", i, j, pt)
			}
		}
		pt, err := bob.Decrypt(ctx, alice.Address(), c)
		if err != nil || string(pt) != fmt.Sprint("m", i) {
			t.Fatalf("message %d after forgeries: %q, %v", i, pt, err)
		}
		r, err := bob.Encrypt(ctx, alice.Address(), []byte("ack"))
		if err != nil {
			t.Fatal(err)
		}
		if _, err := alice.Decrypt(ctx, bob.Address(), r); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := bob.Decrypt(ctx, alice.Address(), Ciphertext{Type: 9, Body: []byte{0x33}}); !errors.Is(err, ErrInvalidMessage) {
		t.Fatalf("unknown type: %v", err)
	}
}

// A message replayed after the receiver has moved many ratchet steps on is
// refused (not as a duplicate — the state that would recognise it is gone)
// and yields no plaintext.
func TestOldReplayRefused(t *testing.T) {
	ctx := context.Background()
	alice := newDevice(t, "alice", 1, 1)
	bob := newDevice(t, "bob", 1, 1)
	connect(t, alice, bob, 0)
	first, _ := alice.Encrypt(ctx, bob.Address(), []byte("first"))
	if _, err := bob.Decrypt(ctx, alice.Address(), first); err != nil {
		t.Fatal(err)
	}
	old, _ := alice.Encrypt(ctx, bob.Address(), []byte("old"))
	if _, err := bob.Decrypt(ctx, alice.Address(), old); err != nil {
		t.Fatal(err)
	}
	for i := range 8 { // eight round trips: eight new ratchet keys each way
		r, _ := bob.Encrypt(ctx, alice.Address(), []byte("r"))
		if _, err := alice.Decrypt(ctx, bob.Address(), r); err != nil {
			t.Fatal(i, err)
		}
		m, _ := alice.Encrypt(ctx, bob.Address(), []byte("m"))
		if _, err := bob.Decrypt(ctx, alice.Address(), m); err != nil {
			t.Fatal(i, err)
		}
	}
	for _, c := range []Ciphertext{first, old} {
		pt, err := bob.Decrypt(ctx, alice.Address(), c)
		if err == nil || pt != nil {
			t.Fatalf("old replay accepted: %q", pt)
		}
		if !errors.Is(err, ErrDuplicateMessage) && !errors.Is(err, ErrInvalidMessage) {
			t.Fatalf("old replay: unexpected error %v", err)
		}
	}
	m, _ := alice.Encrypt(ctx, bob.Address(), []byte("still fine"))
	if pt, err := bob.Decrypt(ctx, alice.Address(), m); err != nil || string(pt) != "still fine" {
		t.Fatalf("after replays: %q %v", pt, err)
	}
}

func TestChangedIdentityNeedsTrust(t *testing.T) {
	ctx := context.Background()
	alice := newDevice(t, "alice", 1, 0)
	bob := newDevice(t, "bob", 1, 2)
	connect(t, alice, bob, 0)
	c, _ := alice.Encrypt(ctx, bob.Address(), []byte("hi"))
	if _, err := bob.Decrypt(ctx, alice.Address(), c); err != nil {
		t.Fatal(err)
	}

	// Bob reinstalls with a new identity under the same address.
	bob2 := newDevice(t, "bob", 1, 1)
	err := alice.ProcessBundle(ctx, bob2.Address(), bob2.bundle(0))
	var uie *UntrustedIdentityError
	if !errors.As(err, &uie) || !errors.Is(err, ErrUntrustedIdentity) {
		t.Fatalf("got %v, want UntrustedIdentityError", err)
	}
	if !bytes.Equal(uie.Key, bob2.IdentityKey()) || !bytes.Equal(uie.Known, bob.IdentityKey()) || uie.Address != bob.Address() {
		t.Fatalf("error reports the wrong keys: %+v", uie)
	}
	if err := alice.TrustIdentity(ctx, bob2.Address(), uie.Key, false); err != nil {
		t.Fatal(err)
	}
	connect(t, alice, bob2, 0)
	c, _ = alice.Encrypt(ctx, bob2.Address(), []byte("again"))
	if pt, err := bob2.Decrypt(ctx, alice.Address(), c); err != nil || string(pt) != "again" {
		t.Fatalf("after trusting the new key: %q %v", pt, err)
	}
	rec, _ := alice.Identity(ctx, bob2.Address())
	if rec.Verified {
		t.Fatal("a newly accepted key is marked verified")
	}

	// The other direction: Bob (old install) receives a prekey message from
	// an Alice with a new identity; nothing is decrypted until he accepts.
	alice2 := newDevice(t, "alice", 1, 0)
	connect(t, alice2, bob, 1)
	c, _ = alice2.Encrypt(ctx, bob.Address(), []byte("new alice"))
	if _, err := bob.Decrypt(ctx, alice.Address(), c); !errors.As(err, &uie) {
		t.Fatalf("got %v, want UntrustedIdentityError", err)
	}
	if err := bob.TrustIdentity(ctx, alice.Address(), alice2.IdentityKey(), true); err != nil {
		t.Fatal(err)
	}
	if pt, err := bob.Decrypt(ctx, alice.Address(), c); err != nil || string(pt) != "new alice" {
		t.Fatalf("retry after trust: %q %v", pt, err)
	}
}

func TestLastResortPreKey(t *testing.T) {
	ctx := context.Background()
	bob := newDevice(t, "bob", 1, 0)
	for _, name := range []string{"alice", "carol"} {
		other := newDevice(t, name, 1, 0)
		connect(t, other, bob, -1)
		c, _ := other.Encrypt(ctx, bob.Address(), []byte("via last resort"))
		if pt, err := bob.Decrypt(ctx, other.Address(), c); err != nil || string(pt) != "via last resort" {
			t.Fatalf("%s: %q %v", name, pt, err)
		}
		if _, err := bob.store.LoadPreKey(ctx, LastResortPreKeyID); err != nil {
			t.Fatalf("last-resort prekey deleted after use by %s: %v", name, err)
		}
	}
}

func TestUnknownPreKey(t *testing.T) {
	ctx := context.Background()
	alice := newDevice(t, "alice", 1, 0)
	bob := newDevice(t, "bob", 1, 1)
	if err := bob.store.RemovePreKey(ctx, bob.pks[0].ID()); err != nil {
		t.Fatal(err)
	}
	connect(t, alice, bob, 0)
	c, _ := alice.Encrypt(ctx, bob.Address(), []byte("x"))
	if _, err := bob.Decrypt(ctx, alice.Address(), c); !errors.Is(err, ErrUnknownPreKey) {
		t.Fatalf("got %v, want ErrUnknownPreKey", err)
	}
	if ok, _ := bob.HasSession(ctx, alice.Address()); ok {
		t.Fatal("failed prekey message left a session behind")
	}
	if _, err := bob.Identity(ctx, alice.Address()); !errors.Is(err, ErrNotFound) {
		t.Fatal("failed prekey message recorded an identity")
	}
}

func TestNoSession(t *testing.T) {
	ctx := context.Background()
	alice := newDevice(t, "alice", 1, 0)
	bob := newDevice(t, "bob", 1, 1)
	if _, err := alice.Encrypt(ctx, bob.Address(), []byte("x")); !errors.Is(err, ErrNoSession) {
		t.Fatalf("encrypt: %v", err)
	}
	connect(t, alice, bob, 0)
	c, _ := alice.Encrypt(ctx, bob.Address(), []byte("x"))
	if _, err := bob.Decrypt(ctx, alice.Address(), c); err != nil {
		t.Fatal(err)
	}
	r, _ := bob.Encrypt(ctx, alice.Address(), []byte("y"))
	if err := alice.DeleteSession(ctx, bob.Address()); err != nil {
		t.Fatal(err)
	}
	if _, err := alice.Decrypt(ctx, bob.Address(), r); !errors.Is(err, ErrNoSession) {
		t.Fatalf("decrypt without session: %v", err)
	}
}

// failingStore fails RemovePreKey, which the library calls after it has
// already advanced (and stored) the session.
type failingStore struct {
	*MemoryStore
	fail bool
}

func (f *failingStore) RemovePreKey(ctx context.Context, id uint32) error {
	if f.fail {
		return errors.New("disk full")
	}
	return f.MemoryStore.RemovePreKey(ctx, id)
}

// Atomic is promoted from MemoryStore, but its context must reach the
// overriding methods, which it does: the wrapper calls go through f.
func TestDecryptIsAtomic(t *testing.T) {
	ctx := context.Background()
	alice := newDevice(t, "alice", 1, 0)
	bob := newDevice(t, "bob", 1, 1)
	fs := &failingStore{MemoryStore: bob.store, fail: true}
	p, err := New(Config{Address: bob.Address(), Identity: bob.identity, RegistrationID: bob.registrationID, Store: fs, Logger: quiet})
	if err != nil {
		t.Fatal(err)
	}
	connect(t, alice, bob, 0)
	c, _ := alice.Encrypt(ctx, bob.Address(), []byte("once"))
	if _, err := p.Decrypt(ctx, alice.Address(), c); err == nil || !strings.Contains(err.Error(), "disk full") {
		t.Fatalf("got %v, want the store error", err)
	}
	if ok, _ := p.HasSession(ctx, alice.Address()); ok {
		t.Fatal("session stored although the operation failed")
	}
	fs.fail = false
	if pt, err := p.Decrypt(ctx, alice.Address(), c); err != nil || string(pt) != "once" {
		t.Fatalf("retry: %q %v", pt, err)
	}
}

func TestConcurrentEncrypt(t *testing.T) {
	ctx := context.Background()
	alice := newDevice(t, "alice", 1, 0)
	bob := newDevice(t, "bob", 1, 1)
	connect(t, alice, bob, 0)
	const n = 40
	out := make(chan Ciphertext, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() {
			c, err := alice.Encrypt(ctx, bob.Address(), []byte(fmt.Sprint(i)))
			if err != nil {
				t.Error(err)
			}
			out <- c
		})
	}
	wg.Wait()
	close(out)
	seen := map[string]bool{}
	for c := range out {
		pt, err := bob.Decrypt(ctx, alice.Address(), c)
		if err != nil {
			t.Fatal(err)
		}
		seen[string(pt)] = true
	}
	if len(seen) != n {
		t.Fatalf("decrypted %d distinct messages, want %d", len(seen), n)
	}
}
