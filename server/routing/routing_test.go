package routing

import (
	"context"
	"slices"
	"sync"
	"testing"

	"github.com/hushchat/hush/server/queue"
)

type recorder struct {
	mu      sync.Mutex
	bells   []Bell
	evicted []uint64
}

func (r *recorder) Ring(b Bell) { r.mu.Lock(); r.bells = append(r.bells, b); r.mu.Unlock() }
func (r *recorder) Evict(_ queue.Device, s uint64) {
	r.mu.Lock()
	r.evicted = append(r.evicted, s)
	r.mu.Unlock()
}

func TestLocal(t *testing.T) {
	ctx := context.Background()
	var h recorder
	l := NewLocal()
	l.Subscribe(&h)
	a := queue.Device{Account: "alice", ID: 1}
	b := queue.Device{Account: "bob", ID: 1}

	if err := l.Attach(ctx, a, 10); err != nil {
		t.Fatal(err)
	}
	got, err := l.Ring(ctx, []Bell{{Device: a, ServerID: 5}, {Device: b, ServerID: 6}})
	if err != nil || !slices.Equal(got, []bool{true, false}) {
		t.Fatalf("Ring = %v, %v; want [true false]", got, err)
	}
	if len(h.bells) != 1 || h.bells[0].ServerID != 5 {
		t.Fatalf("handler got %+v, want only the bell of the attached device", h.bells)
	}

	// A newer session evicts the older one; the older one's late Detach
	// does not detach the newer.
	l.Attach(ctx, a, 11)
	if !slices.Equal(h.evicted, []uint64{10}) {
		t.Fatalf("evicted %v, want [10]", h.evicted)
	}
	l.Detach(ctx, a, 10)
	if !l.Attached(a) {
		t.Fatal("stale Detach removed the newer session")
	}
	l.Detach(ctx, a, 11)
	if l.Attached(a) {
		t.Fatal("Detach of the live session kept it attached")
	}
	got, _ = l.Ring(ctx, []Bell{{Device: a}})
	if got[0] {
		t.Fatal("bell for a detached device reported attached")
	}
	l.Close()
	if err := l.Attach(ctx, a, 12); err == nil {
		t.Fatal("Attach after Close succeeded")
	}
}
