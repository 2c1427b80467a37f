// Package storetest is the conformance suite every key server store backend
// must pass, plus the key and clock helpers its tests use.
//
// Run checks the store.Store contract directly (uniqueness, atomicity, claim
// order, exactly-once claims under 1,000 concurrent fetches, single-use
// challenges) and then drives a full key server over HTTP on the same
// backend, so the behaviour a client sees — registration, proofs, tokens,
// revocation, rate limits — is verified per backend too. Backends run it as
// subtests named after themselves (TestStore/sqlite/…,
// TestStore/cassandra/…).
package storetest

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"sync"
	"testing"
	"time"

	"github.com/hushchat/hush/keyserver/store"
)

// NewStore returns a store for one subtest. Stores it returns may share
// data: every subtest uses its own fresh account names.
type NewStore func(t *testing.T) store.Store

// Run runs the conformance suite.
func Run(t *testing.T, newStore NewStore) {
	for _, tc := range []struct {
		name string
		fn   func(*testing.T, store.Store)
	}{
		{"CreateAccount", testCreateAccount},
		{"DuplicateName", testDuplicateName},
		{"AddRemoveDevice", testAddRemoveDevice},
		{"DeviceLimit", testDeviceLimit},
		{"UploadCount", testUploadCount},
		{"UploadAtomic", testUploadAtomic},
		{"RotateSignedPreKey", testRotate},
		{"LastResort", testLastResort},
		{"ClaimOrder", testClaimOrder},
		{"ConcurrentClaims", testConcurrentClaims},
		{"Challenges", testChallenges},
		{"NotFound", testNotFound},
	} {
		t.Run(tc.name, func(t *testing.T) {
			st := newStore(t)
			tc.fn(t, st)
		})
	}
	t.Run("Server", func(t *testing.T) { runServer(t, newStore) })
}

var t0 = time.Date(2026, 11, 26, 12, 0, 0, 0, time.UTC)

func ctx(t *testing.T) context.Context {
	c, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	t.Cleanup(cancel)
	return c
}

func mustCreate(t *testing.T, st store.Store, name string, d *TestDevice) {
	t.Helper()
	if err := st.CreateAccount(ctx(t), name, d.Keys, t0); err != nil {
		t.Fatalf("create %s: %v", name, err)
	}
}

func wantErr(t *testing.T, what string, err, want error) {
	t.Helper()
	if !errors.Is(err, want) {
		t.Fatalf("%s: err = %v, want %v", what, err, want)
	}
}

func sameDevice(t *testing.T, got store.Device, id uint32, want store.DeviceKeys) {
	t.Helper()
	if got.ID != id || got.RegistrationID != want.RegistrationID || !bytes.Equal(got.IdentityKey, want.IdentityKey) ||
		got.SignedPreKey.ID != want.SignedPreKey.ID || !bytes.Equal(got.SignedPreKey.PublicKey, want.SignedPreKey.PublicKey) ||
		!bytes.Equal(got.SignedPreKey.Signature, want.SignedPreKey.Signature) ||
		got.LastResort.ID != want.LastResort.ID || !bytes.Equal(got.LastResort.PublicKey, want.LastResort.PublicKey) {
		t.Fatalf("device %d does not match what was stored:\n got %+v\nwant id %d %+v", got.ID, got, id, want)
	}
}

func testCreateAccount(t *testing.T, st store.Store) {
	name := Name(t)
	d := NewDevice(t, 1, 5)
	mustCreate(t, st, name, d)
	devs, err := st.Devices(ctx(t), name)
	if err != nil {
		t.Fatal(err)
	}
	if len(devs) != 1 {
		t.Fatalf("%d devices, want 1", len(devs))
	}
	sameDevice(t, devs[0], 1, d.Keys)
	if !devs[0].Created.Equal(t0) {
		t.Errorf("created %v, want %v", devs[0].Created, t0)
	}
	if devs[0].PrevSignedPreKey.ID != 0 {
		t.Errorf("a new device has a previous signed prekey %d", devs[0].PrevSignedPreKey.ID)
	}
	one, err := st.Device(ctx(t), name, 1)
	if err != nil {
		t.Fatal(err)
	}
	sameDevice(t, one, 1, d.Keys)
	if n, err := st.CountOneTimePreKeys(ctx(t), name, 1); err != nil || n != 5 {
		t.Fatalf("count = %d, %v; want 5", n, err)
	}
}

func testDuplicateName(t *testing.T, st store.Store) {
	name := Name(t)
	first := NewDevice(t, 1, 3)
	mustCreate(t, st, name, first)
	second := NewDevice(t, 100, 7)
	wantErr(t, "second registration", st.CreateAccount(ctx(t), name, second.Keys, t0.Add(time.Hour)), store.ErrNameTaken)
	// The first owner's state is untouched.
	devs, err := st.Devices(ctx(t), name)
	if err != nil || len(devs) != 1 {
		t.Fatalf("devices = %v, %v; want the first owner's one device", devs, err)
	}
	sameDevice(t, devs[0], 1, first.Keys)
	if n, _ := st.CountOneTimePreKeys(ctx(t), name, 1); n != 3 {
		t.Fatalf("count = %d after refused registration, want 3", n)
	}
}

func testAddRemoveDevice(t *testing.T, st store.Store) {
	name := Name(t)
	mustCreate(t, st, name, NewDevice(t, 1, 2))
	d2 := NewDevice(t, 1, 4)
	id, err := st.AddDevice(ctx(t), name, d2.Keys, t0)
	if err != nil || id != 2 {
		t.Fatalf("add device = %d, %v; want 2", id, err)
	}
	d3 := NewDevice(t, 1, 1)
	if id, err := st.AddDevice(ctx(t), name, d3.Keys, t0); err != nil || id != 3 {
		t.Fatalf("add device = %d, %v; want 3", id, err)
	}
	got, err := st.Device(ctx(t), name, 2)
	if err != nil {
		t.Fatal(err)
	}
	sameDevice(t, got, 2, d2.Keys)
	if n, _ := st.CountOneTimePreKeys(ctx(t), name, 2); n != 4 {
		t.Fatalf("device 2 holds %d prekeys, want 4", n)
	}

	if err := st.RemoveDevice(ctx(t), name, 3); err != nil {
		t.Fatal(err)
	}
	wantErr(t, "removed device", func() error { _, err := st.Device(ctx(t), name, 3); return err }(), store.ErrDeviceNotFound)
	wantErr(t, "claim on removed device", func() error { _, err := st.ClaimPreKey(ctx(t), name, 3); return err }(), store.ErrDeviceNotFound)
	wantErr(t, "remove again", st.RemoveDevice(ctx(t), name, 3), store.ErrDeviceNotFound)
	// Ids are never reused: the next device is 4, not 3.
	if id, err := st.AddDevice(ctx(t), name, NewDevice(t, 1, 0).Keys, t0); err != nil || id != 4 {
		t.Fatalf("add after removal = %d, %v; want 4", id, err)
	}
	devs, err := st.Devices(ctx(t), name)
	if err != nil {
		t.Fatal(err)
	}
	var ids []uint32
	for _, d := range devs {
		ids = append(ids, d.ID)
	}
	if fmt.Sprint(ids) != "[1 2 4]" {
		t.Fatalf("devices %v, want [1 2 4]", ids)
	}
	for _, id := range []uint32{1, 2} {
		if err := st.RemoveDevice(ctx(t), name, id); err != nil {
			t.Fatal(err)
		}
	}
	wantErr(t, "remove last device", st.RemoveDevice(ctx(t), name, 4), store.ErrLastDevice)
	if _, err := st.Device(ctx(t), name, 4); err != nil {
		t.Fatalf("last device gone after refused removal: %v", err)
	}
}

func testDeviceLimit(t *testing.T, st store.Store) {
	name := Name(t)
	d := NewDevice(t, 1, 0)
	mustCreate(t, st, name, d)
	for want := uint32(2); want <= store.MaxDeviceID; want++ {
		id, err := st.AddDevice(ctx(t), name, d.Keys, t0)
		if err != nil || id != want {
			t.Fatalf("add device = %d, %v; want %d", id, err, want)
		}
		if want%2 == 0 {
			// Removing devices does not give their ids back.
			if err := st.RemoveDevice(ctx(t), name, id); err != nil {
				t.Fatal(err)
			}
		}
	}
	_, err := st.AddDevice(ctx(t), name, d.Keys, t0)
	wantErr(t, "128th device", err, store.ErrDeviceLimit)
}

func testUploadCount(t *testing.T, st store.Store) {
	name := Name(t)
	mustCreate(t, st, name, NewDevice(t, 1, 10))
	if err := st.AddOneTimePreKeys(ctx(t), name, 1, PreKeys(t, 11, 100), 1000); err != nil {
		t.Fatal(err)
	}
	if n, err := st.CountOneTimePreKeys(ctx(t), name, 1); err != nil || n != 110 {
		t.Fatalf("count = %d, %v; want 110", n, err)
	}
	if _, err := st.ClaimPreKey(ctx(t), name, 1); err != nil {
		t.Fatal(err)
	}
	if n, _ := st.CountOneTimePreKeys(ctx(t), name, 1); n != 109 {
		t.Fatalf("count after a claim = %d, want 109", n)
	}
	// The claimed id (1) may be uploaded again: it is no longer stored.
	if err := st.AddOneTimePreKeys(ctx(t), name, 1, PreKeys(t, 1, 1), 1000); err != nil {
		t.Fatalf("re-upload of a claimed id: %v", err)
	}
}

func testUploadAtomic(t *testing.T, st store.Store) {
	name := Name(t)
	mustCreate(t, st, name, NewDevice(t, 1, 10))
	// Ids 5..14: 5..10 collide with stored ones; nothing may be stored.
	wantErr(t, "overlapping upload", st.AddOneTimePreKeys(ctx(t), name, 1, PreKeys(t, 5, 10), 1000), store.ErrPreKeyExists)
	if n, _ := st.CountOneTimePreKeys(ctx(t), name, 1); n != 10 {
		t.Fatalf("count = %d after refused upload, want 10", n)
	}
	// Over the cap: refused whole.
	wantErr(t, "upload over the cap", st.AddOneTimePreKeys(ctx(t), name, 1, PreKeys(t, 11, 20), 25), store.ErrPreKeyLimit)
	if n, _ := st.CountOneTimePreKeys(ctx(t), name, 1); n != 10 {
		t.Fatalf("count = %d after refused upload, want 10", n)
	}
	// Exactly at the cap: accepted.
	if err := st.AddOneTimePreKeys(ctx(t), name, 1, PreKeys(t, 11, 15), 25); err != nil {
		t.Fatalf("upload to the cap: %v", err)
	}
	if n, _ := st.CountOneTimePreKeys(ctx(t), name, 1); n != 25 {
		t.Fatalf("count = %d, want 25", n)
	}
}

func testRotate(t *testing.T, st store.Store) {
	name := Name(t)
	d := NewDevice(t, 1, 0)
	mustCreate(t, st, name, d)
	old := d.Keys.SignedPreKey
	wantErr(t, "rotate to the current id", st.RotateSignedPreKey(ctx(t), name, 1, d.SignedPreKey(t, old.ID), t0), store.ErrSignedPreKeyInUse)
	spk2 := d.SignedPreKey(t, 2)
	exp := t0.Add(48 * time.Hour)
	if err := st.RotateSignedPreKey(ctx(t), name, 1, spk2, exp); err != nil {
		t.Fatal(err)
	}
	got, err := st.Device(ctx(t), name, 1)
	if err != nil {
		t.Fatal(err)
	}
	if got.SignedPreKey.ID != 2 || !bytes.Equal(got.SignedPreKey.PublicKey, spk2.PublicKey) || !bytes.Equal(got.SignedPreKey.Signature, spk2.Signature) {
		t.Fatalf("current signed prekey %+v, want %+v", got.SignedPreKey, spk2)
	}
	if got.PrevSignedPreKey.ID != old.ID || !bytes.Equal(got.PrevSignedPreKey.PublicKey, old.PublicKey) || !got.PrevSignedExpires.Equal(exp) {
		t.Fatalf("previous signed prekey %+v until %v, want id %d until %v", got.PrevSignedPreKey, got.PrevSignedExpires, old.ID, exp)
	}
	// A second rotation moves 2 to previous.
	if err := st.RotateSignedPreKey(ctx(t), name, 1, d.SignedPreKey(t, 3), exp.Add(time.Hour)); err != nil {
		t.Fatal(err)
	}
	got, _ = st.Device(ctx(t), name, 1)
	if got.SignedPreKey.ID != 3 || got.PrevSignedPreKey.ID != 2 || !got.PrevSignedExpires.Equal(exp.Add(time.Hour)) {
		t.Fatalf("after second rotation: current %d previous %d until %v", got.SignedPreKey.ID, got.PrevSignedPreKey.ID, got.PrevSignedExpires)
	}
}

func testLastResort(t *testing.T, st store.Store) {
	name := Name(t)
	d := NewDevice(t, 1, 1)
	mustCreate(t, st, name, d)
	if c, err := st.ClaimPreKey(ctx(t), name, 1); err != nil || c.LastResort || c.Key.ID != 1 {
		t.Fatalf("first claim = %+v, %v; want one-time key 1", c, err)
	}
	// The last-resort key is handed out again and again, never consumed.
	for range 3 {
		c, err := st.ClaimPreKey(ctx(t), name, 1)
		if err != nil || !c.LastResort || c.Key.ID != d.Keys.LastResort.ID || !bytes.Equal(c.Key.PublicKey, d.Keys.LastResort.PublicKey) {
			t.Fatalf("claim on an empty pool = %+v, %v; want the last-resort key", c, err)
		}
	}
	lr := PreKeys(t, 77, 1)[0]
	if err := st.SetLastResort(ctx(t), name, 1, lr); err != nil {
		t.Fatal(err)
	}
	c, err := st.ClaimPreKey(ctx(t), name, 1)
	if err != nil || !c.LastResort || c.Key.ID != 77 || !bytes.Equal(c.Key.PublicKey, lr.PublicKey) {
		t.Fatalf("claim after replacing the last-resort key = %+v, %v", c, err)
	}
}

func testClaimOrder(t *testing.T, st store.Store) {
	name := Name(t)
	mustCreate(t, st, name, NewDevice(t, 1, 0))
	keys := PreKeys(t, 1, 60)
	rand.Shuffle(len(keys), func(i, j int) { keys[i], keys[j] = keys[j], keys[i] })
	// Upload in shuffled order, in two batches.
	for _, batch := range [][]store.PreKey{keys[:30], keys[30:]} {
		if err := st.AddOneTimePreKeys(ctx(t), name, 1, batch, 1000); err != nil {
			t.Fatal(err)
		}
	}
	byID := make(map[uint32][]byte)
	for _, k := range keys {
		byID[k.ID] = k.PublicKey
	}
	for want := uint32(1); want <= 60; want++ {
		c, err := st.ClaimPreKey(ctx(t), name, 1)
		if err != nil {
			t.Fatal(err)
		}
		if c.LastResort || c.Key.ID != want || !bytes.Equal(c.Key.PublicKey, byID[want]) {
			t.Fatalf("claim %d = id %d (last resort %v), want id %d with its key", want, c.Key.ID, c.LastResort, want)
		}
	}
	if c, _ := st.ClaimPreKey(ctx(t), name, 1); !c.LastResort {
		t.Fatalf("61st claim = %+v, want last resort", c)
	}
}

// testConcurrentClaims: 1,000 concurrent claims against 100 one-time keys
// hand out exactly the 100 keys, each once, and the last-resort key 900
// times.
func testConcurrentClaims(t *testing.T, st store.Store) {
	const keys, claims = 100, 1000
	name := Name(t)
	d := NewDevice(t, 1, keys)
	mustCreate(t, st, name, d)
	var (
		wg         sync.WaitGroup
		mu         sync.Mutex
		got        = make(map[uint32]int)
		lastResort int
		errs       []error
	)
	start := make(chan struct{})
	cctx := ctx(t)
	for range claims {
		wg.Add(1)
		go func() {
			defer wg.Done()
			<-start
			c, err := st.ClaimPreKey(cctx, name, 1)
			mu.Lock()
			defer mu.Unlock()
			switch {
			case err != nil:
				errs = append(errs, err)
			case c.LastResort:
				if c.Key.ID != d.Keys.LastResort.ID {
					errs = append(errs, fmt.Errorf("last-resort claim returned id %d", c.Key.ID))
				}
				lastResort++
			default:
				got[c.Key.ID]++
			}
		}()
	}
	close(start)
	wg.Wait()
	if len(errs) > 0 {
		t.Fatalf("%d claims failed, first: %v", len(errs), errs[0])
	}
	for id, n := range got {
		if n != 1 {
			t.Errorf("one-time key %d handed out %d times", id, n)
		}
		if id < 1 || id > keys {
			t.Errorf("handed out unknown key %d", id)
		}
	}
	if len(got) != keys || lastResort != claims-keys {
		t.Fatalf("%d distinct one-time keys and %d last-resort claims; want %d and %d", len(got), lastResort, keys, claims-keys)
	}
	if n, _ := st.CountOneTimePreKeys(ctx(t), name, 1); n != 0 {
		t.Fatalf("%d one-time keys left, want 0", n)
	}
}

func nonce() []byte {
	b := make([]byte, 32)
	for i := range b {
		b[i] = byte(rand.IntN(256))
	}
	return b
}

func testChallenges(t *testing.T, st store.Store) {
	c := ctx(t)
	n := nonce()
	if err := st.PutChallenge(c, n, t0, t0.Add(time.Minute)); err != nil {
		t.Fatal(err)
	}
	if err := st.ConsumeChallenge(c, n, t0.Add(59*time.Second)); err != nil {
		t.Fatalf("fresh challenge refused: %v", err)
	}
	wantErr(t, "second use", st.ConsumeChallenge(c, n, t0.Add(59*time.Second)), store.ErrChallengeInvalid)
	wantErr(t, "unknown nonce", st.ConsumeChallenge(c, nonce(), t0), store.ErrChallengeInvalid)

	expired := nonce()
	if err := st.PutChallenge(c, expired, t0, t0.Add(time.Minute)); err != nil {
		t.Fatal(err)
	}
	wantErr(t, "expired", st.ConsumeChallenge(c, expired, t0.Add(time.Minute)), store.ErrChallengeInvalid)
	wantErr(t, "expired, retried", st.ConsumeChallenge(c, expired, t0), store.ErrChallengeInvalid)

	// Racing consumers of one nonce: exactly one wins.
	race := nonce()
	if err := st.PutChallenge(c, race, t0, t0.Add(time.Minute)); err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	var mu sync.Mutex
	wins := 0
	for range 20 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			err := st.ConsumeChallenge(c, race, t0)
			if err != nil && !errors.Is(err, store.ErrChallengeInvalid) {
				t.Errorf("consume: %v", err)
			}
			if err == nil {
				mu.Lock()
				wins++
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	if wins != 1 {
		t.Fatalf("%d concurrent consumers of one nonce succeeded, want 1", wins)
	}
}

func testNotFound(t *testing.T, st store.Store) {
	c := ctx(t)
	ghost := Name(t)
	d := NewDevice(t, 1, 1)
	_, err := st.Devices(c, ghost)
	wantErr(t, "Devices", err, store.ErrAccountNotFound)
	_, err = st.Device(c, ghost, 1)
	wantErr(t, "Device", err, store.ErrAccountNotFound)
	_, err = st.AddDevice(c, ghost, d.Keys, t0)
	wantErr(t, "AddDevice", err, store.ErrAccountNotFound)
	wantErr(t, "RemoveDevice", st.RemoveDevice(c, ghost, 1), store.ErrAccountNotFound)
	wantErr(t, "AddOneTimePreKeys", st.AddOneTimePreKeys(c, ghost, 1, d.Keys.OneTime, 100), store.ErrAccountNotFound)
	wantErr(t, "RotateSignedPreKey", st.RotateSignedPreKey(c, ghost, 1, d.SignedPreKey(t, 9), t0), store.ErrAccountNotFound)
	wantErr(t, "SetLastResort", st.SetLastResort(c, ghost, 1, d.Keys.LastResort), store.ErrAccountNotFound)
	_, err = st.CountOneTimePreKeys(c, ghost, 1)
	wantErr(t, "CountOneTimePreKeys", err, store.ErrAccountNotFound)
	_, err = st.ClaimPreKey(c, ghost, 1)
	wantErr(t, "ClaimPreKey", err, store.ErrAccountNotFound)

	// Existing account, missing device.
	name := Name(t)
	mustCreate(t, st, name, d)
	_, err = st.Device(c, name, 2)
	wantErr(t, "Device", err, store.ErrDeviceNotFound)
	wantErr(t, "RemoveDevice", st.RemoveDevice(c, name, 2), store.ErrDeviceNotFound)
	wantErr(t, "AddOneTimePreKeys", st.AddOneTimePreKeys(c, name, 2, PreKeys(t, 50, 1), 100), store.ErrDeviceNotFound)
	wantErr(t, "RotateSignedPreKey", st.RotateSignedPreKey(c, name, 2, d.SignedPreKey(t, 9), t0), store.ErrDeviceNotFound)
	wantErr(t, "SetLastResort", st.SetLastResort(c, name, 2, d.Keys.LastResort), store.ErrDeviceNotFound)
	_, err = st.CountOneTimePreKeys(c, name, 2)
	wantErr(t, "CountOneTimePreKeys", err, store.ErrDeviceNotFound)
	_, err = st.ClaimPreKey(c, name, 2)
	wantErr(t, "ClaimPreKey", err, store.ErrDeviceNotFound)
	if err := st.Ping(c); err != nil {
		t.Fatalf("ping: %v", err)
	}
}
