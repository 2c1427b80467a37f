package storetest

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"errors"
	"io"
	"log/slog"
	"net/http/httptest"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/hushchat/hush/keyserver"
	"github.com/hushchat/hush/keyserver/authtoken"
	"github.com/hushchat/hush/keyserver/ksapi"
	"github.com/hushchat/hush/keyserver/ksclient"
	"github.com/hushchat/hush/keyserver/ratelimit"
	"github.com/hushchat/hush/keyserver/store"
)

// Env is a key server on a store, served over HTTP on 127.0.0.1, with a
// settable clock and a client.
type Env struct {
	Server *keyserver.Server
	Store  store.Store
	Client *ksclient.Client
	Clock  *Clock
	URL    string
	Key    ed25519.PrivateKey

	mu      sync.Mutex
	changes []string
}

// Changes returns the accounts OnDeviceChange reported so far.
func (e *Env) Changes() []string {
	e.mu.Lock()
	defer e.mu.Unlock()
	return slices.Clone(e.changes)
}

// NewEnv starts a key server on st for the duration of the test. configure
// (may be nil) adjusts the configuration first.
func NewEnv(t testing.TB, st store.Store, configure func(*keyserver.Config)) *Env {
	t.Helper()
	_, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	e := &Env{Store: st, Clock: NewClock(t0), Key: priv}
	cfg := keyserver.Config{
		SigningKey:     priv,
		Now:            e.Clock.Now,
		InternalSecret: "internal-test-secret",
		Logger:         slog.New(slog.NewTextHandler(io.Discard, nil)),
		Registerer:     prometheus.NewRegistry(),
		// Tests register many accounts from one address.
		AnonRate: ratelimit.Rate{Burst: 1 << 20, Per: time.Minute},
	}
	if configure != nil {
		configure(&cfg)
	}
	e.Server, err = keyserver.New(cfg, st)
	if err != nil {
		t.Fatal(err)
	}
	e.Server.OnDeviceChange(func(a string) {
		e.mu.Lock()
		e.changes = append(e.changes, a)
		e.mu.Unlock()
	})
	hs := httptest.NewServer(e.Server.Handler())
	t.Cleanup(hs.Close)
	e.URL = hs.URL
	if e.Client, err = ksclient.New(hs.URL); err != nil {
		t.Fatal(err)
	}
	return e
}

// Register registers name with d and returns its session.
func (e *Env) Register(t *testing.T, name string, d *TestDevice) *ksclient.Session {
	t.Helper()
	s, err := e.Client.Register(context.Background(), name, "", d.Client(), d.Sign)
	if err != nil {
		t.Fatalf("register %s: %v", name, err)
	}
	return s
}

// WantCode fails unless err is a *ksclient.Error with the given status and
// code, and returns it.
func WantCode(t *testing.T, what string, err error, status int, code string) *ksclient.Error {
	t.Helper()
	var e *ksclient.Error
	if !errors.As(err, &e) || e.Status != status || e.Code != code {
		t.Fatalf("%s: err = %v, want %d %s", what, err, status, code)
	}
	if e.Message == "" {
		t.Fatalf("%s: error without a message", what)
	}
	return e
}

func runServer(t *testing.T, newStore NewStore) {
	for _, tc := range []struct {
		name string
		fn   func(*testing.T, NewStore)
	}{
		{"RegisterLogin", testRegisterLogin},
		{"DuplicateNameAnyCase", testDuplicateNameAnyCase},
		{"BadSignatureStoresNothing", testBadSignatureStoresNothing},
		{"BadProofStoresNothing", testBadProofStoresNothing},
		{"UploadRotateCount", testUploadRotateCount},
		{"Bundles", testBundles},
		{"RateLimit", testRateLimit},
		{"TokenExpiry", testTokenExpiry},
		{"Revocation", testRevocation},
		{"ForgedTokens", testForgedTokens},
		{"IdentityAndInternal", testIdentityAndInternal},
	} {
		t.Run(tc.name, func(t *testing.T) { tc.fn(t, newStore) })
	}
}

func bg() context.Context { return context.Background() }

func testRegisterLogin(t *testing.T, ns NewStore) {
	e := NewEnv(t, ns(t), nil)
	name := Name(t)
	d := NewDevice(t, 1, 20)
	s := e.Register(t, strings.ToUpper(name[:1])+name[1:], d) // names are case-insensitive
	if s.Account != name || s.Device != 1 {
		t.Fatalf("registered as %s/%d, want %s/1", s.Account, s.Device, name)
	}
	if !s.Expiry.Equal(t0.Add(keyserver.DefaultTokenTTL)) {
		t.Fatalf("token expiry %v, want %v", s.Expiry, t0.Add(keyserver.DefaultTokenTTL))
	}
	pub, err := e.Client.ServerKey(bg())
	if err != nil || !pub.Equal(e.Key.Public()) || !pub.Equal(e.Server.PublicKey()) {
		t.Fatalf("server key = %x, %v; want the signing key's public half", pub, err)
	}
	c, err := authtoken.Verify(pub, s.Token, e.Clock.Now())
	if err != nil || c.Account != name || c.Device != 1 {
		t.Fatalf("token verifies as %+v, %v", c, err)
	}
	st, err := e.Client.KeyStatus(bg(), s.Token)
	if err != nil || st.OneTimePreKeys != 20 || st.SignedPreKeyID != 1 || st.LastResortPreKeyID != d.Keys.LastResort.ID {
		t.Fatalf("status = %+v, %v", st, err)
	}
	e.Clock.Advance(time.Hour)
	s2, err := e.Client.Login(bg(), name, 1, d.Sign)
	if err != nil || s2.Account != name || s2.Device != 1 || !s2.Expiry.Equal(t0.Add(time.Hour+keyserver.DefaultTokenTTL)) {
		t.Fatalf("login = %+v, %v", s2, err)
	}
	// Another key cannot log in as this device.
	other := NewDevice(t, 1, 0)
	_, err = e.Client.Login(bg(), name, 1, other.Sign)
	WantCode(t, "login with the wrong identity key", err, 401, ksapi.CodeBadProof)
	_, err = e.Client.Login(bg(), name, 2, d.Sign)
	WantCode(t, "login as a missing device", err, 404, ksapi.CodeDeviceNotFound)
	if got := e.Changes(); !slices.Equal(got, []string{name}) {
		t.Fatalf("device changes %v, want [%s]", got, name)
	}
}

func testDuplicateNameAnyCase(t *testing.T, ns NewStore) {
	e := NewEnv(t, ns(t), nil)
	name := Name(t)
	first := NewDevice(t, 1, 3)
	e.Register(t, name, first)
	for _, n := range []string{name, strings.ToUpper(name)} {
		_, err := e.Client.Register(bg(), n, "", NewDevice(t, 1, 3).Client(), NewDevice(t, 1, 0).Sign)
		if err == nil {
			t.Fatalf("second registration of %q accepted", n)
		}
		d := NewDevice(t, 1, 3)
		_, err = e.Client.Register(bg(), n, "", d.Client(), d.Sign)
		WantCode(t, "registration of "+n, err, 409, ksapi.CodeNameTaken)
	}
	ids, err := e.Store.Devices(bg(), name)
	if err != nil || len(ids) != 1 || !bytes.Equal(ids[0].IdentityKey, first.Keys.IdentityKey) {
		t.Fatalf("first owner's devices changed: %v, %v", ids, err)
	}
}

func testBadSignatureStoresNothing(t *testing.T, ns NewStore) {
	e := NewEnv(t, ns(t), nil)
	name := Name(t)
	d := NewDevice(t, 1, 5)
	k := d.Client()
	k.SignedPreKey.Signature = bytes.Clone(k.SignedPreKey.Signature)
	k.SignedPreKey.Signature[7] ^= 0x10
	_, err := e.Client.Register(bg(), name, "", k, d.Sign)
	WantCode(t, "bad signed-prekey signature", err, 400, ksapi.CodeBadSignature)
	// A signed prekey signed by another identity is just as bad.
	k = d.Client()
	k.SignedPreKey = ksclient.SignedPreKey(NewDevice(t, 1, 0).Keys.SignedPreKey)
	_, err = e.Client.Register(bg(), name, "", k, d.Sign)
	WantCode(t, "foreign signed prekey", err, 400, ksapi.CodeBadSignature)
	if _, err := e.Store.Devices(bg(), name); !errors.Is(err, store.ErrAccountNotFound) {
		t.Fatalf("refused registration left state behind: %v", err)
	}
	// The name is still free.
	e.Register(t, name, d)
}

func testBadProofStoresNothing(t *testing.T, ns NewStore) {
	e := NewEnv(t, ns(t), nil)
	name := Name(t)
	victim := NewDevice(t, 1, 5)
	// An attacker copies the victim's public keys (all public, in every
	// bundle) but cannot sign the registration challenge.
	attacker := NewDevice(t, 1, 0)
	_, err := e.Client.Register(bg(), name, "", victim.Client(), attacker.Sign)
	WantCode(t, "registration without the identity key", err, 401, ksapi.CodeBadProof)
	if _, err := e.Store.Devices(bg(), name); !errors.Is(err, store.ErrAccountNotFound) {
		t.Fatalf("refused registration left state behind: %v", err)
	}
}

func testUploadRotateCount(t *testing.T, ns NewStore) {
	e := NewEnv(t, ns(t), func(c *keyserver.Config) { c.SignedPreKeyGrace = 48 * time.Hour })
	d := NewDevice(t, 1, 10)
	s := e.Register(t, Name(t), d)
	st, err := e.Client.UploadPreKeys(bg(), s.Token, ClientPreKeys(PreKeys(t, 11, 100)))
	if err != nil || st.OneTimePreKeys != 110 {
		t.Fatalf("upload = %+v, %v; want 110 keys", st, err)
	}
	_, err = e.Client.UploadPreKeys(bg(), s.Token, ClientPreKeys(PreKeys(t, 200, 101)))
	WantCode(t, "101 prekeys", err, 400, ksapi.CodeTooManyPreKeys)
	_, err = e.Client.UploadPreKeys(bg(), s.Token, ClientPreKeys(PreKeys(t, 105, 10)))
	WantCode(t, "overlapping ids", err, 409, ksapi.CodePreKeyExists)
	if st, _ := e.Client.KeyStatus(bg(), s.Token); st.OneTimePreKeys != 110 {
		t.Fatalf("count %d after refused uploads, want 110", st.OneTimePreKeys)
	}

	spk := ksclient.SignedPreKey(d.SignedPreKey(t, 2))
	bad := spk
	bad.Signature = bytes.Clone(spk.Signature)
	bad.Signature[0] ^= 1
	_, err = e.Client.RotateSignedPreKey(bg(), s.Token, bad)
	WantCode(t, "rotate with a bad signature", err, 400, ksapi.CodeBadSignature)
	if st, _ := e.Client.KeyStatus(bg(), s.Token); st.SignedPreKeyID != 1 || st.PreviousSignedPreKeyID != 0 {
		t.Fatalf("refused rotation changed state: %+v", st)
	}
	e.Clock.Advance(time.Minute)
	st, err = e.Client.RotateSignedPreKey(bg(), s.Token, spk)
	if err != nil || st.SignedPreKeyID != 2 || st.PreviousSignedPreKeyID != 1 || !st.PreviousSignedExpires.Equal(t0.Add(time.Minute+48*time.Hour)) {
		t.Fatalf("rotate = %+v, %v", st, err)
	}
	_, err = e.Client.RotateSignedPreKey(bg(), s.Token, ksclient.SignedPreKey(d.SignedPreKey(t, 2)))
	WantCode(t, "rotate to the current id", err, 409, ksapi.CodeSignedPreKeyID)
	// After the grace period the previous key is no longer listed.
	e.Clock.Advance(48 * time.Hour)
	s, err = e.Client.Login(bg(), s.Account, 1, d.Sign) // the old token has expired too
	if err != nil {
		t.Fatal(err)
	}
	if st, err := e.Client.KeyStatus(bg(), s.Token); err != nil || st.PreviousSignedPreKeyID != 0 || !st.PreviousSignedExpires.IsZero() {
		t.Fatalf("previous signed prekey still listed after the grace period: %+v", st)
	}
	// Bundles carry the new signed prekey.
	s2 := e.Register(t, Name(t), NewDevice(t, 1, 0))
	b, err := e.Client.Bundles(bg(), s2.Token, s.Account, 0)
	if err != nil || len(b) != 1 || b[0].SignedPreKey.ID != 2 || !bytes.Equal(b[0].SignedPreKey.PublicKey, spk.PublicKey) {
		t.Fatalf("bundle after rotation = %+v, %v", b, err)
	}
	lr := PreKeys(t, 5000, 1)[0]
	if st, err := e.Client.SetLastResortPreKey(bg(), s.Token, ksclient.PreKey(lr)); err != nil || st.LastResortPreKeyID != 5000 {
		t.Fatalf("set last resort = %+v, %v", st, err)
	}
}

func testBundles(t *testing.T, ns NewStore) {
	e := NewEnv(t, ns(t), nil)
	alice := Name(t)
	d1 := NewDevice(t, 1, 3)
	sa := e.Register(t, alice, d1)
	d2 := NewDevice(t, 1, 0)
	s2, err := e.Client.AddDevice(bg(), sa.Token, alice, d2.Client(), d2.Sign)
	if err != nil || s2.Device != 2 || s2.Account != alice {
		t.Fatalf("add device = %+v, %v", s2, err)
	}
	bob := e.Register(t, Name(t), NewDevice(t, 1, 0))
	for i := 1; i <= 3; i++ {
		b, err := e.Client.Bundles(bg(), bob.Token, alice, 0)
		if err != nil || len(b) != 2 {
			t.Fatalf("fetch %d = %d bundles, %v", i, len(b), err)
		}
		b1, b2 := b[0], b[1]
		want := d1.Keys.OneTime[i-1]
		if b1.DeviceID != 1 || b1.LastResort || b1.PreKey.ID != want.ID || !bytes.Equal(b1.PreKey.PublicKey, want.PublicKey) {
			t.Fatalf("fetch %d, device 1: prekey %d (last resort %v), want one-time %d", i, b1.PreKey.ID, b1.LastResort, want.ID)
		}
		spk := d1.Keys.SignedPreKey
		if b1.RegistrationID != d1.Keys.RegistrationID || !bytes.Equal(b1.IdentityKey, d1.Keys.IdentityKey) ||
			b1.SignedPreKey.ID != spk.ID || !bytes.Equal(b1.SignedPreKey.PublicKey, spk.PublicKey) ||
			!bytes.Equal(b1.SignedPreKey.Signature, spk.Signature) {
			t.Fatalf("fetch %d, device 1: bundle does not match the registration", i)
		}
		if b2.DeviceID != 2 || !b2.LastResort || b2.PreKey.ID != d2.Keys.LastResort.ID || !bytes.Equal(b2.IdentityKey, d2.Keys.IdentityKey) {
			t.Fatalf("fetch %d, device 2: %+v, want its last-resort key", i, b2)
		}
	}
	b, err := e.Client.Bundles(bg(), bob.Token, alice, 1)
	if err != nil || len(b) != 1 || b[0].DeviceID != 1 || !b[0].LastResort {
		t.Fatalf("fetch of device 1 after its pool ran dry = %+v, %v", b, err)
	}
	_, err = e.Client.Bundles(bg(), bob.Token, alice, 9)
	WantCode(t, "missing device", err, 404, ksapi.CodeDeviceNotFound)
	_, err = e.Client.Bundles(bg(), bob.Token, Name(t), 0)
	WantCode(t, "missing account", err, 404, ksapi.CodeAccountNotFound)
}

func testRateLimit(t *testing.T, ns NewStore) {
	e := NewEnv(t, ns(t), func(c *keyserver.Config) { c.BundleRate = ratelimit.Rate{Burst: 6, Per: 10 * time.Minute} })
	alice := Name(t)
	e.Register(t, alice, NewDevice(t, 1, 50))
	bob := e.Register(t, Name(t), NewDevice(t, 1, 0))
	carol := e.Register(t, Name(t), NewDevice(t, 1, 0))
	for i := range 6 {
		if _, err := e.Client.Bundles(bg(), bob.Token, alice, 0); err != nil {
			t.Fatalf("fetch %d: %v", i+1, err)
		}
	}
	_, err := e.Client.Bundles(bg(), bob.Token, alice, 0)
	ke := WantCode(t, "7th fetch", err, 429, ksapi.CodeRateLimited)
	if ke.RetryAfter != 100*time.Second {
		t.Fatalf("Retry-After %v, want 100s (one token per 10m/6)", ke.RetryAfter)
	}
	// The limit is per (requester, target): the refused fetch consumed no
	// key, and other pairs are unaffected.
	if _, err := e.Client.Bundles(bg(), carol.Token, alice, 0); err != nil {
		t.Fatalf("another requester: %v", err)
	}
	if _, err := e.Client.Bundles(bg(), bob.Token, carol.Account, 0); err != nil {
		t.Fatalf("another target: %v", err)
	}
	if n, _ := e.Store.CountOneTimePreKeys(bg(), alice, 1); n != 50-7 {
		t.Fatalf("%d keys left, want 43 (the refused fetch must not consume one)", n)
	}
	e.Clock.Advance(100 * time.Second)
	if _, err := e.Client.Bundles(bg(), bob.Token, alice, 0); err != nil {
		t.Fatalf("after Retry-After: %v", err)
	}
	_, err = e.Client.Bundles(bg(), bob.Token, alice, 0)
	WantCode(t, "second fetch after one refill", err, 429, ksapi.CodeRateLimited)
}

func testTokenExpiry(t *testing.T, ns NewStore) {
	e := NewEnv(t, ns(t), func(c *keyserver.Config) { c.TokenTTL = time.Hour })
	d := NewDevice(t, 1, 1)
	s := e.Register(t, Name(t), d)
	e.Clock.Advance(time.Hour - time.Millisecond)
	if _, err := e.Client.KeyStatus(bg(), s.Token); err != nil {
		t.Fatalf("token just before expiry: %v", err)
	}
	e.Clock.Advance(time.Millisecond)
	_, err := e.Client.KeyStatus(bg(), s.Token)
	WantCode(t, "expired token", err, 401, ksapi.CodeTokenExpired)
	s2, err := e.Client.Login(bg(), s.Account, 1, d.Sign)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := e.Client.KeyStatus(bg(), s2.Token); err != nil {
		t.Fatalf("fresh token: %v", err)
	}
}

func testRevocation(t *testing.T, ns NewStore) {
	e := NewEnv(t, ns(t), nil)
	name := Name(t)
	d1 := NewDevice(t, 1, 0)
	s1 := e.Register(t, name, d1)
	d2 := NewDevice(t, 1, 0)
	s2, err := e.Client.AddDevice(bg(), s1.Token, name, d2.Client(), d2.Sign)
	if err != nil {
		t.Fatal(err)
	}
	// The joining device must prove its own identity key.
	d3 := NewDevice(t, 1, 0)
	_, err = e.Client.AddDevice(bg(), s1.Token, name, d3.Client(), d1.Sign)
	WantCode(t, "add device without its identity key", err, 401, ksapi.CodeBadProof)
	devs, err := e.Client.Devices(bg(), s2.Token)
	if err != nil || len(devs) != 2 {
		t.Fatalf("devices = %v, %v", devs, err)
	}
	if err := e.Client.RemoveDevice(bg(), s1.Token, 2); err != nil {
		t.Fatal(err)
	}
	_, err = e.Client.KeyStatus(bg(), s2.Token)
	WantCode(t, "token of a removed device", err, 401, ksapi.CodeDeviceRevoked)
	_, err = e.Client.Login(bg(), name, 2, d2.Sign)
	WantCode(t, "login of a removed device", err, 404, ksapi.CodeDeviceNotFound)
	// A new device gets id 3: the removed device's tokens stay dead.
	s3, err := e.Client.AddDevice(bg(), s1.Token, name, d3.Client(), d3.Sign)
	if err != nil || s3.Device != 3 {
		t.Fatalf("add after removal = %+v, %v; want device 3", s3, err)
	}
	_, err = e.Client.KeyStatus(bg(), s2.Token)
	WantCode(t, "old token after a new device", err, 401, ksapi.CodeDeviceRevoked)
	err = e.Client.RemoveDevice(bg(), s1.Token, 2)
	WantCode(t, "remove a removed device", err, 404, ksapi.CodeDeviceNotFound)
	// A device may remove itself; the account keeps its last one.
	if err := e.Client.RemoveDevice(bg(), s3.Token, 3); err != nil {
		t.Fatal(err)
	}
	err = e.Client.RemoveDevice(bg(), s1.Token, 1)
	WantCode(t, "remove the last device", err, 409, ksapi.CodeLastDevice)
	if got := e.Changes(); len(got) != 5 {
		t.Fatalf("device changes %v, want 5 (register, add, remove, add, remove)", got)
	}
	info, err := e.Server.Devices(bg(), name)
	if err != nil || len(info) != 1 || info[0].ID != 1 || info[0].RegistrationID != d1.Keys.RegistrationID {
		t.Fatalf("Server.Devices = %+v, %v", info, err)
	}
}

func testForgedTokens(t *testing.T, ns NewStore) {
	e := NewEnv(t, ns(t), nil)
	s := e.Register(t, Name(t), NewDevice(t, 1, 0))
	_, otherKey, _ := ed25519.GenerateKey(rand.Reader)
	forged, err := authtoken.Issue(otherKey, authtoken.Claims{Account: s.Account, Device: 1, IssuedAt: t0, Expiry: t0.Add(time.Hour)})
	if err != nil {
		t.Fatal(err)
	}
	_, err = e.Client.KeyStatus(bg(), forged)
	WantCode(t, "token signed by another key", err, 401, ksapi.CodeInvalidToken)
	tampered := []byte(s.Token)
	tampered[10] ^= 1
	_, err = e.Client.KeyStatus(bg(), string(tampered))
	WantCode(t, "tampered token", err, 401, ksapi.CodeInvalidToken)
	_, err = e.Client.KeyStatus(bg(), "")
	WantCode(t, "empty token", err, 401, ksapi.CodeInvalidToken)
	// A genuine token for an account that does not exist (e.g. issued by
	// this key before a data loss) is refused too.
	ghost, _ := authtoken.Issue(e.Key, authtoken.Claims{Account: Name(t), Device: 1, IssuedAt: t0, Expiry: t0.Add(time.Hour)})
	_, err = e.Client.KeyStatus(bg(), ghost)
	WantCode(t, "token of an unknown account", err, 401, ksapi.CodeDeviceRevoked)
}

func testIdentityAndInternal(t *testing.T, ns NewStore) {
	e := NewEnv(t, ns(t), nil)
	name := Name(t)
	d := NewDevice(t, 1, 0)
	s := e.Register(t, name, d)
	ids, err := e.Client.Identity(bg(), s.Token, name)
	if err != nil || len(ids) != 1 || ids[0].DeviceID != 1 || !bytes.Equal(ids[0].IdentityKey, d.Keys.IdentityKey) {
		t.Fatalf("identity = %+v, %v", ids, err)
	}
	_, err = e.Client.Identity(bg(), s.Token, Name(t))
	WantCode(t, "identity of an unknown account", err, 404, ksapi.CodeAccountNotFound)
	devs, err := e.Client.InternalDevices(bg(), "internal-test-secret", name)
	if err != nil || len(devs) != 1 || devs[0].ID != 1 || devs[0].RegistrationID != d.Keys.RegistrationID || !devs[0].Created.Equal(t0) {
		t.Fatalf("internal devices = %+v, %v", devs, err)
	}
	_, err = e.Client.InternalDevices(bg(), "wrong", name)
	WantCode(t, "wrong internal secret", err, 403, ksapi.CodeInternalAuth)
	_, err = e.Client.InternalDevices(bg(), "internal-test-secret", Name(t))
	WantCode(t, "internal devices of an unknown account", err, 404, ksapi.CodeAccountNotFound)
	_, err = e.Server.Devices(bg(), Name(t))
	if !errors.Is(err, keyserver.ErrAccountNotFound) {
		t.Fatalf("Server.Devices of an unknown account: %v", err)
	}
}
