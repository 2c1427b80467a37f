package ratelimit

import (
	"context"
	"fmt"
	"testing"
	"time"
)

type clock struct{ t time.Time }

func (c *clock) now() time.Time      { return c.t }
func (c *clock) add(d time.Duration) { c.t = c.t.Add(d) }
func newClock() *clock               { return &clock{t: time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)} }
func allow(t *testing.T, l Limiter, key string) (bool, time.Duration) {
	t.Helper()
	ok, wait, err := l.Allow(context.Background(), key)
	if err != nil {
		t.Fatal(err)
	}
	return ok, wait
}

func TestTokenBucket(t *testing.T) {
	c := newClock()
	l, err := NewTokenBucket(Rate{Burst: 6, Per: 10 * time.Minute}, c.now)
	if err != nil {
		t.Fatal(err)
	}
	for i := range 6 {
		if ok, _ := allow(t, l, "a→b"); !ok {
			t.Fatalf("request %d of a full bucket refused", i+1)
		}
	}
	ok, wait := allow(t, l, "a→b")
	if ok || wait != 100*time.Second {
		t.Fatalf("7th request: ok=%v wait=%v, want refused with 100s", ok, wait)
	}
	// Other keys are independent.
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

func TestSweepDropsFullBuckets(t *testing.T) {
	c := newClock()
	l, _ := NewTokenBucket(Rate{Burst: 2, Per: time.Minute}, c.now)
	for i := range sweepEvery - 1 {
		allow(t, l, fmt.Sprint(i))
	}
	c.add(time.Minute)
	allow(t, l, "fresh") // the sweepEvery-th new key triggers a sweep
	if n := l.Len(); n != 1 {
		t.Fatalf("after sweep %d buckets remain, want 1", n)
	}
}

func TestRateValidate(t *testing.T) {
	for _, r := range []Rate{{0, time.Minute}, {1, 0}, {-1, time.Second}} {
		if _, err := NewTokenBucket(r, nil); err == nil {
			t.Errorf("%v accepted", r)
		}
	}
}

func BenchmarkAllow(b *testing.B) {
	l, _ := NewTokenBucket(Rate{Burst: 6, Per: 10 * time.Minute}, nil)
	keys := make([]string, 1000)
	for i := range keys {
		keys[i] = fmt.Sprint("req", i, "→target")
	}
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		l.Allow(context.Background(), keys[i%len(keys)])
	}
}
