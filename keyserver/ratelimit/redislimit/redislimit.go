// Package redislimit keeps rate limits in Redis, so every key-server (or
// relay) node that shares a Redis shares one budget per key: a requester
// cannot multiply its allowance by spreading requests over nodes.
//
// # Semantics
//
// Limiter implements ratelimit.Limiter with exactly the arithmetic of the
// in-process ratelimit.TokenBucket — a bucket of Rate.Burst tokens per key,
// refilled continuously at one token per Rate.Per/Rate.Burst, starting
// full — so a deployment can move between them without any limit changing.
// The same expectations run against both (redislimit_test.go repeats
// ratelimit's). ByteQuota does the same for media.ByteBucket (a bucket of
// bytes per account: Take(account, n)), so the media service's slot,
// resolve and byte limits can all move to Redis.
//
// # How
//
// One Lua script per decision (EVALSHA, falling back to EVAL when the
// server lost its script cache) reads the bucket, refills it, takes or
// refuses, and writes it back, atomically: concurrent callers on any
// number of nodes never overspend. A bucket is one small hash (tokens as a
// round-trippable %.17g float, and the last refill time as whole seconds +
// nanoseconds, so the arithmetic is exact in Lua's doubles and matches Go's
// float64 bit for bit). Each write sets the key to expire when the bucket
// would be full again: a full bucket is indistinguishable from an absent
// one, so Redis holds only buckets touched within the last Per, as the
// in-process sweep does.
//
// # Clock
//
// With Options.Now nil the script reads Redis's own clock (TIME): all nodes
// then agree on every bucket's time, however skewed their own clocks are
// (in a Redis Cluster a bucket lives on one shard, so it still sees one
// clock). Options.Now replaces it (tests use a fake clock); node clocks
// that disagree then make a bucket refill late by up to the skew, never
// early, because time running backwards refills nothing.
//
// # Failure
//
// When Redis does not answer within Options.Timeout, Allow and Take return
// an error; callers refuse the request (ratelimit.Limiter's contract), so
// an outage can slow clients down but never lifts a limit.
package redislimit

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/hushchat/hush/keyserver/ratelimit"
)

// DefaultTimeout bounds one decision when Options.Timeout is zero.
const DefaultTimeout = 500 * time.Millisecond

// MaxKeyLen bounds the caller's key (bytes). Callers build keys from
// account names and addresses; anything longer is a bug, not a request.
const MaxKeyLen = 512

// Options configure a Limiter.
type Options struct {
	// Prefix starts every key this limiter writes (e.g. "hush:"); several
	// deployments or tests can share a Redis under different prefixes. In
	// a Redis Cluster it must not contain '{' or '}'.
	Prefix string
	// Name tells limiters sharing a Redis apart ("bundle", "anon",
	// "media-slot"); keys are Prefix + "rl:" + Name + ":" + key.
	Name string
	// Rate is the limit per key.
	Rate ratelimit.Rate
	// Now is the clock; nil means Redis's clock (see the package doc).
	Now func() time.Time
	// Timeout bounds one Allow (default DefaultTimeout); the caller's
	// context can only shorten it.
	Timeout time.Duration
}

// Limiter is a ratelimit.Limiter with one token bucket per key in Redis.
// It is safe for concurrent use.
type Limiter struct {
	c        redis.UniversalClient
	o        Options
	interval time.Duration
	base     string
}

var _ ratelimit.Limiter = (*Limiter)(nil)

// New returns a Limiter on c. It does not contact Redis.
func New(c redis.UniversalClient, o Options) (*Limiter, error) {
	if c == nil {
		return nil, errors.New("redislimit: nil Redis client")
	}
	if err := o.Rate.Validate(); err != nil {
		return nil, fmt.Errorf("redislimit %q: %w", o.Name, err)
	}
	if o.Name == "" {
		return nil, errors.New("redislimit: Options.Name is required (it separates limiters sharing a Redis)")
	}
	if o.Timeout <= 0 {
		o.Timeout = DefaultTimeout
	}
	interval := o.Rate.Per / time.Duration(o.Rate.Burst)
	if interval <= 0 {
		return nil, fmt.Errorf("redislimit %q: rate %v refills faster than one token per nanosecond", o.Name, o.Rate)
	}
	return &Limiter{c: c, o: o, interval: interval, base: o.Prefix + "rl:" + o.Name + ":"}, nil
}

// tokenScript is TokenBucket.Allow in Lua. KEYS[1] is the bucket; ARGV is
// burst, interval (ns), and now as seconds and nanoseconds ("" and "":
// use Redis's TIME). It returns {1, 0} when a token was taken, else
// {0, wait-ns}.
//
// Times are kept as (seconds, nanoseconds) so that the elapsed time in ns
// is computed exactly in doubles (it stays below 2^53 for any elapsed time
// under 104 days; beyond that the bucket is full either way), making every
// step the same IEEE operation Go performs.
var tokenScript = redis.NewScript(`
local burst = tonumber(ARGV[1])
local interval = tonumber(ARGV[2])
local sec, nsec
if ARGV[3] == '' then
  local t = redis.call('TIME')
  sec = tonumber(t[1]); nsec = tonumber(t[2]) * 1000
else
  sec = tonumber(ARGV[3]); nsec = tonumber(ARGV[4])
end
local tokens = burst
local b = redis.call('HMGET', KEYS[1], 't', 's', 'n')
if b[1] then
  tokens = tonumber(b[1])
  local ls, ln = tonumber(b[2]), tonumber(b[3])
  local el = (sec - ls) * 1e9 + (nsec - ln)
  if el > 0 then
    tokens = math.min(burst, tokens + el / interval)
  else
    sec, nsec = ls, ln
  end
end
local ok, wait = 0, 0
if tokens >= 1 then
  tokens = tokens - 1
  ok = 1
else
  wait = math.ceil((1 - tokens) * interval)
  if wait <= 0 then wait = 1 end
end
redis.call('HSET', KEYS[1], 't', string.format('%.17g', tokens), 's', string.format('%d', sec), 'n', string.format('%d', nsec))
redis.call('PEXPIRE', KEYS[1], math.floor((burst - tokens) * interval / 1e6) + 1)
return {ok, wait}
`)

// Allow implements ratelimit.Limiter.
func (l *Limiter) Allow(ctx context.Context, key string) (bool, time.Duration, error) {
	if len(key) > MaxKeyLen {
		return false, 0, fmt.Errorf("rate limit %s: key of %d bytes exceeds %d", l.o.Name, len(key), MaxKeyLen)
	}
	args := make([]any, 4)
	args[0] = l.o.Rate.Burst
	args[1] = int64(l.interval)
	args[2], args[3] = nowArgs(l.o.Now)
	ok, wait, err := run(ctx, l.c, l.o.Timeout, tokenScript, l.base+key, args)
	if err != nil {
		return false, 0, fmt.Errorf("rate limit %s: %w", l.o.Name, err)
	}
	return ok, wait, nil
}

// ByteQuotaOptions configure a ByteQuota.
type ByteQuotaOptions struct {
	// Prefix and Name as in Options; keys are Prefix + "bq:" + Name + ":" +
	// account.
	Prefix, Name string
	// Limit bytes per Window, refilled continuously (a rolling window).
	Limit  int64
	Window time.Duration
	// Now and Timeout as in Options.
	Now     func() time.Time
	Timeout time.Duration
}

// ByteQuota keeps a bucket of bytes per account in Redis, with the exact
// semantics of media.ByteBucket: Take(ctx, account, n) charges n bytes when
// the account has them, else charges nothing and says how long until it
// will; a request larger than the whole Limit is answered with Window. It
// satisfies media.ByteQuota (by its method set; this package does not
// import the media service). Safe for concurrent use.
type ByteQuota struct {
	c    redis.UniversalClient
	o    ByteQuotaOptions
	rate string // bytes per ns, as Go's float64 printed round-trippably
	base string
}

// NewByteQuota returns a ByteQuota on c. It does not contact Redis.
func NewByteQuota(c redis.UniversalClient, o ByteQuotaOptions) (*ByteQuota, error) {
	if c == nil {
		return nil, errors.New("redislimit: nil Redis client")
	}
	if o.Limit < 1 || o.Window <= 0 {
		return nil, fmt.Errorf("byte quota %q %d per %v: need at least 1 byte per positive window", o.Name, o.Limit, o.Window)
	}
	if o.Name == "" {
		return nil, errors.New("redislimit: ByteQuotaOptions.Name is required (it separates quotas sharing a Redis)")
	}
	if o.Timeout <= 0 {
		o.Timeout = DefaultTimeout
	}
	rate := float64(o.Limit) / float64(o.Window)
	return &ByteQuota{c: c, o: o, rate: strconv.FormatFloat(rate, 'g', -1, 64), base: o.Prefix + "bq:" + o.Name + ":"}, nil
}

// byteScript is media.ByteBucket.Take in Lua. ARGV: limit, rate (bytes
// per ns), window (ns), need, now seconds, now nanoseconds.
var byteScript = redis.NewScript(`
local limit = tonumber(ARGV[1])
local rate = tonumber(ARGV[2])
local window = tonumber(ARGV[3])
local need = tonumber(ARGV[4])
local sec, nsec
if ARGV[5] == '' then
  local t = redis.call('TIME')
  sec = tonumber(t[1]); nsec = tonumber(t[2]) * 1000
else
  sec = tonumber(ARGV[5]); nsec = tonumber(ARGV[6])
end
local bytes = limit
local b = redis.call('HMGET', KEYS[1], 't', 's', 'n')
if b[1] then
  bytes = tonumber(b[1])
  local ls, ln = tonumber(b[2]), tonumber(b[3])
  local el = (sec - ls) * 1e9 + (nsec - ln)
  if el > 0 then
    bytes = math.min(limit, bytes + el * rate)
  else
    sec, nsec = ls, ln
  end
end
local ok, wait = 0, 0
if need <= bytes then
  bytes = bytes - need
  ok = 1
elseif need > limit then
  wait = window
else
  wait = math.ceil((need - bytes) / rate)
  if wait <= 0 then wait = 1 end
end
redis.call('HSET', KEYS[1], 't', string.format('%.17g', bytes), 's', string.format('%d', sec), 'n', string.format('%d', nsec))
redis.call('PEXPIRE', KEYS[1], math.floor((limit - bytes) / rate / 1e6) + 1)
return {ok, wait}
`)

// Take charges n bytes to account if it has them (see ByteQuota).
func (q *ByteQuota) Take(ctx context.Context, account string, n int64) (bool, time.Duration, error) {
	if len(account) > MaxKeyLen {
		return false, 0, fmt.Errorf("byte quota %s: account of %d bytes exceeds %d", q.o.Name, len(account), MaxKeyLen)
	}
	if n < 0 {
		return false, 0, fmt.Errorf("byte quota %s: negative size %d", q.o.Name, n)
	}
	args := make([]any, 6)
	args[0] = q.o.Limit
	args[1] = q.rate
	args[2] = int64(q.o.Window)
	args[3] = n
	args[4], args[5] = nowArgs(q.o.Now)
	ok, wait, err := run(ctx, q.c, q.o.Timeout, byteScript, q.base+account, args)
	if err != nil {
		return false, 0, fmt.Errorf("byte quota %s: %w", q.o.Name, err)
	}
	return ok, wait, nil
}

// nowArgs renders the clock as (seconds, nanoseconds), or two empty
// strings to make the script read Redis's clock.
func nowArgs(now func() time.Time) (any, any) {
	if now == nil {
		return "", ""
	}
	t := now()
	return t.Unix(), t.Nanosecond()
}

// run evaluates a bucket script (EVALSHA, EVAL on NOSCRIPT) and decodes its
// {ok, wait} answer.
func run(ctx context.Context, c redis.UniversalClient, timeout time.Duration, s *redis.Script, key string, args []any) (bool, time.Duration, error) {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	res, err := s.Run(ctx, c, []string{key}, args...).Int64Slice()
	if err != nil {
		return false, 0, fmt.Errorf("redis: %w", err)
	}
	if len(res) != 2 {
		return false, 0, fmt.Errorf("redis: bucket script answered %d values, want 2", len(res))
	}
	return res[0] == 1, time.Duration(res[1]), nil
}
