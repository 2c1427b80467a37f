package redisroute

import (
	"context"
	"errors"
	"net"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/hushchat/hush/server/queue"
	"github.com/hushchat/hush/server/routing"
	"github.com/hushchat/hush/server/routing/redisroute/redistest"
)

type healthLog struct {
	mu sync.Mutex
	v  []bool
}

func (h *healthLog) add(v bool) { h.mu.Lock(); h.v = append(h.v, v); h.mu.Unlock() }
func (h *healthLog) get() []bool {
	h.mu.Lock()
	defer h.mu.Unlock()
	return slices.Clone(h.v)
}

func waitUntil(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// within runs f and fails the test if it has not returned after limit: the
// router must never block its caller on a dead Redis.
func within[T any](t *testing.T, what string, limit time.Duration, f func() T) T {
	t.Helper()
	done := make(chan T, 1)
	go func() { done <- f() }()
	select {
	case v := <-done:
		return v
	case <-time.After(limit):
		t.Fatalf("%s blocked for %v with Redis down", what, limit)
		panic("unreachable")
	}
}

// TestRedisFailoverKillRestart kills the Redis server under two routers
// and starts an empty one on the same port: nothing blocks, Healthy
// flips, attached devices are polled while Redis is away, every attached
// device is registered again afterwards (the newer session winning a
// device that moved during the outage), and bells flow again over the
// resubscribed channels.
func TestRedisFailoverKillRestart(t *testing.T) {
	srv := redistest.Start(t)
	client := func() redis.UniversalClient {
		c, err := NewClient([]string{srv.Addr}, ClientOptions{Timeout: 300 * time.Millisecond})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		return c
	}
	var healthA, healthB healthLog
	oa := fastOptions("hush:", "a")
	oa.OnHealth = healthA.add
	ob := fastOptions("hush:", "b")
	ob.OnHealth = healthB.add
	a := startRouter(t, client(), oa)
	b := startRouter(t, client(), ob)
	ha, hb := newRecorder(), newRecorder()
	a.Subscribe(ha)
	b.Subscribe(hb)
	ctx := context.Background()
	d1, d2, d3 := alice1, bob1, alice2
	for _, x := range []struct {
		r   *Router
		dev queue.Device
		s   uint64
	}{{a, d1, 1}, {b, d2, 2}, {a, carol1, 10}} {
		if err := x.r.Attach(ctx, x.dev, x.s); err != nil {
			t.Fatal(err)
		}
	}
	if got, err := a.Ring(ctx, []routing.Bell{{Device: d2, ServerID: 100}}); err != nil || !got[0] {
		t.Fatalf("before the outage: Ring = %v, %v", got, err)
	}
	hb.waitFor(t, "bell 100", func() bool { return hb.hasBell(d2, 100) })

	srv.Kill()

	waitUntil(t, "both routers unhealthy", func() bool { return !a.Healthy() && !b.Healthy() })
	err := within(t, "Ring", 5*time.Second, func() error {
		_, err := a.Ring(ctx, []routing.Bell{{Device: d2, ServerID: 101}})
		return err
	})
	if !errors.Is(err, ErrUnavailable) {
		t.Fatalf("Ring during the outage: %v, want ErrUnavailable", err)
	}
	// Fallback polling: each node rings its own attached devices.
	hb.take()
	hb.waitFor(t, "a polling bell for bob1 on B", func() bool { return hb.hasBell(d2, 0) })
	ha.waitFor(t, "a polling bell for alice1 on A", func() bool { return ha.hasBell(d1, 0) })
	// Connections come and go during the outage: alice2 connects to B,
	// alice1 leaves A, carol1 moves from A to B.
	for _, step := range []struct {
		name string
		f    func() error
	}{
		{"Attach alice2 on B", func() error { return b.Attach(ctx, d3, 3) }},
		{"Detach alice1 on A", func() error { return a.Detach(ctx, d1, 1) }},
		{"Attach carol1 on B", func() error { return b.Attach(ctx, carol1, 11) }},
	} {
		if err := within(t, step.name, 5*time.Second, step.f); err != nil {
			t.Fatalf("%s during the outage: %v", step.name, err)
		}
	}

	srv.Restart() // empty: every registration is gone

	waitUntil(t, "both routers healthy again", func() bool { return a.Healthy() && b.Healthy() })
	for name, h := range map[string]*healthLog{"A": &healthA, "B": &healthB} {
		if got := h.get(); !slices.Equal(got, []bool{true, false, true}) { // up at New, down, up
			t.Errorf("%s OnHealth calls %v, want [true false true]", name, got)
		}
	}
	// A lost carol1 to B's newer session.
	ha.waitFor(t, "eviction of carol1/10 on A", func() bool { return ha.hasEviction(carol1, 10) })
	rdb := redis.NewClient(&redis.Options{Addr: srv.Addr})
	defer rdb.Close()
	want := map[queue.Device]string{d1: "", d2: regValue(2, "b"), d3: regValue(3, "b"), carol1: regValue(11, "b")}
	waitUntil(t, "registrations restored", func() bool {
		for dev, v := range want {
			got, err := rdb.Get(ctx, a.key(dev)).Result()
			if err != nil && !errors.Is(err, redis.Nil) {
				return false
			}
			if got != v {
				return false
			}
		}
		return true
	})
	hb.take()
	got, err := a.Ring(ctx, []routing.Bell{{Device: d2, ServerID: 102}, {Device: d3, ServerID: 103}, {Device: carol1, ServerID: 104}, {Device: d1, ServerID: 105}})
	if err != nil || !slices.Equal(got, []bool{true, true, true, false}) {
		t.Fatalf("after recovery: Ring = %v, %v; want [true true true false]", got, err)
	}
	hb.waitFor(t, "bells 102-104 on B", func() bool {
		return hb.hasBell(d2, 102) && hb.hasBell(d3, 103) && hb.hasBell(carol1, 104)
	})
	if sa, sb := a.Stats(), b.Stats(); sa.Recoveries < 1 || sb.Recoveries < 1 || sb.Reregistrations < 1 || sb.BellsPolled < 1 {
		t.Fatalf("stats A %+v, B %+v: want recoveries, re-registrations and polls", sa, sb)
	}
}

// TestRedisSubscriptionDroppedAlone: only the pub/sub connection is killed
// (CLIENT KILL TYPE pubsub); the router resubscribes, re-registers and
// rings its attached devices once, since bells may have been lost meanwhile.
func TestRedisSubscriptionDroppedAlone(t *testing.T) {
	srv := redistest.Start(t)
	c, _ := NewClient([]string{srv.Addr}, ClientOptions{Timeout: 300 * time.Millisecond})
	t.Cleanup(func() { c.Close() })
	a := startRouter(t, c, fastOptions("hush:", "a"))
	b := startRouter(t, c, fastOptions("hush:", "b"))
	hb := newRecorder()
	b.Subscribe(hb)
	ctx := context.Background()
	if err := b.Attach(ctx, bob1, 1); err != nil {
		t.Fatal(err)
	}
	before := b.Stats().Recoveries
	if err := c.Do(ctx, "CLIENT", "KILL", "TYPE", "pubsub").Err(); err != nil {
		t.Fatal(err)
	}
	waitUntil(t, "B recovered", func() bool { return b.Stats().Recoveries > before && b.Healthy() })
	hb.waitFor(t, "catch-up bell for bob1", func() bool { return hb.hasBell(bob1, 0) })
	waitUntil(t, "A healthy", a.Healthy)
	got, err := a.Ring(ctx, []routing.Bell{{Device: bob1, ServerID: 7}})
	if err != nil || !got[0] {
		t.Fatalf("Ring after resubscription = %v, %v", got, err)
	}
	hb.waitFor(t, "bell 7", func() bool { return hb.hasBell(bob1, 7) })
}

// blackhole is a TCP proxy that can go silent like a partitioned network:
// while cut, no byte passes in either direction and no connection is
// closed; connections that lived through a cut stay dead afterwards.
type blackhole struct {
	l      net.Listener
	target string
	mu     sync.Mutex
	cut    bool
	gen    int // incremented by every cut; connections of older generations are dead
}

func newBlackhole(t *testing.T, target string) *blackhole {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &blackhole{l: l, target: target}
	var conns sync.WaitGroup
	var open []net.Conn
	var openMu sync.Mutex
	t.Cleanup(func() {
		l.Close()
		openMu.Lock()
		for _, c := range open {
			c.Close()
		}
		openMu.Unlock()
		conns.Wait()
	})
	go func() {
		for {
			in, err := l.Accept()
			if err != nil {
				return
			}
			out, err := net.Dial("tcp", target)
			if err != nil {
				in.Close()
				continue
			}
			openMu.Lock()
			open = append(open, in, out)
			openMu.Unlock()
			p.mu.Lock()
			gen := p.gen
			p.mu.Unlock()
			pipe := func(dst, src net.Conn) {
				defer conns.Done()
				buf := make([]byte, 32<<10)
				for {
					n, err := src.Read(buf)
					if err != nil {
						dst.Close()
						return
					}
					if p.passes(gen) {
						if _, err := dst.Write(buf[:n]); err != nil {
							return
						}
					}
				}
			}
			conns.Add(2)
			go pipe(out, in)
			go pipe(in, out)
		}
	}()
	return p
}

func (p *blackhole) passes(gen int) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	return !p.cut && gen == p.gen
}

func (p *blackhole) setCut(v bool) {
	p.mu.Lock()
	if v && !p.cut {
		p.gen++
	}
	p.cut = v
	p.mu.Unlock()
}

// TestRedisSilentPartition: the network to Redis goes silent without
// closing anything. Ring still returns within its timeout, the router
// turns unhealthy, and when the network is back it replaces its dead
// subscription connection — bells reach it again.
func TestRedisSilentPartition(t *testing.T) {
	srv := redistest.Start(t)
	p := newBlackhole(t, srv.Addr)
	cp, _ := NewClient([]string{p.l.Addr().String()}, ClientOptions{Timeout: 300 * time.Millisecond})
	t.Cleanup(func() { cp.Close() })
	direct, _ := NewClient([]string{srv.Addr}, ClientOptions{})
	t.Cleanup(func() { direct.Close() })
	a := startRouter(t, direct, fastOptions("hush:", "a"))
	b := startRouter(t, cp, fastOptions("hush:", "b"))
	hb := newRecorder()
	b.Subscribe(hb)
	ctx := context.Background()
	if err := b.Attach(ctx, bob1, 1); err != nil {
		t.Fatal(err)
	}

	p.setCut(true)
	within(t, "Ring", 5*time.Second, func() error {
		_, err := b.Ring(ctx, []routing.Bell{{Device: alice1}})
		return err
	})
	waitUntil(t, "B unhealthy", func() bool { return !b.Healthy() })
	p.setCut(false)
	waitUntil(t, "B healthy", b.Healthy)

	got, err := a.Ring(ctx, []routing.Bell{{Device: bob1, ServerID: 9}})
	if err != nil || !got[0] {
		t.Fatalf("Ring after the partition = %v, %v", got, err)
	}
	hb.waitFor(t, "bell 9 on B", func() bool { return hb.hasBell(bob1, 9) })
}
