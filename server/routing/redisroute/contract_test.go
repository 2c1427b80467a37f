package redisroute

import (
	"context"
	"slices"
	"sync"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"

	"github.com/hushchat/hush/protocol"
	"github.com/hushchat/hush/server/queue"
	"github.com/hushchat/hush/server/routing"
)

// The contract tests are written against routing.Router and a constructor
// of an n-node "cluster", so that they run against routing.Local (n = 1)
// and this package's Router alike. They could move to a shared
// routing/routingtest package unchanged.

// recorder is a routing.Handler that remembers what it was given.
type recorder struct {
	mu      sync.Mutex
	bells   []routing.Bell
	evicted []eviction
	changed chan struct{}
}

func newRecorder() *recorder { return &recorder{changed: make(chan struct{}, 1)} }

func (r *recorder) Ring(b routing.Bell) {
	r.mu.Lock()
	r.bells = append(r.bells, b)
	r.mu.Unlock()
	r.poke()
}

func (r *recorder) Evict(dev queue.Device, s uint64) {
	r.mu.Lock()
	r.evicted = append(r.evicted, eviction{dev, s})
	r.mu.Unlock()
	r.poke()
}

func (r *recorder) poke() {
	select {
	case r.changed <- struct{}{}:
	default:
	}
}

// waitFor waits until cond (evaluated under the recorder's lock) holds.
func (r *recorder) waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.After(10 * time.Second)
	for {
		r.mu.Lock()
		ok := cond()
		r.mu.Unlock()
		if ok {
			return
		}
		select {
		case <-r.changed:
		case <-time.After(20 * time.Millisecond):
		case <-deadline:
			r.mu.Lock()
			defer r.mu.Unlock()
			t.Fatalf("timed out waiting for %s; bells %+v, evicted %+v", what, r.bells, r.evicted)
		}
	}
}

func (r *recorder) take() ([]routing.Bell, []eviction) {
	r.mu.Lock()
	defer r.mu.Unlock()
	b, e := r.bells, r.evicted
	r.bells, r.evicted = nil, nil
	return b, e
}

func (r *recorder) hasBell(dev queue.Device, id uint64) bool {
	for _, b := range r.bells {
		if b.Device == dev && b.ServerID == id {
			return true
		}
	}
	return false
}

func (r *recorder) hasEviction(dev queue.Device, s uint64) bool {
	return slices.Contains(r.evicted, eviction{dev, s})
}

var (
	alice1 = queue.Device{Account: "alice", ID: 1}
	alice2 = queue.Device{Account: "alice", ID: 2}
	bob1   = queue.Device{Account: "bob", ID: 1}
	carol1 = queue.Device{Account: "carol", ID: 1}
)

// newCluster returns n routers sharing one routing state, each already
// subscribed to its recorder.
type newCluster func(t *testing.T, n int) ([]routing.Router, []*recorder)

// contractSingleNode is routing's TestLocal as a contract.
func contractSingleNode(t *testing.T, mk newCluster) {
	ctx := context.Background()
	rs, hs := mk(t, 1)
	l, h := rs[0], hs[0]

	if err := l.Attach(ctx, alice1, 10); err != nil {
		t.Fatal(err)
	}
	got, err := l.Ring(ctx, []routing.Bell{{Device: alice1, ServerID: 5}, {Device: bob1, ServerID: 6}})
	if err != nil || !slices.Equal(got, []bool{true, false}) {
		t.Fatalf("Ring = %v, %v; want [true false]", got, err)
	}
	h.waitFor(t, "the bell of alice1", func() bool { return h.hasBell(alice1, 5) })
	if bells, _ := h.take(); len(bells) != 1 {
		t.Fatalf("handler got %+v, want only the bell of the attached device", bells)
	}

	// A newer session evicts the older one; the older one's late Detach
	// does not detach the newer.
	if err := l.Attach(ctx, alice1, 11); err != nil {
		t.Fatal(err)
	}
	h.waitFor(t, "eviction of session 10", func() bool { return h.hasEviction(alice1, 10) })
	if err := l.Detach(ctx, alice1, 10); err != nil {
		t.Fatal(err)
	}
	if got, _ := l.Ring(ctx, []routing.Bell{{Device: alice1, ServerID: 7}}); !got[0] {
		t.Fatal("stale Detach removed the newer session")
	}
	if err := l.Detach(ctx, alice1, 11); err != nil {
		t.Fatal(err)
	}
	if got, _ := l.Ring(ctx, []routing.Bell{{Device: alice1}}); got[0] {
		t.Fatal("bell for a detached device reported attached")
	}
	l.Close()
	if err := l.Attach(ctx, alice1, 12); err == nil {
		t.Fatal("Attach after Close succeeded")
	}
}

// contractCluster: bells reach the node a device is attached to, at most
// once each, carrying ephemeral envelopes intact; Attach on one node
// evicts the session on another; a superseded session's Detach does not
// detach its successor anywhere.
func contractCluster(t *testing.T, mk newCluster) {
	ctx := context.Background()
	rs, hs := mk(t, 3)
	a, b, c := rs[0], rs[1], rs[2]
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	must(b.Attach(ctx, alice1, 100))
	must(c.Attach(ctx, bob1, 200))
	must(c.Attach(ctx, alice2, 300))

	env := &protocol.Envelope{ServerId: 9, Sender: "carol", SenderDevice: 1, Type: protocol.EnvelopeType(1), Payload: []byte("typing"), ServerTimeMs: 1234, Ephemeral: true}
	got, err := a.Ring(ctx, []routing.Bell{
		{Device: alice1, ServerID: 1},
		{Device: carol1, ServerID: 2},
		{Device: bob1, ServerID: 3},
		{Device: alice2, ServerID: 4},
		{Device: bob1, ServerID: 9, Envelope: env},
	})
	if err != nil || !slices.Equal(got, []bool{true, false, true, true, true}) {
		t.Fatalf("Ring = %v, %v; want [true false true true true]", got, err)
	}
	hs[1].waitFor(t, "alice1's bell on B", func() bool { return hs[1].hasBell(alice1, 1) })
	hs[2].waitFor(t, "three bells on C", func() bool { return len(hs[2].bells) == 3 })
	bellsB, _ := hs[1].take()
	bellsC, _ := hs[2].take()
	if len(bellsB) != 1 {
		t.Fatalf("B got %+v, want alice1's bell only", bellsB)
	}
	var sawEnv bool
	for _, bl := range bellsC {
		if bl.Device == alice1 || bl.Device == carol1 {
			t.Fatalf("C got a bell for %s", bl.Device)
		}
		if bl.Envelope != nil {
			sawEnv = true
			if !proto.Equal(bl.Envelope, env) {
				t.Fatalf("ephemeral envelope arrived as %v, want %v", bl.Envelope, env)
			}
		}
	}
	if !sawEnv {
		t.Fatal("the ephemeral bell lost its envelope")
	}
	if bells, _ := hs[0].take(); len(bells) != 0 {
		t.Fatalf("A, where nothing is attached, got %+v", bells)
	}

	// alice1 reconnects to A: B's session is evicted; bells go to A only.
	must(a.Attach(ctx, alice1, 101))
	hs[1].waitFor(t, "eviction of alice1/100 on B", func() bool { return hs[1].hasEviction(alice1, 100) })
	must(b.Detach(ctx, alice1, 100)) // B closes the evicted connection late
	got, err = c.Ring(ctx, []routing.Bell{{Device: alice1, ServerID: 5}})
	if err != nil || !got[0] {
		t.Fatalf("after B's stale Detach: Ring = %v, %v; want attached", got, err)
	}
	hs[0].waitFor(t, "alice1's bell on A", func() bool { return hs[0].hasBell(alice1, 5) })
	if bells, _ := hs[1].take(); len(bells) != 0 {
		t.Fatalf("B still got bells after eviction: %+v", bells)
	}
	_, evA := hs[0].take()
	if len(evA) != 0 {
		t.Fatalf("A's new session was evicted: %+v", evA)
	}

	must(a.Detach(ctx, alice1, 101))
	got, err = b.Ring(ctx, []routing.Bell{{Device: alice1}})
	if err != nil || got[0] {
		t.Fatalf("after Detach: Ring = %v, %v; want offline", got, err)
	}
}

func TestLocalContract(t *testing.T) {
	contractSingleNode(t, func(t *testing.T, n int) ([]routing.Router, []*recorder) {
		l := routing.NewLocal()
		h := newRecorder()
		l.Subscribe(h)
		return []routing.Router{l}, []*recorder{h}
	})
}
