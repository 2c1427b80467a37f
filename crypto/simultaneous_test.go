package crypto

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"testing"
)

// Regression tests for trial decryption against a record with several
// session states. libsignal v0.2.1's SessionCipher tries a message on the
// current state first and, when the MAC check fails, on the previous states
// — but the failed try has already run a DH ratchet step on the current state
// (new receiver chain, new root key, new sender chain). When a previous state
// then succeeded, the record was stored with that damaged state archived, and
// when the damaged state was later promoted back, everything sent on it was
// undecryptable for good ("no valid sessions"). Two devices starting sessions
// with each other at the same moment (first contact, linking two devices of
// one account) or a session reset with messages still in flight produce
// exactly such records.

// TestSimultaneousInitiation is the shortest schedule that broke a session:
// both sides initiate, each adopts the other's session on receipt, and a
// late message on the first session follows one on the second.
func TestSimultaneousInitiation(t *testing.T) {
	ctx := context.Background()
	alice := newDevice(t, "alice", 1, 2)
	bob := newDevice(t, "bob", 1, 2)
	A, B := alice.Address(), bob.Address()
	connect(t, alice, bob, 0)
	connect(t, bob, alice, 0)

	enc := func(from *device, to Address, text string) Ciphertext {
		t.Helper()
		c, err := from.Encrypt(ctx, to, []byte(text))
		if err != nil {
			t.Fatalf("encrypt %q: %v", text, err)
		}
		return c
	}
	dec := func(to *device, from Address, c Ciphertext, text string) {
		t.Helper()
		pt, err := to.Decrypt(ctx, from, c)
		if err != nil {
			t.Fatalf("decrypt %q (%v): %v", text, c.Type, err)
		}
		if string(pt) != text {
			t.Fatalf("decrypted %q, want %q", pt, text)
		}
	}

	m1, m1b := enc(alice, B, "m1"), enc(alice, B, "m1b") // on alice's session
	n1 := enc(bob, A, "n1")                              // on bob's session
	dec(bob, A, m1, "m1")
	dec(alice, B, n1, "n1")
	m2 := enc(alice, B, "m2") // alice now sends on bob's session
	dec(bob, A, m2, "m2")
	dec(bob, A, m1b, "m1b") // a late message on alice's session
	n2 := enc(bob, A, "n2") // bob now sends on alice's session again
	dec(alice, B, n2, "n2")
	m3 := enc(alice, B, "m3")
	dec(bob, A, m3, "m3")
	n3 := enc(bob, A, "n3")
	dec(alice, B, n3, "n3")

	// Every message was decrypted once; a second delivery is a duplicate.
	for _, m := range []struct {
		to   *device
		from Address
		c    Ciphertext
	}{{bob, A, m1}, {bob, A, m1b}, {bob, A, m2}, {bob, A, m3}, {alice, B, n1}, {alice, B, n2}, {alice, B, n3}} {
		if pt, err := m.to.Decrypt(ctx, m.from, m.c); !errors.Is(err, ErrDuplicateMessage) || pt != nil {
			t.Fatalf("redelivery to %s: %q, %v; want ErrDuplicateMessage", m.to.self, pt, err)
		}
	}
}

// TestFailedTrialLeavesRecordUnchanged checks the property behind the fix
// directly: a message that the current state refuses and a previous state
// accepts changes only the state that accepted it (promoted to current), and
// a message that no state accepts changes nothing at all.
func TestFailedTrialLeavesRecordUnchanged(t *testing.T) {
	ctx := context.Background()
	alice := newDevice(t, "alice", 1, 2)
	bob := newDevice(t, "bob", 1, 2)
	A, B := alice.Address(), bob.Address()
	connect(t, alice, bob, 0)
	first, err := alice.Encrypt(ctx, B, []byte("first"))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := bob.Decrypt(ctx, A, first); err != nil {
		t.Fatal(err)
	}
	reply, err := bob.Encrypt(ctx, A, []byte("reply"))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := alice.Decrypt(ctx, B, reply); err != nil {
		t.Fatal(err)
	}
	late, err := alice.Encrypt(ctx, B, []byte("late"))
	if err != nil {
		t.Fatal(err)
	}
	if late.Type != MessageTypeSignal {
		t.Fatalf("late message is a %v message", late.Type)
	}
	// Bob resets: a new session from alice's bundle becomes his current
	// state, alice's session is archived.
	connect(t, bob, alice, 1)
	before, err := bob.store.LoadSession(ctx, A)
	if err != nil {
		t.Fatal(err)
	}
	// A forgery on the archived session's chain (its last byte is part of
	// the MAC): the current state refuses it after a DH ratchet step on its
	// copy, the archived one after deriving the message key.
	forged := Ciphertext{Type: late.Type, Body: bytes.Clone(late.Body)}
	forged.Body[len(forged.Body)-1] ^= 1
	if _, err := bob.Decrypt(ctx, A, forged); !errors.Is(err, ErrInvalidMessage) {
		t.Fatalf("forgery: %v, want ErrInvalidMessage", err)
	}
	after, err := bob.store.LoadSession(ctx, A)
	if err != nil {
		t.Fatal(err)
	}
	if string(before) != string(after) {
		t.Fatal("a refused message changed the session record")
	}
	// The late message decrypts on the archived state, which becomes current;
	// the reset session is archived unchanged and still works.
	if pt, err := bob.Decrypt(ctx, A, late); err != nil || string(pt) != "late" {
		t.Fatalf("late message: %q, %v", pt, err)
	}
	rec, err := decodeSessionRecord(mustLoad(t, bob.store, A))
	if err != nil {
		t.Fatal(err)
	}
	prev := rec.PreviousSessionStates()
	if len(prev) != 1 {
		t.Fatalf("%d previous states after promotion, want 1", len(prev))
	}
	want, err := decodeSessionRecord(before)
	if err != nil {
		t.Fatal(err)
	}
	if got, w := string(prev[0].Serialize()), string(want.SessionState().Serialize()); got != w {
		t.Fatal("the state that refused the message was archived changed")
	}
	// Bob's reset session, archived but intact, still carries alice's reply
	// to it.
	reset, err := bob.Encrypt(ctx, A, []byte("on the old session"))
	if err != nil {
		t.Fatal(err)
	}
	if pt, err := alice.Decrypt(ctx, B, reset); err != nil || string(pt) != "on the old session" {
		t.Fatalf("bob on the promoted session: %q, %v", pt, err)
	}
}

func mustLoad(t *testing.T, s *MemoryStore, a Address) []byte {
	t.Helper()
	b, err := s.LoadSession(context.Background(), a)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// TestSimultaneousInitiationRandom runs longer schedules: both sides start
// sessions with each other at once (and again later, as a session reset
// does), send in bursts, and the network reorders deliveries within what the
// ratchet retains. Every message must decrypt exactly once, a redelivery must
// be refused as a duplicate, and the two sides must still talk at the end.
func TestSimultaneousInitiationRandom(t *testing.T) {
	for seed := range uint64(12) {
		t.Run(fmt.Sprint("seed", seed), func(t *testing.T) {
			simultaneous(t, seed)
		})
	}
}

func simultaneous(t *testing.T, seed uint64) {
	r := rand.New(rand.NewPCG(seed, 0x73696d75))
	const preKeys = 8
	alice := newDevice(t, "alice", 1, preKeys)
	bob := newDevice(t, "bob", 2, preKeys)
	ab := &link{from: alice, to: bob, received: map[string]int{}}
	ba := &link{from: bob, to: alice, received: map[string]int{}}
	next := map[*device]int{alice: 0, bob: 0} // next one-time prekey to hand out
	reset := func(l *link) {
		t.Helper()
		i := next[l.to]
		next[l.to]++
		if i >= preKeys {
			i = -1 // last resort
		}
		connect(t, l.from, l.to, i)
	}
	// Both start at the same moment.
	reset(ab)
	reset(ba)
	resets := 2

	const perDirection, steps = 60, 2000
	dups := 0
	for step := 0; step < steps; step++ {
		var actions []func()
		for _, l := range []*link{ab, ba} {
			if l.sent < perDirection {
				actions = append(actions, func() {
					for n := 1 + r.IntN(3); n > 0 && l.sent < perDirection; n-- {
						l.send(t, step)
					}
				})
			}
			if len(l.pending) > 0 {
				d := func() { l.deliver(t, r, step) }
				actions = append(actions, d, d, d)
			}
			if len(l.delivered) > 0 && r.IntN(6) == 0 {
				actions = append(actions, func() { l.duplicate(t, r, step); dups++ })
			}
			// Now and then a side starts over with a fresh bundle while
			// messages are in flight both ways — a session reset — and
			// sometimes both do so at once.
			if l.sent < perDirection && r.IntN(30) == 0 {
				actions = append(actions, func() {
					reset(l)
					resets++
					if r.IntN(2) == 0 {
						other := ab
						if l == ab {
							other = ba
						}
						reset(other)
						resets++
					}
				})
			}
		}
		if len(actions) == 0 {
			break
		}
		actions[r.IntN(len(actions))]()
	}
	for _, l := range []*link{ab, ba} {
		if len(l.pending) != 0 {
			t.Fatalf("%s->%s: %d messages still pending", l.from.self.Name, l.to.self.Name, len(l.pending))
		}
		if l.sent != perDirection || len(l.received) != perDirection {
			t.Fatalf("%s->%s: sent %d, received %d distinct", l.from.self.Name, l.to.self.Name, l.sent, len(l.received))
		}
		for text, n := range l.received {
			if n != 1 {
				t.Fatalf("%q received %d times", text, n)
			}
		}
	}
	// Still talking: a few strict round trips after everything settled.
	for i := range 3 {
		for _, l := range []*link{ab, ba} {
			l.send(t, steps+i)
			l.deliver(t, r, steps+i)
		}
	}
	t.Logf("seed %d: %d messages each way, %d session starts, %d redeliveries refused, reordered a->b %d, b->a %d",
		seed, perDirection, resets, dups, ab.reordered, ba.reordered)
}

// TestTooFarInFuture: a message more than 2,000 messages ahead of its chain
// is refused with ErrTooFarInFuture (the current state's reason, reported
// after no archived state accepted it either), and the session is unchanged.
func TestTooFarInFuture(t *testing.T) {
	ctx := context.Background()
	alice, bob := newDevice(t, "alice", 1, 1), newDevice(t, "bob", 1, 1)
	connect(t, alice, bob, 0)
	var last Ciphertext
	for i := range 2003 {
		c, err := alice.Encrypt(ctx, bob.Address(), []byte(fmt.Sprint(i)))
		if err != nil {
			t.Fatal(err)
		}
		if i == 0 {
			if _, err := bob.Decrypt(ctx, alice.Address(), c); err != nil {
				t.Fatal(err)
			}
		}
		last = c
	}
	before := mustLoad(t, bob.store, alice.Address())
	if pt, err := bob.Decrypt(ctx, alice.Address(), last); !errors.Is(err, ErrTooFarInFuture) || pt != nil {
		t.Fatalf("got %q, %v; want ErrTooFarInFuture", pt, err)
	}
	if !bytes.Equal(before, mustLoad(t, bob.store, alice.Address())) {
		t.Fatal("a refused message changed the session")
	}
}
