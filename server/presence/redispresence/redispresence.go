// Package redispresence is the Redis implementation of presence.Tracker:
// every relay of a deployment sees every heartbeat, subscription and
// hiding setting, and learns of every change of them, so mutual consent
// and hidden last-seen hold across nodes exactly as in one process.
//
// # Keys
//
// Per account A (the {A} hash tag keeps an account's keys in one Redis
// Cluster slot, so the subscription script can touch two of them):
//
//	<prefix>p:{A}:seen       last heartbeat, Unix ms (string, TTL LastSeenTTL)
//	<prefix>p:{A}:hidden     "1" while A hides its last-seen (no TTL)
//	<prefix>p:{A}:sub:<dev>  set: the accounts device <dev> of A follows
//	<prefix>p:{A}:follows    hash: account → how many of A's devices follow it
//
// and, for noticing accounts going offline,
//
//	<prefix>p:online:{k}     sorted set of online accounts by last heartbeat,
//	                         one of Shards (16) by hash of the account
//
// # Operations
//
//   - Heartbeat: a script bumps the account's score in its online shard and
//     says whether it was absent or stale (the account came online), and
//     the last-seen key is set, in one pipelined round trip.
//   - Online is computed, not stored: now − last-seen < OnlineWindow. Every
//     CheckInterval each node runs a sweep script on every shard that
//     removes (atomically, so exactly one node reports each) the accounts
//     whose last heartbeat left the window, and emits their offline events.
//   - Subscribe replaces a device's set with one script that also keeps the
//     account-level counts, and answers which accounts the account started
//     or stopped following — the consent changes to announce.
//   - Consent is checked in View: viewer follows subject (the viewer's
//     follows hash) and subject follows viewer (the subject's), read in the
//     same round trip as the subject's last-seen and both hiding flags.
//     Hiding works as in presence.Memory.
//
// # Events across nodes
//
// A tracker delivers the events it causes to its own Watch function at
// once, and publishes them on one channel, <prefix>p:events (sharded
// pub/sub on a cluster), which every node subscribes to; a node skips the
// messages it published itself. Broadcasting to every node, rather than to
// the nodes whose devices follow the subject, is deliberate: the tracker
// is told of subscriptions (Subscribe), not of connections coming and going,
// so it cannot know which nodes hold followers now, and keeping per-subject
// interest in Redis would cost a write per connection per contact. Presence
// events are rare (an account goes online or offline a few times an hour)
// and small (~20 bytes), so each node receiving all of them is cheap: at
// 100 events/s and 10 nodes, 1,000 deliveries/s in total. The relay
// filters them by its local subscriptions, and re-checks consent with View
// before telling any device anything, so an event says only "look again".
// Delivery is at-most-once, as the Tracker contract allows.
//
// # Differences from presence.Memory
//
// Last-seen expires LastSeenTTL (90 days) after the last heartbeat; the
// account then shows as never seen. Node clocks date heartbeats, so clock
// skew between relays shifts online windows by up to the skew.
package redispresence

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"hash/fnv"
	"log/slog"
	"net"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/hushchat/hush/protocol"
	"github.com/hushchat/hush/server/presence"
	"github.com/hushchat/hush/server/queue"
)

// Defaults of Options' zero fields.
const (
	DefaultLastSeenTTL = 90 * 24 * time.Hour
	DefaultShards      = 16
	DefaultTimeout     = time.Second
)

// sweepLimit bounds the accounts one sweep script removes from a shard.
const sweepLimit = 1000

// Options configure a Tracker.
type Options struct {
	// Prefix starts every key and channel (e.g. "hush:"). In a Redis
	// Cluster it must not contain '{' or '}'.
	Prefix string
	// OnlineWindow: how long a heartbeat keeps an account online (default
	// presence.DefaultOnlineWindow).
	OnlineWindow time.Duration
	// CheckInterval: how often the online sets are swept for accounts gone
	// offline (default OnlineWindow/10, at least 10 ms).
	CheckInterval time.Duration
	// LastSeenTTL: how long a last-seen is kept after the last heartbeat
	// (default 90 days).
	LastSeenTTL time.Duration
	// Shards: number of online sorted sets (default 16), so that a cluster
	// spreads the heartbeat load. All nodes must agree on it.
	Shards int
	// Timeout bounds one Redis round trip (default 1 s).
	Timeout time.Duration
	// Now is the clock (nil: time.Now).
	Now func() time.Time
	// Logger receives subscription trouble (nil: discarded).
	Logger *slog.Logger
}

// Tracker is a presence.Tracker on Redis. It is safe for concurrent use.
type Tracker struct {
	c       redis.UniversalClient
	o       Options
	log     *slog.Logger
	cluster bool
	channel string
	origin  [originLen]byte

	mu    sync.Mutex
	watch func(presence.Event)

	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup
	psMu   sync.Mutex
	ps     *redis.PubSub
	once   sync.Once
}

var _ presence.Tracker = (*Tracker)(nil)

// New returns a running Tracker (its sweep and event listener start now).
// It fails when Redis does not answer before ctx ends.
func New(ctx context.Context, c redis.UniversalClient, o Options) (*Tracker, error) {
	if c == nil {
		return nil, errors.New("redispresence: nil Redis client")
	}
	_, cluster := c.(*redis.ClusterClient)
	if cluster && strings.ContainsAny(o.Prefix, "{}") {
		return nil, fmt.Errorf("redispresence: prefix %q contains a hash tag; not allowed on a Redis Cluster", o.Prefix)
	}
	if o.OnlineWindow <= 0 {
		o.OnlineWindow = presence.DefaultOnlineWindow
	}
	if o.CheckInterval <= 0 {
		o.CheckInterval = max(o.OnlineWindow/10, 10*time.Millisecond)
	}
	if o.LastSeenTTL <= 0 {
		o.LastSeenTTL = DefaultLastSeenTTL
	}
	if o.Shards <= 0 {
		o.Shards = DefaultShards
	}
	if o.Timeout <= 0 {
		o.Timeout = DefaultTimeout
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	t := &Tracker{c: c, o: o, log: o.Logger, cluster: cluster, channel: o.Prefix + "p:events"}
	_, _ = rand.Read(t.origin[:])
	pctx, cancel := context.WithTimeout(ctx, o.Timeout)
	err := c.Ping(pctx).Err()
	cancel()
	if err != nil {
		return nil, fmt.Errorf("redispresence: ping redis: %w", err)
	}
	t.ctx, t.cancel = context.WithCancel(context.Background())
	t.ps = t.subscribe()
	// Wait for the subscription so that events published after New
	// returns reach this node.
	if _, err := t.ps.ReceiveTimeout(ctx, o.Timeout); err != nil {
		t.Close()
		return nil, fmt.Errorf("redispresence: subscribe %s: %w", t.channel, err)
	}
	t.wg.Add(2)
	go t.listen()
	go t.sweepLoop()
	return t, nil
}

func (t *Tracker) subscribe() *redis.PubSub {
	if t.cluster {
		return t.c.SSubscribe(t.ctx, t.channel)
	}
	return t.c.Subscribe(t.ctx, t.channel)
}

func (t *Tracker) key(account, what string) string {
	return t.o.Prefix + "p:{" + account + "}:" + what
}

func (t *Tracker) onlineKey(account string) string {
	h := fnv.New32a()
	h.Write([]byte(account))
	return t.onlineShard(int(h.Sum32() % uint32(t.o.Shards)))
}

func (t *Tracker) onlineShard(k int) string {
	return t.o.Prefix + "p:online:{" + strconv.Itoa(k) + "}"
}

func checkAccount(what, a string) error {
	if a == "" || len(a) > protocol.MaxAccountNameLen {
		return fmt.Errorf("%s %q: want 1–%d bytes", what, a, protocol.MaxAccountNameLen)
	}
	return nil
}

// heartbeatScript: KEYS[1] online shard; ARGV: account, now ms, window
// ms. Answers 1 when the account came online (absent or stale).
var heartbeatScript = redis.NewScript(`
local prev = redis.call('ZSCORE', KEYS[1], ARGV[1])
redis.call('ZADD', KEYS[1], 'GT', ARGV[2], ARGV[1])
if not prev or tonumber(ARGV[2]) - tonumber(prev) >= tonumber(ARGV[3]) then return 1 end
return 0
`)

// Heartbeat implements presence.Tracker.
func (t *Tracker) Heartbeat(ctx context.Context, account string) error {
	if err := checkAccount("heartbeat: account", account); err != nil {
		return err
	}
	now := t.o.Now().UnixMilli()
	ctx, cancel := context.WithTimeout(ctx, t.o.Timeout)
	defer cancel()
	var came *redis.Cmd
	err := runScripts(ctx, t.c, func(pipe redis.Pipeliner) {
		came = heartbeatScript.EvalSha(ctx, pipe, []string{t.onlineKey(account)}, account, now, t.o.OnlineWindow.Milliseconds())
		pipe.Set(ctx, t.key(account, "seen"), now, t.o.LastSeenTTL)
	}, heartbeatScript)
	if err != nil {
		return fmt.Errorf("heartbeat %s: %w", account, err)
	}
	if n, _ := came.Int64(); n == 1 {
		t.emit(ctx, presence.Event{Subject: account})
	}
	return nil
}

// runScripts runs the pipeline build makes, which holds EVALSHA calls of
// scripts; when Redis does not know a script (NOSCRIPT: a restarted or
// failed-over server) it loads them — on every shard of a cluster — and
// builds and runs the pipeline again. Every command must be idempotent.
func runScripts(ctx context.Context, c redis.UniversalClient, build func(redis.Pipeliner), scripts ...*redis.Script) error {
	for attempt := 0; ; attempt++ {
		pipe := c.Pipeline()
		build(pipe)
		_, err := pipe.Exec(ctx)
		if err == nil || errors.Is(err, redis.Nil) {
			return nil
		}
		if attempt > 0 || !redis.HasErrorPrefix(err, "NOSCRIPT") {
			return err
		}
		for _, s := range scripts {
			if err := s.Load(ctx, c).Err(); err != nil {
				return fmt.Errorf("load script: %w", err)
			}
		}
	}
}

// SetHidden implements presence.Tracker.
func (t *Tracker) SetHidden(ctx context.Context, account string, hidden bool) error {
	if err := checkAccount("hide: account", account); err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(ctx, t.o.Timeout)
	defer cancel()
	var changed bool
	if hidden {
		ok, err := t.c.SetNX(ctx, t.key(account, "hidden"), "1", 0).Result()
		if err != nil {
			return fmt.Errorf("hide last-seen of %s: %w", account, err)
		}
		changed = ok
	} else {
		n, err := t.c.Del(ctx, t.key(account, "hidden")).Result()
		if err != nil {
			return fmt.Errorf("unhide last-seen of %s: %w", account, err)
		}
		changed = n > 0
	}
	if changed {
		t.emit(ctx, presence.Event{Subject: account}, presence.Event{Viewer: account})
	}
	return nil
}

// subscribeScript replaces a device's subscription set. KEYS: the device's
// set, the account's follows hash. ARGV: the new accounts (distinct).
// Answers the accounts the account as a whole started or stopped
// following.
var subscribeScript = redis.NewScript(`
local old = redis.call('SMEMBERS', KEYS[1])
local new = {}
for i = 1, #ARGV do new[ARGV[i]] = true end
local had = {}
local changed = {}
for _, a in ipairs(old) do
  had[a] = true
  if not new[a] then
    if redis.call('HINCRBY', KEYS[2], a, -1) <= 0 then
      redis.call('HDEL', KEYS[2], a)
      changed[#changed + 1] = a
    end
  end
end
for i = 1, #ARGV do
  local a = ARGV[i]
  if not had[a] then
    if redis.call('HINCRBY', KEYS[2], a, 1) == 1 then changed[#changed + 1] = a end
  end
end
redis.call('DEL', KEYS[1])
for i = 1, #ARGV, 1000 do
  redis.call('SADD', KEYS[1], unpack(ARGV, i, math.min(i + 999, #ARGV)))
end
return changed
`)

// Subscribe implements presence.Tracker.
func (t *Tracker) Subscribe(ctx context.Context, d queue.Device, accounts []string) error {
	if err := checkAccount("subscribe: device account", d.Account); err != nil {
		return err
	}
	if len(accounts) > protocol.MaxSubscriptions {
		return fmt.Errorf("subscribe %s: %d accounts exceed %d", d, len(accounts), protocol.MaxSubscriptions)
	}
	seen := make(map[string]bool, len(accounts))
	args := make([]any, 0, len(accounts))
	for _, a := range accounts {
		if err := checkAccount("subscribe: account", a); err != nil {
			return fmt.Errorf("subscribe %s: %w", d, err)
		}
		if a == d.Account || seen[a] {
			continue
		}
		seen[a] = true
		args = append(args, a)
	}
	ctx, cancel := context.WithTimeout(ctx, t.o.Timeout)
	defer cancel()
	keys := []string{t.key(d.Account, "sub:"+strconv.FormatUint(uint64(d.ID), 10)), t.key(d.Account, "follows")}
	changed, err := subscribeScript.Run(ctx, t.c, keys, args...).StringSlice()
	if err != nil {
		return fmt.Errorf("subscribe %s: %w", d, err)
	}
	evs := make([]presence.Event, len(changed))
	for i, s := range changed {
		evs[i] = presence.Event{Subject: d.Account, Viewer: s}
	}
	t.emit(ctx, evs...)
	return nil
}

// Forget implements presence.Tracker.
func (t *Tracker) Forget(ctx context.Context, d queue.Device) error {
	return t.Subscribe(ctx, d, nil)
}

// View implements presence.Tracker, in one pipelined round trip.
func (t *Tracker) View(ctx context.Context, viewer string, subjects []string) ([]presence.Status, error) {
	if err := checkAccount("view: viewer", viewer); err != nil {
		return nil, err
	}
	if len(subjects) > protocol.MaxSubscriptions {
		return nil, fmt.Errorf("view: %d subjects exceed %d", len(subjects), protocol.MaxSubscriptions)
	}
	var asked []string
	for _, s := range subjects {
		if s != viewer && checkAccount("", s) == nil {
			asked = append(asked, s)
		}
	}
	if len(asked) == 0 {
		return nil, nil
	}
	ctx, cancel := context.WithTimeout(ctx, t.o.Timeout)
	defer cancel()
	pipe := t.c.Pipeline()
	follows := pipe.HMGet(ctx, t.key(viewer, "follows"), asked...)
	viewerHides := pipe.Exists(ctx, t.key(viewer, "hidden"))
	type subj struct {
		back   *redis.BoolCmd
		seen   *redis.StringCmd
		hidden *redis.IntCmd
	}
	per := make([]subj, len(asked))
	for i, s := range asked {
		per[i] = subj{
			back:   pipe.HExists(ctx, t.key(s, "follows"), viewer),
			seen:   pipe.Get(ctx, t.key(s, "seen")),
			hidden: pipe.Exists(ctx, t.key(s, "hidden")),
		}
	}
	if _, err := pipe.Exec(ctx); err != nil && !errors.Is(err, redis.Nil) {
		return nil, fmt.Errorf("view for %s: %w", viewer, err)
	}
	fv, err := follows.Result()
	if err != nil {
		return nil, fmt.Errorf("view for %s: %w", viewer, err)
	}
	now := t.o.Now()
	var out []presence.Status
	for i, s := range asked {
		if fv[i] == nil || !per[i].back.Val() {
			continue // no mutual consent
		}
		var last time.Time
		if v, err := per[i].seen.Result(); err == nil {
			if ms, err := strconv.ParseInt(v, 10, 64); err == nil {
				last = time.UnixMilli(ms)
			}
		} else if !errors.Is(err, redis.Nil) {
			return nil, fmt.Errorf("view for %s: last-seen of %s: %w", viewer, s, err)
		}
		st := presence.Status{
			Account: s,
			Online:  !last.IsZero() && now.Sub(last) < t.o.OnlineWindow,
			Hidden:  viewerHides.Val() > 0 || per[i].hidden.Val() > 0,
		}
		if !st.Hidden {
			st.LastSeen = last
		}
		out = append(out, st)
	}
	return out, nil
}

// Watch implements presence.Tracker. fn is called from the goroutine that
// caused a local event, from the sweep, or from the event listener, and
// must not block.
func (t *Tracker) Watch(fn func(presence.Event)) {
	t.mu.Lock()
	t.watch = fn
	t.mu.Unlock()
}

func (t *Tracker) deliver(evs []presence.Event) {
	t.mu.Lock()
	fn := t.watch
	t.mu.Unlock()
	if fn == nil {
		return
	}
	for _, e := range evs {
		fn(e)
	}
}

// emit delivers events here and publishes them to the other nodes. A
// failed publish is logged, not returned: the change it announces is
// stored, and events are at-most-once.
func (t *Tracker) emit(ctx context.Context, evs ...presence.Event) {
	if len(evs) == 0 {
		return
	}
	t.deliver(evs)
	pipe := t.c.Pipeline()
	for _, m := range encodeEvents(t.origin, evs) {
		if t.cluster {
			pipe.SPublish(ctx, t.channel, m)
		} else {
			pipe.Publish(ctx, t.channel, m)
		}
	}
	if _, err := pipe.Exec(ctx); err != nil {
		t.log.Warn("presence events not published to other nodes", "events", len(evs), "err", err)
	}
}

// sweepScript removes and returns up to ARGV[2] accounts of the online set
// KEYS[1] whose last heartbeat is at or before ARGV[1] (ms).
var sweepScript = redis.NewScript(`
local gone = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, ARGV[2])
if #gone > 0 then redis.call('ZREM', KEYS[1], unpack(gone)) end
return gone
`)

// sweep reports the accounts whose last heartbeat left the window.
func (t *Tracker) sweep(ctx context.Context) error {
	cutoff := t.o.Now().Add(-t.o.OnlineWindow).UnixMilli()
	ctx, cancel := context.WithTimeout(ctx, t.o.Timeout)
	defer cancel()
	cmds := make([]*redis.Cmd, t.o.Shards)
	err := runScripts(ctx, t.c, func(pipe redis.Pipeliner) {
		for k := range t.o.Shards {
			cmds[k] = sweepScript.EvalSha(ctx, pipe, []string{t.onlineShard(k)}, cutoff, sweepLimit)
		}
	}, sweepScript)
	if err != nil {
		return fmt.Errorf("presence sweep: %w", err)
	}
	var evs []presence.Event
	for _, c := range cmds {
		gone, err := c.StringSlice()
		if err != nil {
			return fmt.Errorf("presence sweep: %w", err)
		}
		for _, a := range gone {
			evs = append(evs, presence.Event{Subject: a})
		}
	}
	t.emit(ctx, evs...)
	return nil
}

func (t *Tracker) sweepLoop() {
	defer t.wg.Done()
	tick := time.NewTicker(t.o.CheckInterval)
	defer tick.Stop()
	for {
		select {
		case <-t.ctx.Done():
			return
		case <-tick.C:
		}
		if err := t.sweep(t.ctx); err != nil && t.ctx.Err() == nil {
			t.log.Warn("presence sweep failed", "err", err)
		}
		// Proves the subscription connection alive; see listen.
		if ps := t.pubsub(); ps != nil {
			ctx, cancel := context.WithTimeout(t.ctx, t.o.Timeout)
			_ = ps.Ping(ctx)
			cancel()
		}
	}
}

func (t *Tracker) pubsub() *redis.PubSub {
	t.psMu.Lock()
	defer t.psMu.Unlock()
	return t.ps
}

// listen delivers other nodes' events. go-redis reconnects and
// resubscribes a broken connection; a connection on which nothing arrives
// for several ping intervals (the sweep loop pings it) is replaced.
func (t *Tracker) listen() {
	defer t.wg.Done()
	stallAfter := 3*t.o.CheckInterval + t.o.Timeout
	backoff := 20 * time.Millisecond
	for {
		ps := t.pubsub()
		start := time.Now()
		msg, err := ps.ReceiveTimeout(t.ctx, stallAfter)
		if t.ctx.Err() != nil {
			return
		}
		if err != nil {
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() && time.Since(start) >= stallAfter {
				t.log.Warn("presence subscription stalled; reconnecting")
				_ = ps.Close()
				fresh := t.subscribe()
				t.psMu.Lock()
				t.ps = fresh
				t.psMu.Unlock()
				continue
			}
			select {
			case <-t.ctx.Done():
				return
			case <-time.After(backoff):
			}
			backoff = min(2*backoff, time.Second)
			continue
		}
		backoff = 20 * time.Millisecond
		m, ok := msg.(*redis.Message)
		if !ok {
			continue
		}
		origin, evs, err := decodeEvents([]byte(m.Payload))
		if err != nil {
			t.log.Warn("dropped an undecodable presence message", "err", err)
			continue
		}
		if origin == t.origin {
			continue // delivered locally when it happened
		}
		t.deliver(evs)
	}
}

// Close implements presence.Tracker: it stops the sweep and the listener.
func (t *Tracker) Close() error {
	t.once.Do(func() {
		t.cancel()
		t.psMu.Lock()
		if t.ps != nil {
			_ = t.ps.Close()
		}
		t.psMu.Unlock()
		t.wg.Wait()
	})
	return nil
}
