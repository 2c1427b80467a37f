package redispresence

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/hushchat/hush/internal/testenv"
	"github.com/hushchat/hush/protocol"
	"github.com/hushchat/hush/server/presence"
	"github.com/hushchat/hush/server/queue"
	"github.com/hushchat/hush/server/routing/redisroute/redistest"
)

type clock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *clock) now() time.Time { c.mu.Lock(); defer c.mu.Unlock(); return c.t }
func (c *clock) add(d time.Duration) {
	c.mu.Lock()
	c.t = c.t.Add(d)
	c.mu.Unlock()
}

type events struct {
	mu sync.Mutex
	ev []presence.Event
}

func (e *events) add(ev presence.Event) { e.mu.Lock(); e.ev = append(e.ev, ev); e.mu.Unlock() }
func (e *events) take() []presence.Event {
	e.mu.Lock()
	defer e.mu.Unlock()
	out := e.ev
	e.ev = nil
	return out
}

var (
	ctx    = context.Background()
	alice1 = queue.Device{Account: "alice", ID: 1}
	alice2 = queue.Device{Account: "alice", ID: 2}
	bob1   = queue.Device{Account: "bob", ID: 1}
	eve1   = queue.Device{Account: "eve", ID: 1}
)

// env is one tracker under test, its fake clock, the events it delivered,
// and a way to make it notice accounts that went offline.
type env struct {
	m     presence.Tracker
	c     *clock
	ev    *events
	sweep func()
}

// newEnv builds a tracker on a fake clock with a 10 s online window.
type newEnv func(t *testing.T) env

// The contract tests are presence's Memory tests written against
// presence.Tracker; they run against presence.Memory and this package's
// Tracker alike, and could move to a shared presencetest package as they
// are.

func contractMutualConsent(t *testing.T, mk newEnv) {
	e := mk(t)
	m, ev := e.m, e.ev
	m.Heartbeat(ctx, "bob")
	ev.take()

	m.Subscribe(ctx, alice1, []string{"bob"})
	if got, _ := m.View(ctx, "alice", []string{"bob"}); len(got) != 0 {
		t.Fatalf("one-sided subscription revealed %+v", got)
	}
	m.Subscribe(ctx, eve1, []string{"bob"})
	if got, _ := m.View(ctx, "eve", []string{"bob"}); len(got) != 0 {
		t.Fatalf("stranger saw %+v", got)
	}
	ev.take()

	m.Subscribe(ctx, bob1, []string{"alice"})
	if got := ev.take(); !slices.Contains(got, presence.Event{Subject: "bob", Viewer: "alice"}) {
		t.Fatalf("consent change events %+v lack {bob→alice}", got)
	}
	got, err := m.View(ctx, "alice", []string{"bob", "eve"})
	if err != nil || len(got) != 1 || got[0].Account != "bob" || !got[0].Online || got[0].LastSeen.IsZero() {
		t.Fatalf("View = %+v, %v; want bob online with last-seen", got, err)
	}
	if got, _ := m.View(ctx, "eve", []string{"bob"}); len(got) != 0 {
		t.Fatalf("stranger saw %+v after alice's consent", got)
	}

	m.Subscribe(ctx, alice2, nil)
	if got, _ := m.View(ctx, "bob", []string{"alice"}); len(got) != 1 {
		t.Fatalf("bob lost alice after alice2's empty subscribe: %+v", got)
	}
	ev.take()
	m.Subscribe(ctx, alice1, nil)
	if got, _ := m.View(ctx, "bob", []string{"alice"}); len(got) != 0 {
		t.Fatalf("consent withdrawn but bob sees %+v", got)
	}
	if got := ev.take(); !slices.Contains(got, presence.Event{Subject: "alice", Viewer: "bob"}) {
		t.Fatalf("withdrawal events %+v lack {alice→bob}", got)
	}
	// Two devices of one account: the account follows while either does.
	m.Subscribe(ctx, alice1, []string{"bob"})
	m.Subscribe(ctx, alice2, []string{"bob"})
	m.Forget(ctx, alice1)
	if got, _ := m.View(ctx, "bob", []string{"alice"}); len(got) != 1 {
		t.Fatalf("alice2 still follows bob, yet bob sees %+v", got)
	}
	m.Forget(ctx, alice2)
	if got, _ := m.View(ctx, "bob", []string{"alice"}); len(got) != 0 {
		t.Fatalf("both of alice's devices forgotten, yet bob sees %+v", got)
	}
}

func contractOnlineOffline(t *testing.T, mk newEnv) {
	e := mk(t)
	m, c, ev := e.m, e.c, e.ev
	m.Heartbeat(ctx, "bob")
	if got := ev.take(); !slices.Equal(got, []presence.Event{{Subject: "bob"}}) {
		t.Fatalf("coming online: events %+v", got)
	}
	c.add(5 * time.Second)
	m.Heartbeat(ctx, "bob")
	if got := ev.take(); len(got) != 0 {
		t.Fatalf("a heartbeat while online emitted %+v", got)
	}
	seen := c.now()
	c.add(9 * time.Second)
	e.sweep()
	if got := ev.take(); len(got) != 0 {
		t.Fatalf("offline too early: %+v", got)
	}
	c.add(time.Second)
	e.sweep()
	if got := ev.take(); !slices.Equal(got, []presence.Event{{Subject: "bob"}}) {
		t.Fatalf("going offline: events %+v", got)
	}
	m.Subscribe(ctx, alice1, []string{"bob"})
	m.Subscribe(ctx, bob1, []string{"alice"})
	got, _ := m.View(ctx, "alice", []string{"bob"})
	if len(got) != 1 || got[0].Online || !got[0].LastSeen.Equal(seen) {
		t.Fatalf("View = %+v, want offline, last seen %v", got, seen)
	}
}

func contractHideLastSeen(t *testing.T, mk newEnv) {
	e := mk(t)
	m, ev := e.m, e.ev
	m.Subscribe(ctx, alice1, []string{"bob"})
	m.Subscribe(ctx, bob1, []string{"alice"})
	m.Heartbeat(ctx, "alice")
	m.Heartbeat(ctx, "bob")
	ev.take()

	m.SetHidden(ctx, "bob", true)
	if got := ev.take(); !slices.Equal(got, []presence.Event{{Subject: "bob"}, {Viewer: "bob"}}) {
		t.Fatalf("hiding events %+v", got)
	}
	a, _ := m.View(ctx, "alice", []string{"bob"})
	if len(a) != 1 || !a[0].Online || !a[0].Hidden || !a[0].LastSeen.IsZero() {
		t.Fatalf("alice's view of hiding bob = %+v", a)
	}
	b, _ := m.View(ctx, "bob", []string{"alice"})
	if len(b) != 1 || !b[0].Online || !b[0].Hidden || !b[0].LastSeen.IsZero() {
		t.Fatalf("hiding bob's view of alice = %+v", b)
	}
	m.SetHidden(ctx, "bob", false)
	b, _ = m.View(ctx, "bob", []string{"alice"})
	if b[0].Hidden || b[0].LastSeen.IsZero() {
		t.Fatalf("after unhiding: %+v", b)
	}
	ev.take()
	m.SetHidden(ctx, "bob", false)
	if got := ev.take(); len(got) != 0 {
		t.Fatalf("unchanged setting emitted %+v", got)
	}
}

func runContract(t *testing.T, mk newEnv) {
	t.Run("MutualConsent", func(t *testing.T) { contractMutualConsent(t, mk) })
	t.Run("OnlineOffline", func(t *testing.T) { contractOnlineOffline(t, mk) })
	t.Run("HideLastSeen", func(t *testing.T) { contractHideLastSeen(t, mk) })
}

func newClock() *clock { return &clock{t: time.Unix(1_700_000_000, 0)} }

// presence.Memory's expiry is internal; a fast expiry timer on the fake
// clock stands in for calling it.
func TestMemoryContract(t *testing.T) {
	runContract(t, func(t *testing.T) env {
		c := newClock()
		m := presence.NewMemory(presence.Options{OnlineWindow: 10 * time.Second, CheckInterval: time.Millisecond, Now: c.now})
		t.Cleanup(func() { m.Close() })
		var ev events
		m.Watch(ev.add)
		return env{m: m, c: c, ev: &ev, sweep: func() { time.Sleep(50 * time.Millisecond) }}
	})
}

func redisEnv(c redis.UniversalClient, prefix func(t *testing.T) string) newEnv {
	return func(t *testing.T) env {
		clk := newClock()
		tr, err := New(ctx, c, Options{Prefix: prefix(t), OnlineWindow: 10 * time.Second, CheckInterval: time.Hour, Now: clk.now})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { tr.Close() })
		var ev events
		tr.Watch(ev.add)
		return env{m: tr, c: clk, ev: &ev, sweep: func() {
			if err := tr.sweep(ctx); err != nil {
				t.Fatal(err)
			}
		}}
	}
}

func TestRedisContract(t *testing.T) {
	runContract(t, func(t *testing.T) env {
		r := testenv.NeedRedis(t)
		return redisEnv(r.Client(t), func(*testing.T) string { return r.Prefix })(t)
	})
}

// The same contract on a three-shard Redis Cluster (hash-tagged account
// keys, sharded pub/sub).
func TestRedisClusterContract(t *testing.T) {
	addrs := redistest.StartCluster(t, 3)
	c := redis.NewClusterClient(&redis.ClusterOptions{Addrs: addrs})
	t.Cleanup(func() { c.Close() })
	var n int
	runContract(t, redisEnv(c, func(*testing.T) string { n++; return fmt.Sprintf("t%d:", n) }))
}

// waitEvents waits until ev holds want (in any order), and checks nothing
// more arrives shortly after.
func waitEvents(t *testing.T, ev *events, want []presence.Event) {
	t.Helper()
	var got []presence.Event
	deadline := time.Now().Add(10 * time.Second)
	for {
		got = append(got, ev.take()...)
		if len(got) >= len(want) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("events %+v, want %+v", got, want)
		}
		time.Sleep(5 * time.Millisecond)
	}
	time.Sleep(100 * time.Millisecond)
	got = append(got, ev.take()...)
	key := func(e presence.Event) string { return e.Subject + "→" + e.Viewer }
	sort := func(s []presence.Event) []string {
		var k []string
		for _, e := range s {
			k = append(k, key(e))
		}
		slices.Sort(k)
		return k
	}
	if !slices.Equal(sort(got), sort(want)) {
		t.Fatalf("events %+v, want %+v", got, want)
	}
}

// Two relays on one Redis: state written through one is seen through the
// other, and each relay's watcher gets every event exactly once (its own
// locally, the other's over pub/sub) — offline events included, although
// both relays sweep.
func TestRedisAcrossNodes(t *testing.T) {
	r := testenv.NeedRedis(t)
	c := r.Client(t)
	clk := newClock()
	mk := func() (*Tracker, *events) {
		tr, err := New(ctx, c, Options{Prefix: r.Prefix, OnlineWindow: 10 * time.Second, CheckInterval: time.Hour, Now: clk.now})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { tr.Close() })
		var ev events
		tr.Watch(ev.add)
		return tr, &ev
	}
	a, evA := mk()
	b, evB := mk()

	a.Subscribe(ctx, alice1, []string{"bob"})
	b.Subscribe(ctx, bob1, []string{"alice"})
	b.Heartbeat(ctx, "bob")
	want := []presence.Event{{Subject: "alice", Viewer: "bob"}, {Subject: "bob", Viewer: "alice"}, {Subject: "bob"}}
	waitEvents(t, evA, want)
	waitEvents(t, evB, want)
	got, err := a.View(ctx, "alice", []string{"bob"})
	if err != nil || len(got) != 1 || !got[0].Online {
		t.Fatalf("A's view of bob (heartbeat on B) = %+v, %v", got, err)
	}

	clk.add(10 * time.Second)
	var wg sync.WaitGroup
	for _, tr := range []*Tracker{a, b} {
		wg.Go(func() {
			if err := tr.sweep(ctx); err != nil {
				t.Error(err)
			}
		})
	}
	wg.Wait()
	waitEvents(t, evA, []presence.Event{{Subject: "bob"}})
	waitEvents(t, evB, []presence.Event{{Subject: "bob"}})

	a.SetHidden(ctx, "alice", true)
	waitEvents(t, evB, []presence.Event{{Subject: "alice"}, {Viewer: "alice"}})
	got, _ = b.View(ctx, "bob", []string{"alice"})
	if len(got) != 1 || !got[0].Hidden {
		t.Fatalf("B's view of alice, hidden on A: %+v", got)
	}
}

// The sweep runs by itself and announces accounts going offline.
func TestRedisSweepTimer(t *testing.T) {
	r := testenv.NeedRedis(t)
	tr, err := New(ctx, r.Client(t), Options{Prefix: r.Prefix, OnlineWindow: 100 * time.Millisecond, CheckInterval: 20 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	defer tr.Close()
	gone := make(chan presence.Event, 4)
	tr.Watch(func(e presence.Event) { gone <- e })
	tr.Heartbeat(ctx, "bob")
	<-gone // online
	select {
	case e := <-gone:
		if e.Subject != "bob" {
			t.Fatalf("event %+v", e)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("no offline event")
	}
}

func TestRedisValidation(t *testing.T) {
	r := testenv.NeedRedis(t)
	tr, err := New(ctx, r.Client(t), Options{Prefix: r.Prefix})
	if err != nil {
		t.Fatal(err)
	}
	defer tr.Close()
	long := strings.Repeat("a", protocol.MaxAccountNameLen+1)
	if tr.Heartbeat(ctx, "") == nil || tr.Heartbeat(ctx, long) == nil {
		t.Error("bad heartbeat account accepted")
	}
	if tr.SetHidden(ctx, long, true) == nil {
		t.Error("bad hide account accepted")
	}
	if tr.Subscribe(ctx, alice1, []string{"bob", long}) == nil {
		t.Error("bad subscription accepted")
	}
	if tr.Subscribe(ctx, alice1, make([]string, protocol.MaxSubscriptions+1)) == nil {
		t.Error("oversized subscription accepted")
	}
	if _, err := tr.View(ctx, "", []string{"bob"}); err == nil {
		t.Error("empty viewer accepted")
	}
	// A refused subscription changed nothing.
	if n, _ := r.Client(t).Exists(ctx, tr.key("alice", "sub:1")).Result(); n != 0 {
		t.Error("refused subscription was stored")
	}
	down := redis.NewClient(&redis.Options{Addr: "127.0.0.1:1", MaxRetries: -1})
	defer down.Close()
	if _, err := New(ctx, down, Options{}); err == nil {
		t.Error("New with Redis unreachable succeeded")
	}
}

func TestEventsRoundTrip(t *testing.T) {
	origin := [originLen]byte{1, 2, 3, 4, 5, 6, 7, 8}
	var in []presence.Event
	for i := range maxEvents + 3 {
		in = append(in, presence.Event{Subject: fmt.Sprint("s", i), Viewer: []string{"", "v"}[i%2]})
	}
	var out []presence.Event
	for _, m := range encodeEvents(origin, in) {
		o, evs, err := decodeEvents(m)
		if err != nil || o != origin {
			t.Fatalf("decode: %v, origin %v", err, o)
		}
		out = append(out, evs...)
	}
	if !slices.Equal(in, out) {
		t.Fatal("events changed in a round trip")
	}
	good := encodeEvents(origin, in[:1])[0]
	for name, b := range map[string][]byte{
		"empty":     nil,
		"version":   append([]byte{2}, good[1:]...),
		"truncated": good[:len(good)-1],
		"trailing":  append(slices.Clone(good), 0),
		"zero":      append(append([]byte{wireVersion}, origin[:]...), 0),
		"blank":     append(append([]byte{wireVersion}, origin[:]...), 1, 0, 0),
		"long":      append(append(append([]byte{wireVersion}, origin[:]...), 1, 33), make([]byte, 33)...),
	} {
		if _, _, err := decodeEvents(b); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
}

func FuzzDecodeEvents(f *testing.F) {
	f.Add(encodeEvents([originLen]byte{9}, []presence.Event{{Subject: "bob"}, {Viewer: "alice"}, {Subject: "a", Viewer: "b"}})[0])
	f.Fuzz(func(t *testing.T, b []byte) {
		o, evs, err := decodeEvents(b)
		if err != nil {
			return
		}
		again := encodeEvents(o, evs)
		if len(again) != 1 {
			t.Fatalf("%d events re-encode into %d messages", len(evs), len(again))
		}
		o2, evs2, err := decodeEvents(again[0])
		if err != nil || o2 != o || !slices.Equal(evs, evs2) {
			t.Fatalf("re-encoded message decodes differently: %v", err)
		}
	})
}

func BenchmarkHeartbeat(b *testing.B) {
	r := testenv.NeedRedis(b)
	tr, err := New(ctx, r.Client(b), Options{Prefix: r.Prefix})
	if err != nil {
		b.Fatal(err)
	}
	defer tr.Close()
	for i := 0; b.Loop(); i++ {
		if err := tr.Heartbeat(ctx, fmt.Sprint("user", i%1000)); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkView(b *testing.B) {
	r := testenv.NeedRedis(b)
	tr, err := New(ctx, r.Client(b), Options{Prefix: r.Prefix})
	if err != nil {
		b.Fatal(err)
	}
	defer tr.Close()
	var contacts []string
	for i := range 50 {
		a := fmt.Sprint("user", i)
		contacts = append(contacts, a)
		tr.Subscribe(ctx, queue.Device{Account: a, ID: 1}, []string{"viewer"})
		tr.Heartbeat(ctx, a)
	}
	tr.Subscribe(ctx, queue.Device{Account: "viewer", ID: 1}, contacts)
	b.Run("1-subject", func(b *testing.B) {
		for i := 0; b.Loop(); i++ {
			if _, err := tr.View(ctx, "viewer", contacts[i%50:i%50+1]); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("50-subjects", func(b *testing.B) {
		for b.Loop() {
			if got, err := tr.View(ctx, "viewer", contacts); err != nil || len(got) != 50 {
				b.Fatal(len(got), err)
			}
		}
	})
}
