// Package nodeid gives a relay its Snowflake node id: a fixed one from the
// command line (Static, `--node-id N`) or one leased from Redis (Lease,
// `--node-id auto`), unique among live nodes.
//
// A Snowflake id is 41 bits of milliseconds, 10 bits of node id and 12 bits
// of sequence (bwmarrin/snowflake's default layout), so two relays with the
// same node id can mint the same message id in the same millisecond. The
// lease exists to make that impossible, including across crashes, clock
// skew and Redis outages.
//
// # The lease
//
//   - Acquire: one Lua script tries SET <prefix>{nodeid}:<id> <owner> NX PX
//     (Lease+MaxClockSkew) for each id of the range, starting at a random
//     one, and returns the first it got. All keys share the {nodeid} hash
//     tag, so the script runs on one shard of a Redis Cluster.
//   - Validity: the holder may mint ids until (time it sent its last
//     successful acquire or renew) + Lease, measured on its monotonic clock.
//     Redis keeps the key at least MaxClockSkew longer than that, because it
//     starts counting later (when the command arrives). So when a key
//     expires, its holder stopped minting at least MaxClockSkew earlier, and
//     the next holder's ids — even if its wall clock lags by up to
//     MaxClockSkew — are later than every id the previous holder minted.
//   - Renew: every Lease/3 (well before half the lease), compare-and-extend
//     in Lua. A failed renewal is retried every Lease/20; once the validity
//     passes without one, Valid reports ErrSuspended and the relay must stop
//     minting until a renewal succeeds. A renewal that finds another owner in
//     the key reports ErrLost for good and closes Lost().
//   - Release (Close): the key is replaced by a tombstone that lives
//     MaxClockSkew, so the id is not handed out again until every id this
//     holder minted is in the past on any clock within the skew.
//
// # Redis losing its data
//
// A Redis restarted without persistence forgets every lease. To notice, the
// scripts keep an epoch key beside the leases: a lease or renewal that finds
// it missing knows Redis may have forgotten live leases, so the id it gets
// may still be in use by a holder that has not yet tried to renew. Such a
// lease waits out one full lease (Lease+MaxClockSkew, Valid reports
// ErrWarming) before minting — by then that holder's renewal has found the
// new owner and it has stopped. A holder whose lease is still valid when it
// finds its own key gone re-creates it and goes on without waiting: nobody
// else could have held that id meanwhile without its key existing. A brand
// new deployment therefore waits one lease on its first start.
//
// Not covered: a Redis failover that loses a recent write but keeps the
// epoch (asynchronous replication) can let two nodes share an id for up to
// one renewal interval. Lease node ids from a Redis whose acknowledged
// writes survive (a single primary with appendfsync, or a cluster shard
// you trust), or give each relay a fixed --node-id.
package nodeid

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"math/big"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/redis/go-redis/v9"
)

// MaxID is the largest Snowflake node id (bwmarrin/snowflake's default
// NodeBits = 10).
const MaxID = 1023

// Defaults of Options' zero fields.
const (
	DefaultLease        = time.Minute
	DefaultMaxClockSkew = 2 * time.Second
	DefaultTimeout      = time.Second
)

var (
	// ErrSuspended: the lease could not be renewed in time; ids must not be
	// minted until a renewal succeeds.
	ErrSuspended = errors.New("node id lease expired without renewal (redis unreachable?); not minting ids")
	// ErrWarming: the lease was taken from a Redis that may have forgotten
	// an earlier holder; ids may be minted once that holder's lease is over.
	ErrWarming = errors.New("node id lease waiting out a possible earlier holder")
	// ErrLost: another node holds this id now. Final.
	ErrLost = errors.New("node id lease lost to another node")
	// ErrClosed: the provider was closed.
	ErrClosed = errors.New("node id released")
	// ErrNoFreeID: every id of the range is leased (or recently released).
	ErrNoFreeID = errors.New("no free node id")
)

// Provider is a relay's source of its Snowflake node id.
//
// Guarantees: while Valid returns nil, no other live node that uses a
// Provider on the same Redis (or a different Static id) mints ids with
// ID(), and none minted with ID() in the past is later than this node's
// clock minus the maximum clock skew. The relay checks Valid before
// minting, and refuses to mint (a retryable error to the sender) while it
// is not nil.
type Provider interface {
	// ID is the node id, 0–MaxID. It never changes.
	ID() int64
	// Valid returns nil while ids may be minted, else why not (ErrSuspended,
	// ErrWarming, ErrLost, ErrClosed). It is cheap: no I/O, no lock.
	Valid() error
	// Lost is closed when the id is gone for good (ErrLost or ErrClosed);
	// a relay then drains and exits, and its restart leases a new id.
	Lost() <-chan struct{}
	// Close releases the id.
	Close(ctx context.Context) error
}

// Static is a fixed node id (`--node-id N`); the operator guarantees it is
// unique.
type Static struct {
	id     int64
	closed atomic.Bool
	lost   chan struct{}
	once   sync.Once
}

// NewStatic returns a Provider for a fixed id.
func NewStatic(id int64) (*Static, error) {
	if id < 0 || id > MaxID {
		return nil, fmt.Errorf("node id %d outside 0–%d", id, MaxID)
	}
	return &Static{id: id, lost: make(chan struct{})}, nil
}

// ID implements Provider.
func (s *Static) ID() int64 { return s.id }

// Valid implements Provider.
func (s *Static) Valid() error {
	if s.closed.Load() {
		return ErrClosed
	}
	return nil
}

// Lost implements Provider: closed only by Close.
func (s *Static) Lost() <-chan struct{} { return s.lost }

// Close implements Provider.
func (s *Static) Close(context.Context) error {
	s.once.Do(func() { s.closed.Store(true); close(s.lost) })
	return nil
}

// Options configure a Lease.
type Options struct {
	// Prefix starts the lease keys (e.g. "hush:"); relays sharing queues
	// must share it.
	Prefix string
	// Owner identifies this holder in Redis (default host name, pid and a
	// random suffix; it must be unique per process).
	Owner string
	// Lease is how long an acquire or renewal lets the holder mint ids
	// (default 1 min). Longer rides out longer Redis outages; a crashed
	// node's id stays blocked Lease+MaxClockSkew, and a lease taken after
	// Redis lost its data waits that long before minting.
	Lease time.Duration
	// MaxClockSkew bounds how far the wall clocks of any two relays may
	// differ (default 2 s).
	MaxClockSkew time.Duration
	// Min and Max bound the ids handed out (default 0 and MaxID), e.g. to
	// keep low ids for relays with a fixed --node-id.
	Min, Max int64
	// Timeout bounds one Redis call (default 1 s).
	Timeout time.Duration
	// Logger receives renewal failures and state changes (nil: discarded).
	Logger *slog.Logger
}

// Lease is a node id leased from Redis. It implements Provider.
type Lease struct {
	c     redis.UniversalClient
	o     Options
	log   *slog.Logger
	id    int64
	key   string
	epoch string
	start time.Time // monotonic base of deadline and notBefore

	deadline  atomic.Int64 // ns since start: ids may be minted before it
	notBefore atomic.Int64 // ns since start: ids may be minted from it on
	state     atomic.Int32 // stateOK, stateLost, stateClosed
	lost      chan struct{}
	lostOnce  sync.Once

	stop chan struct{}
	done chan struct{}
}

const (
	stateOK int32 = iota
	stateLost
	stateClosed
)

// acquireScript takes the first free id, scanning KEYS[1..n-1] from
// ARGV[3]; KEYS[n] is the epoch key. ARGV: owner, PX. Answers {index or
// -1, 1 if the epoch was missing}.
var acquireScript = redis.NewScript(`
local n = #KEYS - 1
local epoch = KEYS[#KEYS]
local fresh = 0
if redis.call('EXISTS', epoch) == 0 then
  redis.call('SET', epoch, '1')
  fresh = 1
end
local start = tonumber(ARGV[3])
for i = 0, n - 1 do
  local idx = (start + i) % n
  if redis.call('SET', KEYS[idx + 1], ARGV[1], 'NX', 'PX', ARGV[2]) then
    return {idx, fresh}
  end
end
return {-1, fresh}
`)

// renewScript extends the lease if it is still ours; re-creates it if it
// is gone. KEYS: lease, epoch. ARGV: owner, PX. Answers {1 extended, 2
// re-created, -1 held by another; 1 if the epoch was missing}.
var renewScript = redis.NewScript(`
local v = redis.call('GET', KEYS[1])
if v == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return {1, 0}
end
if v then return {-1, 0} end
local fresh = 0
if redis.call('EXISTS', KEYS[2]) == 0 then
  redis.call('SET', KEYS[2], '1')
  fresh = 1
end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return {2, fresh}
`)

// releaseScript replaces our lease with a tombstone. ARGV: owner, tombstone
// PX.
var releaseScript = redis.NewScript(`
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('SET', KEYS[1], 'released:' .. ARGV[1], 'PX', ARGV[2])
  return 1
end
return 0
`)

func (o *Options) setDefaults() error {
	if o.Lease <= 0 {
		o.Lease = DefaultLease
	}
	if o.MaxClockSkew <= 0 {
		o.MaxClockSkew = DefaultMaxClockSkew
	}
	if o.Timeout <= 0 {
		o.Timeout = DefaultTimeout
	}
	if o.Min == 0 && o.Max == 0 {
		o.Max = MaxID
	}
	if o.Min < 0 || o.Max > MaxID || o.Min > o.Max {
		return fmt.Errorf("node id range %d–%d: want 0 ≤ min ≤ max ≤ %d", o.Min, o.Max, MaxID)
	}
	if o.Lease < 30*time.Millisecond {
		return fmt.Errorf("node id lease %v too short", o.Lease)
	}
	if o.Owner == "" {
		host, _ := os.Hostname()
		var b [6]byte
		_, _ = rand.Read(b[:])
		o.Owner = fmt.Sprintf("%s/%d/%s", host, os.Getpid(), hex.EncodeToString(b[:]))
	}
	if strings.HasPrefix(o.Owner, "released:") {
		return fmt.Errorf("node id owner %q: reserved prefix", o.Owner)
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	return nil
}

func leaseKey(prefix string, id int64) string { return fmt.Sprintf("%s{nodeid}:%d", prefix, id) }
func epochKey(prefix string) string           { return prefix + "{nodeid}:epoch" }

// Acquire leases a free node id from Redis and keeps renewing it until
// Close. The returned lease may be warming (see the package doc); use Wait
// to block until it is valid.
func Acquire(ctx context.Context, c redis.UniversalClient, o Options) (*Lease, error) {
	if c == nil {
		return nil, errors.New("nodeid: nil Redis client")
	}
	if err := o.setDefaults(); err != nil {
		return nil, err
	}
	n := o.Max - o.Min + 1
	keys := make([]string, 0, n+1)
	for id := o.Min; id <= o.Max; id++ {
		keys = append(keys, leaseKey(o.Prefix, id))
	}
	keys = append(keys, epochKey(o.Prefix))
	r, err := rand.Int(rand.Reader, big.NewInt(n))
	if err != nil {
		return nil, fmt.Errorf("nodeid: random start: %w", err)
	}
	l := &Lease{c: c, o: o, start: time.Now(), lost: make(chan struct{}), stop: make(chan struct{}), done: make(chan struct{})}
	sent := time.Since(l.start)
	actx, cancel := context.WithTimeout(ctx, o.Timeout)
	res, err := acquireScript.Run(actx, c, keys, o.Owner, (o.Lease + o.MaxClockSkew).Milliseconds(), r.Int64()).Int64Slice()
	cancel()
	if err != nil {
		return nil, fmt.Errorf("nodeid: lease an id in %d–%d: %w", o.Min, o.Max, err)
	}
	if len(res) != 2 {
		return nil, fmt.Errorf("nodeid: lease script answered %v", res)
	}
	if res[0] < 0 {
		return nil, fmt.Errorf("nodeid: lease an id in %d–%d: %w", o.Min, o.Max, ErrNoFreeID)
	}
	l.id = o.Min + res[0]
	l.key = leaseKey(o.Prefix, l.id)
	l.epoch = epochKey(o.Prefix)
	l.log = o.Logger.With("node_id", l.id)
	l.deadline.Store(int64(sent + o.Lease))
	if res[1] == 1 {
		l.notBefore.Store(int64(sent + o.Lease + o.MaxClockSkew))
		l.log.Warn("node id leased from a Redis without lease history; waiting out one lease before minting ids", "wait", o.Lease+o.MaxClockSkew)
	}
	go l.renewLoop()
	return l, nil
}

// ID implements Provider.
func (l *Lease) ID() int64 { return l.id }

// Valid implements Provider.
func (l *Lease) Valid() error {
	switch l.state.Load() {
	case stateLost:
		return ErrLost
	case stateClosed:
		return ErrClosed
	}
	now := int64(time.Since(l.start))
	if now < l.notBefore.Load() {
		return ErrWarming
	}
	if now >= l.deadline.Load() {
		return ErrSuspended
	}
	return nil
}

// Lost implements Provider.
func (l *Lease) Lost() <-chan struct{} { return l.lost }

// Wait blocks until the lease is valid (nil), lost or closed, or ctx ends.
func (l *Lease) Wait(ctx context.Context) error {
	t := time.NewTicker(10 * time.Millisecond)
	defer t.Stop()
	for {
		err := l.Valid()
		if err == nil || errors.Is(err, ErrLost) || errors.Is(err, ErrClosed) {
			return err
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("wait for node id %d: %w (%w)", l.id, ctx.Err(), err)
		case <-l.lost:
		case <-t.C:
		}
	}
}

func (l *Lease) renewLoop() {
	defer close(l.done)
	every := l.o.Lease / 3
	retry := max(l.o.Lease/20, 5*time.Millisecond)
	t := time.NewTimer(every)
	defer t.Stop()
	for {
		select {
		case <-l.stop:
			return
		case <-t.C:
		}
		if err := l.renew(); err != nil {
			if errors.Is(err, ErrLost) {
				return
			}
			l.log.Warn("node id lease renewal failed", "err", err, "valid", l.Valid() == nil)
			t.Reset(retry)
			continue
		}
		t.Reset(every)
	}
}

func (l *Lease) renew() error {
	sent := time.Since(l.start)
	inGoodStanding := int64(sent) < l.deadline.Load()
	ctx, cancel := context.WithTimeout(context.Background(), l.o.Timeout)
	defer cancel()
	res, err := renewScript.Run(ctx, l.c, []string{l.key, l.epoch}, l.o.Owner, (l.o.Lease + l.o.MaxClockSkew).Milliseconds()).Int64Slice()
	if err != nil {
		return fmt.Errorf("renew node id %d: %w", l.id, err)
	}
	if len(res) != 2 {
		return fmt.Errorf("renew node id %d: script answered %v", l.id, res)
	}
	switch res[0] {
	case -1:
		l.setLost(stateLost)
		l.log.Error("node id lease lost to another node; stop minting ids", "err", ErrLost)
		return ErrLost
	case 2:
		if res[1] == 1 && !inGoodStanding {
			l.notBefore.Store(int64(sent + l.o.Lease + l.o.MaxClockSkew))
			l.log.Warn("node id re-leased from a Redis that lost its lease history; waiting out one lease", "wait", l.o.Lease+l.o.MaxClockSkew)
		} else {
			l.log.Info("node id lease re-created (Redis had lost it)")
		}
	}
	l.deadline.Store(int64(sent + l.o.Lease))
	return nil
}

func (l *Lease) setLost(state int32) {
	l.state.CompareAndSwap(stateOK, state)
	l.lostOnce.Do(func() { close(l.lost) })
}

// Close implements Provider: it stops renewing and, if the lease is still
// ours, replaces it with a tombstone that keeps the id from being leased
// again for MaxClockSkew. Valid reports ErrClosed from the moment Close
// is called.
func (l *Lease) Close(ctx context.Context) error {
	l.setLost(stateClosed)
	select {
	case <-l.stop:
		<-l.done
		return nil
	default:
		close(l.stop)
	}
	<-l.done
	ctx, cancel := context.WithTimeout(ctx, l.o.Timeout)
	defer cancel()
	// The tombstone also keeps a crash-free restart of this node from
	// getting the id back before its old ids are in the past everywhere.
	if err := releaseScript.Run(ctx, l.c, []string{l.key}, l.o.Owner, (l.o.MaxClockSkew + time.Millisecond).Milliseconds()).Err(); err != nil {
		return fmt.Errorf("release node id %d (it expires by itself within %v): %w", l.id, l.o.Lease+l.o.MaxClockSkew, err)
	}
	return nil
}

// halt stops renewing without releasing, as a crash would (tests).
func (l *Lease) halt() {
	close(l.stop)
	<-l.done
}
