package redislimit

import (
	"context"
	"fmt"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/hushchat/hush/internal/testenv"
	"github.com/hushchat/hush/keyserver/ratelimit"
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
func newClock() *clock { return &clock{t: time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)} }

func allow(t *testing.T, l ratelimit.Limiter, key string) (bool, time.Duration) {
	t.Helper()
	ok, wait, err := l.Allow(context.Background(), key)
	if err != nil {
		t.Fatal(err)
	}
	return ok, wait
}

// limiterContract is ratelimit's TestTokenBucket, written against any
// Limiter so the in-process and the Redis limiter meet the same
// expectations.
func limiterContract(t *testing.T, newLimiter func(ratelimit.Rate, func() time.Time) ratelimit.Limiter) {
	c := newClock()
	l := newLimiter(ratelimit.Rate{Burst: 6, Per: 10 * time.Minute}, c.now)
	for i := range 6 {
		if ok, _ := allow(t, l, "a→b"); !ok {
			t.Fatalf("request %d of a full bucket refused", i+1)
		}
	}
	ok, wait := allow(t, l, "a→b")
	if ok || wait != 100*time.Second {
		t.Fatalf("7th request: ok=%v wait=%v, want refused with 100s", ok, wait)
	}
	if ok, _ := allow(t, l, "a→c"); !ok {
		t.Fatal("other target refused")
	}
	c.add(40 * time.Second)
	if ok, wait := allow(t, l, "a→b"); ok || wait != 60*time.Second {
		t.Fatalf("after 40s: ok=%v wait=%v, want refused with 60s", ok, wait)
	}
	c.add(60 * time.Second)
	if ok, _ := allow(t, l, "a→b"); !ok {
		t.Fatal("after one interval: refused")
	}
	if ok, _ := allow(t, l, "a→b"); ok {
		t.Fatal("second request after one interval allowed")
	}
	// The clock going backwards refills nothing.
	c.add(-time.Hour)
	if ok, _ := allow(t, l, "a→b"); ok {
		t.Fatal("a clock going backwards refilled the bucket")
	}
	c.add(time.Hour)
	// A long pause refills to Burst, not beyond.
	c.add(24 * time.Hour)
	n := 0
	for {
		if ok, _ := allow(t, l, "a→b"); !ok {
			break
		}
		n++
	}
	if n != 6 {
		t.Fatalf("after a day: %d allowed, want 6", n)
	}
}

func newRedisLimiter(t *testing.T, c redis.UniversalClient, prefix string) func(ratelimit.Rate, func() time.Time) ratelimit.Limiter {
	return func(r ratelimit.Rate, now func() time.Time) ratelimit.Limiter {
		l, err := New(c, Options{Prefix: prefix, Name: "test", Rate: r, Now: now})
		if err != nil {
			t.Fatal(err)
		}
		return l
	}
}

func TestLimiterContractInProcess(t *testing.T) {
	limiterContract(t, func(r ratelimit.Rate, now func() time.Time) ratelimit.Limiter {
		l, err := ratelimit.NewTokenBucket(r, now)
		if err != nil {
			t.Fatal(err)
		}
		return l
	})
}

func TestRedisLimiterContract(t *testing.T) {
	r := testenv.NeedRedis(t)
	limiterContract(t, newRedisLimiter(t, r.Client(t), r.Prefix))
}

// A random sequence of requests and clock steps gets bit-identical answers
// from the Redis limiter and the in-process one.
func TestRedisLimiterMatchesTokenBucket(t *testing.T) {
	r := testenv.NeedRedis(t)
	rdb := r.Client(t)
	rng := rand.New(rand.NewPCG(1, 2))
	for _, rate := range []ratelimit.Rate{
		{Burst: 6, Per: 10 * time.Minute},
		{Burst: 7, Per: time.Second},      // interval not a whole number of ms
		{Burst: 1000, Per: 3 * time.Hour}, // fractional tokens matter
		{Burst: 1, Per: 333 * time.Millisecond},
	} {
		c := newClock()
		mem, _ := ratelimit.NewTokenBucket(rate, c.now)
		red, err := New(rdb, Options{Prefix: r.Prefix, Name: fmt.Sprint("diff", rate.Burst), Rate: rate, Now: c.now})
		if err != nil {
			t.Fatal(err)
		}
		interval := rate.Per / time.Duration(rate.Burst)
		for i := range 600 {
			key := fmt.Sprint("k", rng.IntN(3))
			if rng.IntN(3) == 0 {
				c.add(time.Duration(rng.Int64N(int64(2*interval)) + 1))
			}
			okM, waitM := allow(t, mem, key)
			okR, waitR := allow(t, red, key)
			if okM != okR || waitM != waitR {
				t.Fatalf("rate %v step %d key %s: in-process (%v, %v), redis (%v, %v)", rate, i, key, okM, waitM, okR, waitR)
			}
		}
	}
}

// Concurrent callers on several clients (as on several nodes) never
// overspend a bucket.
func TestRedisLimiterAtomic(t *testing.T) {
	r := testenv.NeedRedis(t)
	c := newClock() // frozen: nothing refills during the test
	var limiters []*Limiter
	for range 4 {
		l, err := New(r.Client(t), Options{Prefix: r.Prefix, Name: "atomic", Rate: ratelimit.Rate{Burst: 50, Per: time.Hour}, Now: c.now})
		if err != nil {
			t.Fatal(err)
		}
		limiters = append(limiters, l)
	}
	var allowed atomic.Int64
	var wg sync.WaitGroup
	for g := range 20 {
		wg.Go(func() {
			for range 10 {
				ok, _, err := limiters[g%len(limiters)].Allow(context.Background(), "hot")
				if err != nil {
					t.Error(err)
					return
				}
				if ok {
					allowed.Add(1)
				}
			}
		})
	}
	wg.Wait()
	if n := allowed.Load(); n != 50 {
		t.Fatalf("%d of 200 concurrent requests allowed, want exactly the burst of 50", n)
	}
}

// With no clock given, Redis's own clock drives the bucket.
func TestRedisLimiterServerClock(t *testing.T) {
	r := testenv.NeedRedis(t)
	l, err := New(r.Client(t), Options{Prefix: r.Prefix, Name: "srv", Rate: ratelimit.Rate{Burst: 2, Per: 400 * time.Millisecond}})
	if err != nil {
		t.Fatal(err)
	}
	allow(t, l, "k")
	allow(t, l, "k")
	ok, wait := allow(t, l, "k")
	if ok || wait <= 0 || wait > 200*time.Millisecond {
		t.Fatalf("third request: ok=%v wait=%v, want refused with 0 < wait <= 200ms", ok, wait)
	}
	time.Sleep(wait)
	if ok, w := allow(t, l, "k"); !ok {
		t.Fatalf("after waiting the advised %v: refused again (wait %v)", wait, w)
	}
}

// Idle buckets expire once they would be full again; an expired bucket
// behaves as a full one.
func TestRedisLimiterIdleBucketsExpire(t *testing.T) {
	r := testenv.NeedRedis(t)
	rdb := r.Client(t)
	l, err := New(rdb, Options{Prefix: r.Prefix, Name: "ttl", Rate: ratelimit.Rate{Burst: 4, Per: 2 * time.Second}})
	if err != nil {
		t.Fatal(err)
	}
	allow(t, l, "k") // 3 left: full again in 500 ms
	pttl, err := rdb.PTTL(context.Background(), r.Prefix+"rl:ttl:k").Result()
	if err != nil {
		t.Fatal(err)
	}
	if pttl <= 0 || pttl > 501*time.Millisecond {
		t.Fatalf("bucket expires in %v, want (0, 501ms]: when it would be full again", pttl)
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		n, err := rdb.Exists(context.Background(), r.Prefix+"rl:ttl:k").Result()
		if err != nil {
			t.Fatal(err)
		}
		if n == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("idle bucket never expired")
		}
		time.Sleep(50 * time.Millisecond)
	}
	for i := range 4 {
		if ok, _ := allow(t, l, "k"); !ok {
			t.Fatalf("request %d after expiry refused: an expired bucket must be full", i+1)
		}
	}
}

func TestRedisLimiterValidation(t *testing.T) {
	r := testenv.NeedRedis(t)
	rdb := r.Client(t)
	for _, o := range []Options{
		{Name: "x", Rate: ratelimit.Rate{Burst: 0, Per: time.Minute}},
		{Name: "x", Rate: ratelimit.Rate{Burst: 1, Per: 0}},
		{Name: "", Rate: ratelimit.Rate{Burst: 1, Per: time.Minute}},
		{Name: "x", Rate: ratelimit.Rate{Burst: 10, Per: 5}},
	} {
		if _, err := New(rdb, o); err == nil {
			t.Errorf("New(%+v) accepted", o)
		}
	}
	if _, err := New(nil, Options{Name: "x", Rate: ratelimit.Rate{Burst: 1, Per: time.Minute}}); err == nil {
		t.Error("nil client accepted")
	}
	l, _ := New(rdb, Options{Prefix: r.Prefix, Name: "x", Rate: ratelimit.Rate{Burst: 1, Per: time.Minute}})
	if _, _, err := l.Allow(context.Background(), string(make([]byte, MaxKeyLen+1))); err == nil {
		t.Error("oversized key accepted")
	}
}

// An unreachable Redis is an error, returned within the timeout: the
// caller refuses instead of waiting or allowing.
func TestRedisLimiterUnreachable(t *testing.T) {
	rdb := redis.NewClient(&redis.Options{Addr: "127.0.0.1:1", MaxRetries: -1})
	defer rdb.Close()
	l, err := New(rdb, Options{Name: "down", Rate: ratelimit.Rate{Burst: 1, Per: time.Minute}, Timeout: 200 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	ok, _, err := l.Allow(context.Background(), "k")
	if err == nil || ok {
		t.Fatalf("Allow with Redis down = %v, %v; want an error and no permission", ok, err)
	}
}

func TestByteQuota(t *testing.T) {
	r := testenv.NeedRedis(t)
	c := newClock()
	// 1000 bytes per 1000 s: one byte per second comes back.
	q, err := NewByteQuota(r.Client(t), ByteQuotaOptions{Prefix: r.Prefix, Name: "media", Limit: 1000, Window: 1000 * time.Second, Now: c.now})
	if err != nil {
		t.Fatal(err)
	}
	take := func(acct string, n int64) (bool, time.Duration) {
		t.Helper()
		ok, wait, err := q.Take(context.Background(), acct, n)
		if err != nil {
			t.Fatal(err)
		}
		return ok, wait
	}
	if ok, _ := take("alice", 600); !ok {
		t.Fatal("600 of a full 1000 refused")
	}
	if ok, wait := take("alice", 500); ok || wait != 100*time.Second {
		t.Fatalf("500 with 400 left: ok=%v wait=%v, want refused with 100s", ok, wait)
	}
	if ok, _ := take("bob", 1000); !ok {
		t.Fatal("another account shares alice's bucket")
	}
	if ok, wait := take("alice", 1001); ok || wait != 1000*time.Second {
		t.Fatalf("more than the limit: ok=%v wait=%v, want refused with the window", ok, wait)
	}
	c.add(100 * time.Second)
	if ok, _ := take("alice", 500); !ok {
		t.Fatal("after the advised wait: refused")
	}
	if ok, wait := take("alice", 1); ok || wait != time.Second {
		t.Fatalf("empty bucket: ok=%v wait=%v, want refused with 1s", ok, wait)
	}
	c.add(48 * time.Hour)
	if ok, _ := take("alice", 1000); !ok {
		t.Fatal("after a long pause the bucket is not full")
	}
	if ok, _ := take("alice", 1); ok {
		t.Fatal("bucket refilled beyond its limit")
	}
	if _, _, err := q.Take(context.Background(), "alice", -1); err == nil {
		t.Fatal("negative size accepted")
	}
	for _, o := range []ByteQuotaOptions{{Name: "x", Limit: 0, Window: time.Hour}, {Name: "x", Limit: 1}, {Limit: 1, Window: time.Hour}} {
		if _, err := NewByteQuota(r.Client(t), o); err == nil {
			t.Errorf("NewByteQuota(%+v) accepted", o)
		}
	}
}

func BenchmarkRedisAllow(b *testing.B) {
	r := testenv.NeedRedis(b)
	l, err := New(r.Client(b), Options{Prefix: r.Prefix, Name: "bench", Rate: ratelimit.Rate{Burst: 6, Per: 10 * time.Minute}})
	if err != nil {
		b.Fatal(err)
	}
	keys := make([]string, 1000)
	for i := range keys {
		keys[i] = fmt.Sprint("req", i, "→target")
	}
	ctx := context.Background()
	b.ResetTimer()
	for i := 0; b.Loop(); i++ {
		if _, _, err := l.Allow(ctx, keys[i%len(keys)]); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkRedisAllowParallel(b *testing.B) {
	r := testenv.NeedRedis(b)
	l, err := New(r.Client(b), Options{Prefix: r.Prefix, Name: "benchp", Rate: ratelimit.Rate{Burst: 6, Per: 10 * time.Minute}})
	if err != nil {
		b.Fatal(err)
	}
	var n atomic.Int64
	b.SetParallelism(8)
	b.RunParallel(func(pb *testing.PB) {
		ctx := context.Background()
		for pb.Next() {
			if _, _, err := l.Allow(ctx, fmt.Sprint("req", n.Add(1)%1000)); err != nil {
				b.Error(err)
				return
			}
		}
	})
}
