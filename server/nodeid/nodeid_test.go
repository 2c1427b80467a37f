package nodeid

import (
	"context"
	"errors"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/hushchat/hush/internal/testenv"
	"github.com/hushchat/hush/server/routing/redisroute/redistest"
)

var ctx = context.Background()

// seasoned marks the prefix's lease history as present, as it is in a
// deployment that has run before; leases then need not wait out a
// possible forgotten holder.
func seasoned(t *testing.T, c redis.UniversalClient, prefix string) {
	t.Helper()
	if err := c.Set(ctx, epochKey(prefix), "1", 0).Err(); err != nil {
		t.Fatal(err)
	}
}

func acquire(t *testing.T, c redis.UniversalClient, o Options) *Lease {
	t.Helper()
	l, err := Acquire(ctx, c, o)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close(ctx) })
	return l
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func TestStatic(t *testing.T) {
	s, err := NewStatic(1023)
	if err != nil || s.ID() != 1023 || s.Valid() != nil {
		t.Fatalf("NewStatic(1023) = %v, %v", s, err)
	}
	for _, bad := range []int64{-1, 1024} {
		if _, err := NewStatic(bad); err == nil {
			t.Errorf("NewStatic(%d) accepted", bad)
		}
	}
	s.Close(ctx)
	if !errors.Is(s.Valid(), ErrClosed) {
		t.Fatal("closed static id still valid")
	}
	select {
	case <-s.Lost():
	default:
		t.Fatal("Lost not closed by Close")
	}
	var _ Provider = s
}

// Fifty relays starting at once get fifty different ids; the fifty-first
// finds none free in a range of fifty.
func TestRedisConcurrentLeasesDistinct(t *testing.T) {
	r := testenv.NeedRedis(t)
	c := r.Client(t)
	seasoned(t, c, r.Prefix)
	o := Options{Prefix: r.Prefix, Min: 100, Max: 149, Lease: 5 * time.Second, MaxClockSkew: 100 * time.Millisecond}
	leases := make([]*Lease, 50)
	var wg sync.WaitGroup
	for i := range leases {
		wg.Go(func() {
			l, err := Acquire(ctx, c, o)
			if err != nil {
				t.Error(err)
				return
			}
			leases[i] = l
		})
	}
	wg.Wait()
	if t.Failed() {
		t.FailNow()
	}
	seen := make(map[int64]bool)
	for _, l := range leases {
		t.Cleanup(func() { l.Close(ctx) })
		if l.ID() < 100 || l.ID() > 149 || seen[l.ID()] {
			t.Fatalf("id %d duplicated or out of range; ids so far %v", l.ID(), seen)
		}
		seen[l.ID()] = true
		if err := l.Valid(); err != nil {
			t.Fatalf("fresh lease of %d: %v", l.ID(), err)
		}
	}
	if _, err := Acquire(ctx, c, o); !errors.Is(err, ErrNoFreeID) {
		t.Fatalf("51st lease in a range of 50: %v, want ErrNoFreeID", err)
	}
}

// A holder keeps its id past several lease periods by renewing it.
func TestRedisLeaseRenewed(t *testing.T) {
	r := testenv.NeedRedis(t)
	c := r.Client(t)
	seasoned(t, c, r.Prefix)
	o := Options{Prefix: r.Prefix, Min: 5, Max: 5, Lease: 150 * time.Millisecond, MaxClockSkew: 50 * time.Millisecond}
	l := acquire(t, c, o)
	time.Sleep(600 * time.Millisecond)
	if err := l.Valid(); err != nil {
		t.Fatalf("after 4 leases: %v", err)
	}
	if _, err := Acquire(ctx, c, o); !errors.Is(err, ErrNoFreeID) {
		t.Fatalf("second lease of a renewed id: %v, want ErrNoFreeID", err)
	}
}

// A crashed holder (no renewal, no release) stops being valid after its
// lease, and its id becomes available again once the key expires — not
// before.
func TestRedisExpiredLeaseAvailable(t *testing.T) {
	r := testenv.NeedRedis(t)
	c := r.Client(t)
	seasoned(t, c, r.Prefix)
	o := Options{Prefix: r.Prefix, Min: 7, Max: 7, Lease: 300 * time.Millisecond, MaxClockSkew: 200 * time.Millisecond}
	a := acquire(t, c, o)
	a.halt()
	if _, err := Acquire(ctx, c, o); !errors.Is(err, ErrNoFreeID) {
		t.Fatalf("lease of a live id: %v, want ErrNoFreeID", err)
	}
	waitFor(t, "the halted holder to be suspended", func() bool { return errors.Is(a.Valid(), ErrSuspended) })
	// The holder is suspended before its key expires: the key outlives
	// the validity by MaxClockSkew.
	if n, err := c.Exists(ctx, a.key).Result(); err != nil || n != 1 {
		t.Fatalf("key gone as soon as the holder stopped (%d, %v); it must outlive it by the skew", n, err)
	}
	var b *Lease
	waitFor(t, "id 7 to be leased again", func() bool {
		var err error
		b, err = Acquire(ctx, c, o)
		return err == nil
	})
	t.Cleanup(func() { b.Close(ctx) })
	if b.ID() != 7 || b.Valid() != nil {
		t.Fatalf("new lease %d: %v", b.ID(), b.Valid())
	}
}

// A released id is kept from the next holder for MaxClockSkew.
func TestRedisReleaseTombstone(t *testing.T) {
	r := testenv.NeedRedis(t)
	c := r.Client(t)
	seasoned(t, c, r.Prefix)
	o := Options{Prefix: r.Prefix, Min: 9, Max: 9, Lease: 10 * time.Second, MaxClockSkew: 300 * time.Millisecond}
	a := acquire(t, c, o)
	if err := a.Close(ctx); err != nil {
		t.Fatal(err)
	}
	if !errors.Is(a.Valid(), ErrClosed) {
		t.Fatalf("released lease: %v", a.Valid())
	}
	if _, err := Acquire(ctx, c, o); !errors.Is(err, ErrNoFreeID) {
		t.Fatalf("lease right after release: %v, want ErrNoFreeID (tombstone)", err)
	}
	pttl, err := c.PTTL(ctx, a.key).Result()
	if err != nil || pttl <= 0 || pttl > 301*time.Millisecond {
		t.Fatalf("tombstone PTTL %v, %v; want (0, skew]", pttl, err)
	}
	var b *Lease
	waitFor(t, "id 9 free again", func() bool {
		b, err = Acquire(ctx, c, o)
		return err == nil
	})
	b.Close(ctx)
}

// A holder whose key was taken over reports ErrLost and closes Lost().
func TestRedisLostLeaseReported(t *testing.T) {
	r := testenv.NeedRedis(t)
	c := r.Client(t)
	seasoned(t, c, r.Prefix)
	a := acquire(t, c, Options{Prefix: r.Prefix, Min: 3, Max: 3, Lease: 150 * time.Millisecond, MaxClockSkew: 50 * time.Millisecond})
	if err := c.Set(ctx, a.key, "someone-else", time.Minute).Err(); err != nil {
		t.Fatal(err)
	}
	select {
	case <-a.Lost():
	case <-time.After(10 * time.Second):
		t.Fatal("lost lease never reported")
	}
	if !errors.Is(a.Valid(), ErrLost) {
		t.Fatalf("Valid = %v, want ErrLost", a.Valid())
	}
	if err := a.Wait(ctx); !errors.Is(err, ErrLost) {
		t.Fatalf("Wait = %v, want ErrLost", err)
	}
	// Close must not delete the new holder's key.
	a.Close(ctx)
	if v, _ := c.Get(ctx, a.key).Result(); v != "someone-else" {
		t.Fatalf("Close of a lost lease changed the key to %q", v)
	}
}

// On a Redis without lease history (first start, or data lost) a lease
// waits out one lease before it is valid.
func TestRedisFreshEpochWaits(t *testing.T) {
	r := testenv.NeedRedis(t)
	c := r.Client(t)
	l := acquire(t, c, Options{Prefix: r.Prefix, Lease: 200 * time.Millisecond, MaxClockSkew: 100 * time.Millisecond})
	if !errors.Is(l.Valid(), ErrWarming) {
		t.Fatalf("lease on a fresh Redis: %v, want ErrWarming", l.Valid())
	}
	wctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	if err := l.Wait(wctx); err != nil {
		t.Fatal(err)
	}
	// Later leases find the history and need not wait.
	m := acquire(t, c, Options{Prefix: r.Prefix, Lease: 200 * time.Millisecond, MaxClockSkew: 100 * time.Millisecond})
	if err := m.Valid(); err != nil || m.ID() == l.ID() {
		t.Fatalf("second lease: id %d (first %d), %v", m.ID(), l.ID(), err)
	}
}

func TestOptionsValidation(t *testing.T) {
	r := testenv.NeedRedis(t)
	c := r.Client(t)
	for _, o := range []Options{
		{Min: 5, Max: 4},
		{Min: -1, Max: 3},
		{Max: 1024},
		{Lease: time.Millisecond},
		{Owner: "released:x"},
	} {
		o.Prefix = r.Prefix
		if _, err := Acquire(ctx, c, o); err == nil {
			t.Errorf("Acquire(%+v) accepted", o)
		}
	}
}

// Redis killed under a holder: it suspends once its lease passes, and
// resumes when Redis is back. Killed and restarted within one lease, a
// holder in good standing re-creates its key and never stops.
func TestRedisFailoverSuspendsAndResumes(t *testing.T) {
	srv := redistest.Start(t)
	c := redis.NewClient(&redis.Options{Addr: srv.Addr, ContextTimeoutEnabled: true, MaxRetries: -1, DialTimeout: 200 * time.Millisecond})
	t.Cleanup(func() { c.Close() })
	seasoned(t, c, "hush:")
	o := Options{Prefix: "hush:", Lease: time.Second, MaxClockSkew: 100 * time.Millisecond, Timeout: 200 * time.Millisecond}
	l := acquire(t, c, o)
	id := l.ID()

	srv.Kill()
	waitFor(t, "suspension", func() bool { return errors.Is(l.Valid(), ErrSuspended) })
	srv.Restart() // empty: no lease, no history
	// Not in good standing and no history: the holder re-takes its id but
	// waits out one lease, since someone else may have held it.
	waitFor(t, "the lease re-created", func() bool {
		v, _ := c.Get(ctx, leaseKey("hush:", id)).Result()
		return v == l.o.Owner
	})
	if err := l.Valid(); !errors.Is(err, ErrWarming) {
		t.Fatalf("re-taken after a data loss while suspended: %v, want ErrWarming", err)
	}
	wctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	if err := l.Wait(wctx); err != nil {
		t.Fatalf("after restart: %v", err)
	}

	// A quick restart, within the lease: no suspension needed.
	srv.Kill()
	srv.Restart()
	waitFor(t, "the key re-created", func() bool {
		v, _ := c.Get(ctx, leaseKey("hush:", id)).Result()
		return v == l.o.Owner
	})
	if err := l.Valid(); err != nil {
		t.Fatalf("holder in good standing after a quick restart: %v", err)
	}
	if l.ID() != id {
		t.Fatal("id changed")
	}
}

// On a Redis Cluster the lease keys share a hash tag, so the acquire
// script (which touches all of them) runs on one shard.
func TestRedisClusterLeases(t *testing.T) {
	addrs := redistest.StartCluster(t, 3)
	c := redis.NewClusterClient(&redis.ClusterOptions{Addrs: addrs})
	t.Cleanup(func() { c.Close() })
	seasoned(t, c, "hush:")
	seen := make(map[int64]bool)
	for range 5 {
		l := acquire(t, c, Options{Prefix: "hush:", Lease: 5 * time.Second})
		if seen[l.ID()] || l.Valid() != nil {
			t.Fatalf("lease %d: duplicate or invalid (%v)", l.ID(), l.Valid())
		}
		seen[l.ID()] = true
	}
}
