package storetest

import (
	"crypto/rand"
	"encoding/hex"
	"sync"
	"testing"
	"time"

	"github.com/hushchat/hush/crypto"
	"github.com/hushchat/hush/keyserver/ksclient"
	"github.com/hushchat/hush/keyserver/store"
)

// TestDevice is a device with real Signal keys (made by package crypto),
// for tests of the store, the server and its clients.
type TestDevice struct {
	Identity *crypto.IdentityKeyPair
	Keys     store.DeviceKeys
}

// NewDevice makes a device with a fresh identity, registration id, signed
// prekey (id 1), last-resort prekey and n one-time prekeys with ids
// firstID, firstID+1, ….
func NewDevice(t testing.TB, firstID uint32, n int) *TestDevice {
	t.Helper()
	id, err := crypto.GenerateIdentityKeyPair()
	if err != nil {
		t.Fatal(err)
	}
	reg, err := crypto.GenerateRegistrationID()
	if err != nil {
		t.Fatal(err)
	}
	d := &TestDevice{Identity: id, Keys: store.DeviceKeys{
		IdentityKey:    id.PublicKey(),
		RegistrationID: reg,
		SignedPreKey:   signedPreKey(t, id, 1),
		OneTime:        PreKeys(t, firstID, n),
	}}
	lr, err := crypto.GenerateLastResortPreKey()
	if err != nil {
		t.Fatal(err)
	}
	d.Keys.LastResort = store.PreKey{ID: lr.Public().ID, PublicKey: lr.Public().PublicKey}
	return d
}

func signedPreKey(t testing.TB, id *crypto.IdentityKeyPair, keyID uint32) store.SignedPreKey {
	t.Helper()
	spk, err := crypto.GenerateSignedPreKey(id, keyID)
	if err != nil {
		t.Fatal(err)
	}
	p := spk.Public()
	return store.SignedPreKey{ID: p.ID, PublicKey: p.PublicKey, Signature: p.Signature}
}

// SignedPreKey makes a new signed prekey of d with id keyID.
func (d *TestDevice) SignedPreKey(t testing.TB, keyID uint32) store.SignedPreKey {
	return signedPreKey(t, d.Identity, keyID)
}

// Sign signs with d's identity key (a ksclient.Signer).
func (d *TestDevice) Sign(msg []byte) ([]byte, error) { return d.Identity.Sign(msg) }

// Client returns d's keys in ksclient's form.
func (d *TestDevice) Client() ksclient.DeviceKeys {
	k := d.Keys
	return ksclient.DeviceKeys{
		IdentityKey:    k.IdentityKey,
		RegistrationID: k.RegistrationID,
		SignedPreKey:   ksclient.SignedPreKey(k.SignedPreKey),
		OneTime:        ClientPreKeys(k.OneTime),
		LastResort:     ksclient.PreKey(k.LastResort),
	}
}

// ClientPreKeys converts prekeys to ksclient's form.
func ClientPreKeys(in []store.PreKey) []ksclient.PreKey {
	out := make([]ksclient.PreKey, len(in))
	for i, p := range in {
		out[i] = ksclient.PreKey(p)
	}
	return out
}

// PreKeys makes n real one-time prekeys with ids firstID, firstID+1, ….
func PreKeys(t testing.TB, firstID uint32, n int) []store.PreKey {
	t.Helper()
	if n == 0 {
		return nil
	}
	keys, _, err := crypto.GeneratePreKeys(firstID, n)
	if err != nil {
		t.Fatal(err)
	}
	out := make([]store.PreKey, n)
	for i, k := range keys {
		out[i] = store.PreKey{ID: k.Public().ID, PublicKey: k.Public().PublicKey}
	}
	return out
}

// Name returns a fresh valid account name, unique across runs, so suites
// may share one database.
func Name(t testing.TB) string {
	t.Helper()
	b := make([]byte, 6)
	rand.Read(b)
	return "t" + hex.EncodeToString(b)
}

// Clock is a settable clock for tests.
type Clock struct {
	mu sync.Mutex
	t  time.Time
}

// NewClock starts a clock at t.
func NewClock(t time.Time) *Clock { return &Clock{t: t} }

// Now returns the clock's time.
func (c *Clock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

// Advance moves the clock forward by d.
func (c *Clock) Advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.t = c.t.Add(d)
}
