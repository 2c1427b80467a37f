package redisroute

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/hushchat/hush/internal/testenv"
	"github.com/hushchat/hush/server/queue"
	"github.com/hushchat/hush/server/routing"
	"github.com/hushchat/hush/server/routing/redisroute/redistest"
)

// fastOptions make outages and refreshes happen within a test's patience.
func fastOptions(prefix, node string) Options {
	return Options{
		Prefix:          prefix,
		Node:            node,
		RegistrationTTL: 3 * time.Second,
		RefreshInterval: 200 * time.Millisecond,
		Timeout:         300 * time.Millisecond,
		HealthInterval:  100 * time.Millisecond,
		PollInterval:    250 * time.Millisecond,
	}
}

func startRouter(t testing.TB, c redis.UniversalClient, o Options) *Router {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	r, err := New(ctx, c, o)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { r.Close() })
	return r
}

func redisCluster(c redis.UniversalClient, prefix string) newCluster {
	return func(t *testing.T, n int) ([]routing.Router, []*recorder) {
		var rs []routing.Router
		var hs []*recorder
		for i := range n {
			r := startRouter(t, c, fastOptions(prefix, fmt.Sprint("node", i)))
			h := newRecorder()
			r.Subscribe(h)
			rs = append(rs, r)
			hs = append(hs, h)
		}
		return rs, hs
	}
}

func TestRedisContractSingleNode(t *testing.T) {
	r := testenv.NeedRedis(t)
	contractSingleNode(t, redisCluster(r.Client(t), r.Prefix))
}

func TestRedisContractCluster(t *testing.T) {
	r := testenv.NeedRedis(t)
	contractCluster(t, redisCluster(r.Client(t), r.Prefix))
}

// The same contract on a three-shard Redis Cluster: lookups are pipelined
// per shard and bells travel over sharded pub/sub (SSUBSCRIBE/SPUBLISH).
func TestRedisClusterModeContract(t *testing.T) {
	addrs := redistest.StartCluster(t, 3)
	c, err := NewClient(addrs, ClientOptions{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	if _, ok := c.(*redis.ClusterClient); !ok {
		t.Fatalf("NewClient with %d addresses returned %T, want a cluster client", len(addrs), c)
	}
	contractCluster(t, redisCluster(c, "hush:"))
	contractSingleNode(t, redisCluster(c, "hush1:"))
	if _, err := New(context.Background(), c, Options{Prefix: "{hush}:"}); err == nil {
		t.Fatal("a hash-tagged prefix was accepted on a cluster")
	}
}

// A registration outlives its TTL while the device stays attached: the
// router refreshes it.
func TestRedisRegistrationRefreshed(t *testing.T) {
	r := testenv.NeedRedis(t)
	c := r.Client(t)
	o := fastOptions(r.Prefix, "a")
	o.RegistrationTTL, o.RefreshInterval = 300*time.Millisecond, 80*time.Millisecond
	a := startRouter(t, c, o)
	a.Subscribe(newRecorder())
	o.Node = "b"
	b := startRouter(t, c, o)
	ctx := context.Background()
	if err := a.Attach(ctx, alice1, 1); err != nil {
		t.Fatal(err)
	}
	time.Sleep(time.Second) // more than three TTLs
	got, err := b.Ring(ctx, []routing.Bell{{Device: alice1}})
	if err != nil || !got[0] {
		t.Fatalf("after 3 TTLs attached: Ring = %v, %v; want attached", got, err)
	}
	pttl, err := c.PTTL(ctx, a.key(alice1)).Result()
	if err != nil || pttl <= 0 {
		t.Fatalf("registration PTTL = %v, %v; want a TTL", pttl, err)
	}
}

// A lost eviction (pub/sub is at-most-once) is made up by the refresh: the
// old node sees another session in the key and evicts its own.
func TestRedisRefreshEvictsSupersededSession(t *testing.T) {
	r := testenv.NeedRedis(t)
	c := r.Client(t)
	a := startRouter(t, c, fastOptions(r.Prefix, "a"))
	h := newRecorder()
	a.Subscribe(h)
	ctx := context.Background()
	if err := a.Attach(ctx, alice1, 10); err != nil {
		t.Fatal(err)
	}
	// Another node took the device over, and its eviction message never
	// arrived.
	if err := c.Set(ctx, a.key(alice1), regValue(11, "elsewhere"), time.Minute).Err(); err != nil {
		t.Fatal(err)
	}
	h.waitFor(t, "eviction of session 10", func() bool { return h.hasEviction(alice1, 10) })
	if v, _ := c.Get(ctx, a.key(alice1)).Result(); v != regValue(11, "elsewhere") {
		t.Fatalf("refresh overwrote the newer registration: %q", v)
	}
}

// A device registered to a node that no longer listens (it crashed) is
// reported offline at once, and the stale registration is removed — on
// both Ring paths (one bell: a script; several: lookup, then publish).
func TestRedisDeadNodeIsOffline(t *testing.T) {
	r := testenv.NeedRedis(t)
	c := r.Client(t)
	a := startRouter(t, c, fastOptions(r.Prefix, "a"))
	ctx := context.Background()
	ghost := regValue(7, "crashed")
	for round, bells := range [][]routing.Bell{
		{{Device: bob1, ServerID: 1}},
		{{Device: bob1, ServerID: 2}, {Device: carol1, ServerID: 3}},
	} {
		if err := c.Set(ctx, a.key(bob1), ghost, time.Minute).Err(); err != nil {
			t.Fatal(err)
		}
		got, err := a.Ring(ctx, bells)
		if err != nil || slices.Contains(got, true) {
			t.Fatalf("round %d: Ring to a dead node's device = %v, %v; want offline", round, got, err)
		}
		deadline := time.Now().Add(10 * time.Second)
		for {
			n, err := c.Exists(ctx, a.key(bob1)).Result()
			if err != nil {
				t.Fatal(err)
			}
			// The counter moves once the delete's answer is in.
			if n == 0 && a.Stats().StaleDeleted == uint64(round+1) {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("round %d: stale registration not removed (%d keys left, StaleDeleted %d)", round, n, a.Stats().StaleDeleted)
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
}

// Close removes the node's registrations: its devices are offline at once.
func TestRedisCloseRemovesRegistrations(t *testing.T) {
	r := testenv.NeedRedis(t)
	c := r.Client(t)
	a := startRouter(t, c, fastOptions(r.Prefix, "a"))
	b := startRouter(t, c, fastOptions(r.Prefix, "b"))
	ctx := context.Background()
	a.Attach(ctx, alice1, 1)
	a.Attach(ctx, bob1, 2)
	if err := a.Close(); err != nil {
		t.Fatal(err)
	}
	n, err := c.Exists(ctx, a.key(alice1), a.key(bob1)).Result()
	if err != nil || n != 0 {
		t.Fatalf("%d registrations left after Close (%v)", n, err)
	}
	got, err := b.Ring(ctx, []routing.Bell{{Device: alice1}, {Device: bob1}})
	if err != nil || !slices.Equal(got, []bool{false, false}) {
		t.Fatalf("Ring after the node closed = %v, %v", got, err)
	}
}

// Many concurrent Attaches of one device on several nodes leave exactly
// one session registered, and every other one evicted.
func TestRedisConcurrentAttachOneWinner(t *testing.T) {
	r := testenv.NeedRedis(t)
	c := r.Client(t)
	var rs []*Router
	var hs []*recorder
	for i := range 3 {
		rt := startRouter(t, c, fastOptions(r.Prefix, fmt.Sprint("n", i)))
		h := newRecorder()
		rt.Subscribe(h)
		rs, hs = append(rs, rt), append(hs, h)
	}
	ctx := context.Background()
	var wg sync.WaitGroup
	for i := range 30 {
		wg.Go(func() {
			if err := rs[i%3].Attach(ctx, alice1, uint64(1000+i)); err != nil {
				t.Error(err)
			}
		})
	}
	wg.Wait()
	v, err := c.Get(ctx, rs[0].key(alice1)).Result()
	if err != nil {
		t.Fatal(err)
	}
	winner, node, err := parseRegValue(v)
	if err != nil {
		t.Fatal(err)
	}
	evicted := func() map[uint64]bool {
		m := make(map[uint64]bool)
		for _, h := range hs {
			h.mu.Lock()
			for _, e := range h.evicted {
				m[e.Session] = true
			}
			h.mu.Unlock()
		}
		return m
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		ev := evicted()
		missing := 0
		for i := range 30 {
			if s := uint64(1000 + i); s != winner && !ev[s] {
				missing++
			}
		}
		if ev[winner] {
			t.Fatalf("the registered session %d (on %s) was evicted", winner, node)
		}
		if missing == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d superseded sessions never evicted", missing)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// Ring never waits on an unreachable Redis beyond its timeout, and reports
// the failure.
func TestRedisRingFailsFastWhenUnreachable(t *testing.T) {
	srv := redistest.Start(t)
	c, _ := NewClient([]string{srv.Addr}, ClientOptions{Timeout: 300 * time.Millisecond})
	t.Cleanup(func() { c.Close() })
	a := startRouter(t, c, fastOptions("hush:", "a"))
	srv.Kill()
	done := make(chan error, 1)
	go func() {
		_, err := a.Ring(context.Background(), []routing.Bell{{Device: alice1}})
		done <- err
	}()
	select {
	case err := <-done:
		if err == nil {
			t.Fatal("Ring with Redis down succeeded")
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Ring blocked with Redis down")
	}
	deadline := time.Now().Add(10 * time.Second)
	for a.Healthy() {
		if time.Now().After(deadline) {
			t.Fatal("router still healthy with Redis down")
		}
		time.Sleep(10 * time.Millisecond)
	}
	if _, err := a.Ring(context.Background(), []routing.Bell{{Device: alice1}}); !errors.Is(err, ErrUnavailable) {
		t.Fatalf("Ring while unhealthy: %v, want ErrUnavailable", err)
	}
	if err := a.Attach(context.Background(), bob1, 5); err != nil {
		t.Fatalf("Attach while Redis is down: %v; want the session kept locally", err)
	}
}

func TestNewValidation(t *testing.T) {
	r := testenv.NeedRedis(t)
	c := r.Client(t)
	ctx := context.Background()
	for _, o := range []Options{
		{Node: "has space"},
		{Node: "x", RegistrationTTL: time.Second, RefreshInterval: time.Second},
	} {
		if _, err := New(ctx, c, o); err == nil {
			t.Errorf("New(%+v) accepted", o)
		}
	}
	if _, err := New(ctx, nil, Options{}); err == nil {
		t.Error("nil client accepted")
	}
	down := redis.NewClient(&redis.Options{Addr: "127.0.0.1:1", MaxRetries: -1})
	defer down.Close()
	if _, err := New(ctx, down, Options{}); err == nil {
		t.Error("New with Redis unreachable succeeded")
	}
}

func TestParseAddrs(t *testing.T) {
	got, err := ParseAddrs("10.0.0.1:6379, 10.0.0.2:6380")
	if err != nil || !slices.Equal(got, []string{"10.0.0.1:6379", "10.0.0.2:6380"}) {
		t.Fatalf("ParseAddrs = %v, %v", got, err)
	}
	for _, bad := range []string{"", "host", ":6379", "h:0", "h:99999", "a:1,,b:2"} {
		if _, err := ParseAddrs(bad); err == nil {
			t.Errorf("ParseAddrs(%q) accepted", bad)
		}
	}
}

var _ = queue.Device{}
