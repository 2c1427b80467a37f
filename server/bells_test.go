package server

import (
	"context"
	"errors"
	"fmt"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hushchat/hush/server/queue"
	"github.com/hushchat/hush/server/routing"
)

// flakyRouter wraps a Router: Ring fails while fail is set (a Redis call
// timing out), and Healthy reports !unhealthy.
type flakyRouter struct {
	routing.Router
	fail      atomic.Bool
	unhealthy atomic.Bool
	rings     atomic.Int64
}

func (f *flakyRouter) Ring(ctx context.Context, bells []routing.Bell) ([]bool, error) {
	f.rings.Add(1)
	if f.fail.Load() {
		return nil, errors.New("ring: i/o timeout (injected)")
	}
	return f.Router.Ring(ctx, bells)
}

func (f *flakyRouter) Healthy() bool { return !f.unhealthy.Load() }

// Bob is on relay A; alice sends from relay B, whose Rings fail. Relay A's
// router is healthy, so nothing on A polls for bob: only B ringing the
// kept bells again — after its router reports healthy, not before —
// delivers them, without a reconnect. Three failed bells for bob are
// merged into one retry.
func TestFailedBellsRungAgainWhenRouterHealthy(t *testing.T) {
	var net testNet
	nodeA := net.node()
	flaky := &flakyRouter{Router: net.node()}
	flaky.fail.Store(true)
	e := newEnv(t, func(c *Config, _ *queue.Options) { c.Router = flaky }) // relay B
	_, urlA := secondRelay(t, e, nodeA, 2, nil)
	e.dir.set("alice", 1)
	e.dir.set("bob", 1)
	bob := e.connectURL(urlA, "bob", 1)
	bob.nextOf("QueueEmpty")
	alice := e.connect("alice", 1)
	alice.nextOf("QueueEmpty")

	var ids []uint64
	for i := range 3 {
		ack := alice.sendAndAck(sendTo(newClientID(), fmt.Appendf(nil, "m%d", i), dev("bob", 1)))
		if ack.Error != nil {
			t.Fatal(ack.Error)
		}
		ids = append(ids, ack.ServerId)
	}
	waitUntil(t, "three failed rings", func() bool { return counter(t, e, "hush_doorbell_failures_total", "") >= 3 })

	// Ring works again but the router still calls itself unhealthy: the
	// retry waits for it.
	flaky.unhealthy.Store(true)
	flaky.fail.Store(false)
	before := flaky.rings.Load()
	bob.noFrame(4 * retryMin)
	if n := flaky.rings.Load() - before; n != 0 {
		t.Fatalf("%d rings while the router was unhealthy", n)
	}
	if v := counter(t, e, "hush_doorbell_retries_total", ""); v != 0 {
		t.Fatalf("hush_doorbell_retries_total = %v before recovery", v)
	}

	flaky.unhealthy.Store(false)
	var got []uint64
	for len(got) < len(ids) {
		for _, env := range bob.nextOf("Deliver").GetDeliver().Envelopes {
			got = append(got, env.ServerId)
		}
	}
	for i := range ids {
		if got[i] != ids[i] {
			t.Fatalf("bob got %v, want %v", got, ids)
		}
	}
	waitUntil(t, "retry counted", func() bool { return counter(t, e, "hush_doorbell_retries_total", "") == 1 })
}

// While Ring keeps failing the retries back off instead of hammering the
// router, and the bells are still kept for the recovery.
func TestFailingRetriesBackOff(t *testing.T) {
	flaky := &flakyRouter{Router: routing.NewLocal()}
	flaky.fail.Store(true)
	e := newEnv(t, func(c *Config, _ *queue.Options) { c.Router = flaky })
	e.dir.set("alice", 1)
	e.dir.set("bob", 1) // offline: the bell goes to the router
	alice := e.connect("alice", 1)
	alice.nextOf("QueueEmpty")
	if ack := alice.sendAndAck(sendTo(newClientID(), []byte("x"), dev("bob", 1))); ack.Error != nil {
		t.Fatal(ack.Error)
	}
	start := time.Now()
	waitUntil(t, "a failed ring", func() bool { return flaky.rings.Load() >= 1 })
	time.Sleep(2 * time.Second)
	rings := flaky.rings.Load()
	// 100 ms doubling: ~5 attempts in 2 s (±25% jitter); without backoff
	// there would be ~20.
	if max := int64(time.Since(start)/retryMin)/2 + 1; rings > max {
		t.Fatalf("%d rings in %v of failures, want at most %d (backoff)", rings, time.Since(start), max)
	}
	if rings < 3 {
		t.Fatalf("%d rings in %v, want retries", rings, time.Since(start))
	}
	if n := e.relay.kept.len(); n != 1 {
		t.Fatalf("%d devices kept, want 1", n)
	}
	flaky.fail.Store(false)
	waitUntil(t, "the kept bell rung", func() bool { return e.relay.kept.len() == 0 })
}

func TestKeptBellsMergeAndBound(t *testing.T) {
	k := newKeptBells()
	bob, carol := dev("bob", 1), dev("carol", 2)
	k.keep([]routing.Bell{{Device: bob, ServerID: 30}, {Device: carol, ServerID: 5}})
	k.keep([]routing.Bell{{Device: bob, ServerID: 10}, {Device: bob, ServerID: 20}})
	got := map[queue.Device]uint64{}
	for _, b := range k.take(10) {
		got[b.Device] = b.ServerID
	}
	if len(got) != 2 || got[bob] != 10 || got[carol] != 5 {
		t.Fatalf("took %v, want bob.1→10 (the lowest), carol.2→5", got)
	}
	if b := k.take(10); b != nil {
		t.Fatalf("took %v from an empty set", b)
	}

	bells := make([]routing.Bell, maxKeptBells+7)
	for i := range bells {
		bells[i] = routing.Bell{Device: dev(fmt.Sprintf("u%d", i), 1), ServerID: uint64(i + 1)}
	}
	if dropped := k.keep(bells); dropped != 7 {
		t.Fatalf("dropped %d beyond the bound, want 7", dropped)
	}
	// A device already kept still merges at the bound.
	if dropped := k.keep([]routing.Bell{{Device: dev("u0", 1), ServerID: 0}}); dropped != 0 {
		t.Fatalf("a kept device's bell was dropped at the bound")
	}
	n := 0
	for b := k.take(retryBatch); b != nil; b = k.take(retryBatch) {
		if len(b) > retryBatch {
			t.Fatalf("took %d, more than the batch %d", len(b), retryBatch)
		}
		n += len(b)
	}
	if n != maxKeptBells {
		t.Fatalf("took %d bells in all, want %d", n, maxKeptBells)
	}
}
