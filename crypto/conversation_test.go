package crypto

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"testing"
)

// inflight is a message on the simulated network.
type inflight struct {
	c    Ciphertext
	text string
	sent int // step it was sent at
	seq  int // per-link send order
}

// link is one direction of the network between two devices.
type link struct {
	from, to  *device
	pending   []inflight
	delivered []inflight // for duplicate delivery
	sent      int
	received  map[string]int
	lost      int
	reordered int // deliveries that overtook an earlier message
	maxSeq    int
}

func (l *link) send(t *testing.T, step int) {
	t.Helper()
	text := fmt.Sprintf("%s->%s #%d", l.from.self.Name, l.to.self.Name, l.sent)
	c, err := l.from.Encrypt(context.Background(), l.to.Address(), []byte(text))
	if err != nil {
		t.Fatalf("step %d: encrypt %q: %v", step, text, err)
	}
	l.pending = append(l.pending, inflight{c: c, text: text, sent: step, seq: l.sent})
	l.sent++
}

// deliver hands one pending message to the recipient: usually one of the
// oldest few (so messages overtake each other), but never one older than
// maxAge steps, which keeps every message within the ratchet state the
// receiver retains (five chains).
func (l *link) deliver(t *testing.T, r *rand.Rand, step int) {
	t.Helper()
	const window, maxAge = 4, 8
	i := r.IntN(min(window, len(l.pending)))
	if step-l.pending[0].sent > maxAge {
		i = 0
	}
	m := l.pending[i]
	l.pending = append(l.pending[:i], l.pending[i+1:]...)
	pt, err := l.to.Decrypt(context.Background(), l.from.Address(), m.c)
	if err != nil {
		t.Fatalf("step %d: decrypt %q (%v, sent at step %d): %v", step, m.text, m.c.Type, m.sent, err)
	}
	if string(pt) != m.text {
		t.Fatalf("step %d: got %q, want %q", step, pt, m.text)
	}
	l.received[m.text]++
	l.delivered = append(l.delivered, m)
	if m.seq < l.maxSeq {
		l.reordered++
	}
	l.maxSeq = max(l.maxSeq, m.seq)
}

// lose drops one pending message for good; later ones must still decrypt
// (the receiver keeps the skipped message keys).
func (l *link) lose(r *rand.Rand) {
	i := r.IntN(len(l.pending))
	l.pending = append(l.pending[:i], l.pending[i+1:]...)
	l.lost++
}

// duplicate re-delivers one of the last few delivered messages, as a relay
// does when an ACK was lost; it must be refused with ErrDuplicateMessage.
func (l *link) duplicate(t *testing.T, r *rand.Rand, step int) {
	t.Helper()
	n := len(l.delivered)
	m := l.delivered[n-1-r.IntN(min(3, n))]
	pt, err := l.to.Decrypt(context.Background(), l.from.Address(), m.c)
	if !errors.Is(err, ErrDuplicateMessage) {
		t.Fatalf("step %d: duplicate %q (%v): got %q, %v; want ErrDuplicateMessage", step, m.text, m.c.Type, pt, err)
	}
	if pt != nil {
		t.Fatalf("step %d: duplicate returned plaintext", step)
	}
}

func TestConversationReorderDuplicates(t *testing.T) {
	for _, seed := range []uint64{1, 2} {
		t.Run(fmt.Sprint("seed", seed), func(t *testing.T) {
			conversation(t, seed, 1000)
		})
	}
}

func conversation(t *testing.T, seed uint64, perDirection int) {
	r := rand.New(rand.NewPCG(seed, 0x68757368))
	alice := newDevice(t, "alice", 1, 3)
	bob := newDevice(t, "bob", 2, 3)
	connect(t, alice, bob, 1)
	ab := &link{from: alice, to: bob, received: map[string]int{}}
	ba := &link{from: bob, to: alice, received: map[string]int{}}

	dups := 0
	for step := 0; ; step++ {
		var actions []func()
		// Sends come in bursts of 1–3 so that deliveries can overtake.
		burst := func(l *link) {
			for n := 1 + r.IntN(3); n > 0 && l.sent < perDirection; n-- {
				l.send(t, step)
			}
		}
		if ab.sent < perDirection {
			actions = append(actions, func() { burst(ab) })
		}
		// Bob has no session until Alice's first message arrives.
		if ba.sent < perDirection && len(ab.delivered) > 0 {
			actions = append(actions, func() { burst(ba) })
		}
		for _, l := range []*link{ab, ba} {
			// Deliveries are weighted up so the network does not back up
			// (which would make every delivery a forced, in-order one).
			if len(l.pending) > 0 {
				d := func() { l.deliver(t, r, step) }
				actions = append(actions, d, d, d)
			}
			if len(l.delivered) > 0 && r.IntN(4) == 0 {
				actions = append(actions, func() { l.duplicate(t, r, step); dups++ })
			}
			// Lose about 1% of messages, never Alice's only prekey message
			// before Bob has a session.
			if len(l.pending) > 0 && len(l.delivered) > 0 && r.IntN(100) == 0 {
				actions = append(actions, func() { l.lose(r) })
			}
		}
		if len(actions) == 0 {
			break
		}
		actions[r.IntN(len(actions))]()
	}
	for _, l := range []*link{ab, ba} {
		if l.sent != perDirection || len(l.received) != perDirection-l.lost {
			t.Fatalf("%s->%s: sent %d, lost %d, received %d distinct", l.from.self.Name, l.to.self.Name, l.sent, l.lost, len(l.received))
		}
		if l.reordered == 0 || l.lost == 0 {
			t.Fatalf("%s->%s: %d reordered, %d lost: the schedule did not exercise the ratchet", l.from.self.Name, l.to.self.Name, l.reordered, l.lost)
		}
		for text, n := range l.received {
			if n != 1 {
				t.Fatalf("%q received %d times", text, n)
			}
		}
	}
	if dups == 0 {
		t.Fatal("no duplicates were exercised")
	}
	t.Logf("seed %d: %d messages each way; a->b %d reordered, %d lost; b->a %d reordered, %d lost; %d duplicate deliveries refused",
		seed, perDirection, ab.reordered, ab.lost, ba.reordered, ba.lost, dups)
}
