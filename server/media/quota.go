package media

import (
	"context"
	"fmt"
	"math"
	"sync"
	"time"
)

// ByteQuota decides whether an account may be issued a slot for n more
// bytes now.
//
// Take charges n bytes to account and reports ok when the account has
// them; otherwise it charges nothing and reports how long until it will
// (retryAfter > 0). An error means the quota could not decide (a shared
// backend failed); the caller then refuses. Implementations are safe for
// concurrent use.
type ByteQuota interface {
	Take(ctx context.Context, account string, n int64) (ok bool, retryAfter time.Duration, err error)
}

// ByteBucket is an in-process ByteQuota: one token bucket of bytes per
// account, holding at most Limit bytes and refilling Limit per Window
// continuously, so "2 GiB per day" is a rolling day rather than a calendar
// day that resets at midnight for everyone at once. Buckets that are full
// again carry no information and are dropped by a periodic sweep.
type ByteBucket struct {
	limit  float64
	window time.Duration
	rate   float64 // bytes per nanosecond
	now    func() time.Time

	mu      sync.Mutex
	buckets map[string]*byteBucket
	inserts int
}

type byteBucket struct {
	bytes float64
	last  time.Time
}

// NewByteBucket returns an in-process quota of limit bytes per window for
// each account. now is the clock (nil: time.Now).
func NewByteBucket(limit int64, window time.Duration, now func() time.Time) (*ByteBucket, error) {
	if limit < 1 || window <= 0 {
		return nil, fmt.Errorf("byte quota %d per %v: need at least 1 byte per positive window", limit, window)
	}
	if now == nil {
		now = time.Now
	}
	return &ByteBucket{
		limit:   float64(limit),
		window:  window,
		rate:    float64(limit) / float64(window),
		now:     now,
		buckets: make(map[string]*byteBucket),
	}, nil
}

// Take implements ByteQuota. It never fails. A request larger than the
// whole limit can never succeed and is answered with the full window.
func (q *ByteBucket) Take(_ context.Context, account string, n int64) (bool, time.Duration, error) {
	now := q.now()
	q.mu.Lock()
	defer q.mu.Unlock()
	b, ok := q.buckets[account]
	if !ok {
		if q.inserts++; q.inserts >= sweepEvery {
			q.inserts = 0
			q.sweep(now)
		}
		b = &byteBucket{bytes: q.limit, last: now}
		q.buckets[account] = b
	}
	q.refill(b, now)
	need := float64(n)
	if need <= b.bytes {
		b.bytes -= need
		return true, 0, nil
	}
	if need > q.limit {
		return false, q.window, nil
	}
	wait := time.Duration(math.Ceil((need - b.bytes) / q.rate))
	if wait <= 0 {
		wait = 1
	}
	return false, wait, nil
}

func (q *ByteBucket) refill(b *byteBucket, now time.Time) {
	if el := now.Sub(b.last); el > 0 {
		b.bytes = math.Min(q.limit, b.bytes+float64(el)*q.rate)
		b.last = now
	}
}

// sweepEvery is how many new buckets trigger a sweep of full ones.
const sweepEvery = 1024

func (q *ByteBucket) sweep(now time.Time) {
	for k, b := range q.buckets {
		q.refill(b, now)
		if b.bytes >= q.limit {
			delete(q.buckets, k)
		}
	}
}

// Len returns the number of buckets held (for tests and metrics).
func (q *ByteBucket) Len() int {
	q.mu.Lock()
	defer q.mu.Unlock()
	return len(q.buckets)
}
