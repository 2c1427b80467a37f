// Package ratelimit throttles the key server's expensive or abusable calls,
// above all bundle fetches: each fetch consumes one of the target's
// one-time prekeys, so without a limit per (requester, target) anyone could
// drain a victim's pool and push every new session onto the last-resort
// key.
//
// Limiter is the seam: TokenBucket keeps buckets in process (one key server,
// or hush-server); a shared implementation (Redis) can replace it when key
// servers scale out, without the server changing.
package ratelimit

import (
	"context"
	"fmt"
	"math"
	"sync"
	"time"
)

// Limiter decides whether one more event for key is allowed now.
//
// Allow consumes one unit for key if one is available and reports ok. When
// none is, it consumes nothing and reports how long until one is
// (retryAfter > 0). An error means the limiter could not decide (a shared
// backend failed); callers should then refuse rather than allow.
type Limiter interface {
	Allow(ctx context.Context, key string) (ok bool, retryAfter time.Duration, err error)
}

// Rate is Burst events per Per, refilled continuously: a full bucket holds
// Burst tokens and one token comes back every Per/Burst.
type Rate struct {
	Burst int
	Per   time.Duration
}

// Validate reports whether r describes a usable limit.
func (r Rate) Validate() error {
	if r.Burst < 1 || r.Per <= 0 {
		return fmt.Errorf("rate %d per %v: need at least 1 per positive duration", r.Burst, r.Per)
	}
	return nil
}

func (r Rate) String() string { return fmt.Sprintf("%d per %v", r.Burst, r.Per) }

// TokenBucket is an in-process Limiter with one token bucket per key.
// Buckets that have refilled completely carry no information and are
// dropped by a periodic sweep, so memory follows the keys active within
// the last Per, not all keys ever seen.
type TokenBucket struct {
	rate     Rate
	interval time.Duration // time for one token to come back
	now      func() time.Time

	mu      sync.Mutex
	buckets map[string]*bucket
	inserts int
}

type bucket struct {
	tokens float64
	last   time.Time
}

// sweepEvery is how many new buckets trigger a sweep of full ones.
const sweepEvery = 1024

// NewTokenBucket returns an in-process limiter. now is the clock (nil:
// time.Now).
func NewTokenBucket(r Rate, now func() time.Time) (*TokenBucket, error) {
	if err := r.Validate(); err != nil {
		return nil, err
	}
	if now == nil {
		now = time.Now
	}
	return &TokenBucket{
		rate:     r,
		interval: r.Per / time.Duration(r.Burst),
		now:      now,
		buckets:  make(map[string]*bucket),
	}, nil
}

func (t *TokenBucket) refill(b *bucket, now time.Time) {
	if el := now.Sub(b.last); el > 0 {
		b.tokens = math.Min(float64(t.rate.Burst), b.tokens+float64(el)/float64(t.interval))
		b.last = now
	}
}

// Allow implements Limiter. It never fails.
func (t *TokenBucket) Allow(_ context.Context, key string) (bool, time.Duration, error) {
	now := t.now()
	t.mu.Lock()
	defer t.mu.Unlock()
	b, ok := t.buckets[key]
	if !ok {
		if t.inserts++; t.inserts >= sweepEvery {
			t.inserts = 0
			t.sweep(now)
		}
		b = &bucket{tokens: float64(t.rate.Burst), last: now}
		t.buckets[key] = b
	}
	t.refill(b, now)
	if b.tokens >= 1 {
		b.tokens--
		return true, 0, nil
	}
	wait := time.Duration(math.Ceil((1 - b.tokens) * float64(t.interval)))
	if wait <= 0 {
		wait = 1
	}
	return false, wait, nil
}

// sweep drops full buckets; they are indistinguishable from absent ones.
func (t *TokenBucket) sweep(now time.Time) {
	for k, b := range t.buckets {
		t.refill(b, now)
		if b.tokens >= float64(t.rate.Burst) {
			delete(t.buckets, k)
		}
	}
}

// Len returns the number of buckets held (for tests and metrics).
func (t *TokenBucket) Len() int {
	t.mu.Lock()
	defer t.mu.Unlock()
	return len(t.buckets)
}
