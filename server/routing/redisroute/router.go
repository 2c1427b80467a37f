package redisroute

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"hash/fnv"
	"log/slog"
	"net"
	"regexp"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/hushchat/hush/server/queue"
	"github.com/hushchat/hush/server/routing"
)

// Defaults of Options' zero fields.
const (
	DefaultRegistrationTTL = 2 * time.Minute
	DefaultTimeout         = 500 * time.Millisecond
	DefaultHealthInterval  = time.Second
	DefaultPollInterval    = 5 * time.Second
)

// pollSlices: while Redis is down the attached devices are rung in this
// many slices spread over PollInterval, so the relay's queue store sees a
// steady trickle of fetches instead of a spike every PollInterval.
const pollSlices = 5

// refreshBatch bounds the commands of one pipelined refresh round trip.
const refreshBatch = 1000

// ErrUnavailable is returned by Ring while Redis is unreachable: the bells
// were not rung (the envelopes are stored; fallback polling delivers them).
var ErrUnavailable = errors.New("routing: redis unavailable")

var nodeName = regexp.MustCompile(`^[A-Za-z0-9._-]{1,64}$`)

// Options configure a Router.
type Options struct {
	// Prefix starts every key and channel name (e.g. "hush:"). In a Redis
	// Cluster it must not contain '{' or '}' (it would pin every key to
	// one slot).
	Prefix string
	// Node names this relay in channel names and registrations. It must be
	// unique among live relays; empty means a random name, which is what a
	// relay should use (a restarted relay then never receives bells meant
	// for its previous life). [A-Za-z0-9._-], at most 64 characters.
	Node string
	// RegistrationTTL: a device's registration expires this long after its
	// node last refreshed it (default 2 min). It only matters for a node
	// that vanished without cleaning up, and even then barely: a bell
	// published to a node nobody listens for reaches no subscriber, Ring
	// reports the device offline at once and deletes the registration.
	// Refreshing costs Redis ~1 µs of CPU per device per RefreshInterval,
	// which is why the TTL is long.
	RegistrationTTL time.Duration
	// RefreshInterval: how often registrations are refreshed (default
	// RegistrationTTL/3).
	RefreshInterval time.Duration
	// Timeout bounds each Redis round trip the router makes (default
	// 500 ms). Ring and Attach never wait longer, whatever the caller's
	// context says.
	Timeout time.Duration
	// HealthInterval: how often Redis and the subscription are checked
	// (default 1 s). An outage is noticed within about this long (at once
	// when an operation fails), and so is the end of one.
	HealthInterval time.Duration
	// PollInterval: while Redis is unreachable, every attached device is
	// rung once per PollInterval (default 5 s) so that its connection
	// fetches from its queue; see "Failure" in the package doc.
	PollInterval time.Duration
	// OnHealth, when set, is called from the router's goroutine on every
	// change of Healthy (true: Redis is back and every registration is
	// re-established). It must not block.
	OnHealth func(healthy bool)
	// Logger receives outage and recovery reports (nil: discarded).
	Logger *slog.Logger
}

// Stats are counters for metrics and tests.
type Stats struct {
	BellsPublished  uint64 // bells handed to Redis for another node
	BellsReceived   uint64 // bells that arrived on this node's channel
	BellsPolled     uint64 // bells this router rang itself (fallback polling and catch-up)
	Evictions       uint64 // evictions delivered to this node's Handler
	StaleDeleted    uint64 // registrations of silent nodes removed
	Recoveries      uint64 // times the router became healthy again
	Reregistrations uint64 // registrations written by refresh or recovery because Redis had lost them
	BadMessages     uint64 // undecodable channel messages (dropped)
}

type counters struct {
	published, received, polled, evictions, stale, recoveries, rereg, bad atomic.Uint64
}

// reg is a session attached to this node.
type reg struct {
	session uint64
	// confirmed: Redis holds this session's registration (as of the last
	// write). An unconfirmed one was attached while Redis was down and
	// claims its key on recovery, the newer session winning.
	confirmed bool
}

type staleReg struct{ key, value string }

// Router is the Redis implementation of routing.Router. Create it with
// New; it is safe for concurrent use.
type Router struct {
	c       redis.UniversalClient
	o       Options
	log     *slog.Logger
	cluster bool
	channel string

	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup

	h atomic.Pointer[handlerBox]

	// stripes serialise Attach and Detach of one device on this node, so
	// the local session table and Redis see them in the same order.
	stripes [256]sync.Mutex

	mu      sync.Mutex
	local   map[queue.Device]reg
	gone    map[queue.Device]uint64 // detached while Redis was down: delete on recovery
	closed  bool
	closing chan struct{}

	psMu sync.Mutex
	ps   *redis.PubSub

	healthy    atomic.Bool
	subscribed atomic.Bool
	broken     atomic.Bool // an operation failed since the last check
	kick       chan struct{}
	stale      chan []staleReg

	n counters
}

type handlerBox struct{ routing.Handler }

var _ routing.Router = (*Router)(nil)

// New starts a Router on c and returns once this node's channel is
// subscribed, or fails when Redis does not answer before ctx ends. After
// that, outages are survived (see the package doc), never reported as
// errors from New.
func New(ctx context.Context, c redis.UniversalClient, o Options) (*Router, error) {
	if c == nil {
		return nil, errors.New("redisroute: nil Redis client")
	}
	if o.Node == "" {
		var b [8]byte
		_, _ = rand.Read(b[:])
		o.Node = "n" + hex.EncodeToString(b[:])
	}
	if !nodeName.MatchString(o.Node) {
		return nil, fmt.Errorf("redisroute: node name %q: want 1-64 of [A-Za-z0-9._-]", o.Node)
	}
	_, cluster := c.(*redis.ClusterClient)
	if cluster && strings.ContainsAny(o.Prefix, "{}") {
		return nil, fmt.Errorf("redisroute: prefix %q contains a hash tag; in a Redis Cluster it would put every key in one slot", o.Prefix)
	}
	if o.RegistrationTTL <= 0 {
		o.RegistrationTTL = DefaultRegistrationTTL
	}
	if o.RegistrationTTL < time.Millisecond {
		return nil, fmt.Errorf("redisroute: registration TTL %v below 1ms", o.RegistrationTTL)
	}
	if o.RefreshInterval <= 0 {
		o.RefreshInterval = o.RegistrationTTL / 3
	}
	if o.RefreshInterval >= o.RegistrationTTL {
		return nil, fmt.Errorf("redisroute: refresh interval %v must be shorter than the registration TTL %v", o.RefreshInterval, o.RegistrationTTL)
	}
	if o.Timeout <= 0 {
		o.Timeout = DefaultTimeout
	}
	if o.HealthInterval <= 0 {
		o.HealthInterval = DefaultHealthInterval
	}
	if o.PollInterval <= 0 {
		o.PollInterval = DefaultPollInterval
	}
	if o.PollInterval < pollSlices*time.Millisecond {
		o.PollInterval = pollSlices * time.Millisecond
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	r := &Router{
		c:       c,
		o:       o,
		log:     o.Logger.With("node", o.Node),
		cluster: cluster,
		channel: o.Prefix + "node:" + o.Node,
		local:   make(map[queue.Device]reg),
		gone:    make(map[queue.Device]uint64),
		closing: make(chan struct{}),
		kick:    make(chan struct{}, 1),
		stale:   make(chan []staleReg, 16),
	}
	if !contextDeadlines(c) {
		r.log.Warn("redis client ignores context deadlines; Ring may block for the client's read timeout during an outage (use redisroute.NewClient)")
	}
	pctx, cancel := context.WithTimeout(ctx, o.Timeout)
	err := c.Ping(pctx).Err()
	cancel()
	if err != nil {
		return nil, fmt.Errorf("redisroute: ping redis: %w", err)
	}
	r.ctx, r.cancel = context.WithCancel(context.Background())
	r.ps = r.subscribe()
	r.wg.Add(2)
	go r.listen()
	go r.maintain()
	// Wait for the subscription, so that bells published after New returns
	// reach this node.
	t := time.NewTicker(10 * time.Millisecond)
	defer t.Stop()
	for !r.healthy.Load() {
		select {
		case <-ctx.Done():
			r.Close()
			return nil, fmt.Errorf("redisroute: subscribe to %s: %w", r.channel, ctx.Err())
		case <-t.C:
		}
	}
	return r, nil
}

func (r *Router) subscribe() *redis.PubSub {
	// The SUBSCRIBE is sent now; its confirmation (or failure) reaches the
	// listener, and go-redis resubscribes on every reconnect.
	if r.cluster {
		return r.c.SSubscribe(r.ctx, r.channel)
	}
	return r.c.Subscribe(r.ctx, r.channel)
}

// Node returns this router's node name.
func (r *Router) Node() string { return r.o.Node }

// Healthy reports whether Redis answers, this node's channel is
// subscribed, and every attached device's registration is in Redis. While
// it is false, Ring fails fast with ErrUnavailable and the router rings
// the attached devices itself every PollInterval.
func (r *Router) Healthy() bool { return r.healthy.Load() }

// Stats returns the router's counters.
func (r *Router) Stats() Stats {
	return Stats{
		BellsPublished:  r.n.published.Load(),
		BellsReceived:   r.n.received.Load(),
		BellsPolled:     r.n.polled.Load(),
		Evictions:       r.n.evictions.Load(),
		StaleDeleted:    r.n.stale.Load(),
		Recoveries:      r.n.recoveries.Load(),
		Reregistrations: r.n.rereg.Load(),
		BadMessages:     r.n.bad.Load(),
	}
}

// Subscribe implements routing.Router.
func (r *Router) Subscribe(h routing.Handler) { r.h.Store(&handlerBox{h}) }

func (r *Router) handler() routing.Handler {
	if b := r.h.Load(); b != nil {
		return b.Handler
	}
	return nil
}

func (r *Router) key(dev queue.Device) string {
	return fmt.Sprintf("%sdev:%s.%d", r.o.Prefix, dev.Account, dev.ID)
}

func (r *Router) nodeChannel(node string) string { return r.o.Prefix + "node:" + node }

func (r *Router) stripe(dev queue.Device) *sync.Mutex {
	h := fnv.New32a()
	h.Write([]byte(dev.Account))
	return &r.stripes[(h.Sum32()^dev.ID)%uint32(len(r.stripes))]
}

// Attach implements routing.Router. It fails only after Close: when Redis
// is unreachable the session is kept here, served by fallback polling, and
// registered (evicting any older session elsewhere) when Redis is back.
//
// Sessions of one device on one node are ordered by id (the relay's
// Snowflake sequence): an Attach of a session older than the one already
// attached here evicts the incoming session at once.
func (r *Router) Attach(ctx context.Context, dev queue.Device, session uint64) error {
	mu := r.stripe(dev)
	mu.Lock()
	defer mu.Unlock()
	r.mu.Lock()
	if r.closed {
		r.mu.Unlock()
		return fmt.Errorf("attach %s: router closed", dev)
	}
	prev, had := r.local[dev]
	if had && prev.session > session {
		r.mu.Unlock()
		r.evictLocal(dev, session)
		return nil
	}
	r.local[dev] = reg{session: session}
	delete(r.gone, dev)
	r.mu.Unlock()
	if had && prev.session != session {
		r.evictLocal(dev, prev.session)
	}
	if !r.healthy.Load() {
		return nil
	}
	octx, cancel := context.WithTimeout(ctx, r.o.Timeout)
	defer cancel()
	val := regValue(session, r.o.Node)
	old, err := r.c.SetArgs(octx, r.key(dev), val, redis.SetArgs{Get: true, TTL: r.o.RegistrationTTL}).Result()
	if err != nil && !errors.Is(err, redis.Nil) {
		r.fail(ctx, fmt.Errorf("attach %s: %w", dev, err))
		return nil
	}
	r.confirm(dev, session)
	if old == "" || old == val {
		return nil
	}
	oldSession, node, err := parseRegValue(old)
	if err != nil {
		r.log.Warn("overwrote a malformed registration", "account", dev.Account, "device", dev.ID, "err", err)
		return nil
	}
	if node == r.o.Node {
		if !had || prev.session != oldSession {
			r.evictLocal(dev, oldSession)
		}
		return nil
	}
	// If this publish is lost, the old node still finds out at its next
	// refresh, which sees another session in the key.
	if err := r.publish(octx, node, encodeEvictions([]eviction{{dev, oldSession}})); err != nil {
		r.log.Warn("eviction not published; the old node will notice at its next refresh", "account", dev.Account, "device", dev.ID, "err", err)
	}
	return nil
}

func (r *Router) confirm(dev queue.Device, session uint64) {
	r.mu.Lock()
	if g, ok := r.local[dev]; ok && g.session == session {
		g.confirmed = true
		r.local[dev] = g
	}
	r.mu.Unlock()
}

// detachScript deletes a registration only if it is still the caller's.
var detachScript = redis.NewScript(`
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
`)

// Detach implements routing.Router. While Redis is unreachable the
// registration is deleted on recovery (until then it merely makes the
// device look attached to this node, which ignores its bells).
func (r *Router) Detach(ctx context.Context, dev queue.Device, session uint64) error {
	mu := r.stripe(dev)
	mu.Lock()
	defer mu.Unlock()
	r.mu.Lock()
	if g, ok := r.local[dev]; ok && g.session == session {
		delete(r.local, dev)
	}
	closed := r.closed
	if !closed && !r.healthy.Load() {
		r.gone[dev] = session
	}
	r.mu.Unlock()
	if closed || !r.healthy.Load() {
		return nil
	}
	octx, cancel := context.WithTimeout(ctx, r.o.Timeout)
	defer cancel()
	if err := detachScript.Run(octx, r.c, []string{r.key(dev)}, regValue(session, r.o.Node)).Err(); err != nil {
		r.mu.Lock()
		if _, ok := r.local[dev]; !ok {
			r.gone[dev] = session
		}
		r.mu.Unlock()
		r.fail(ctx, fmt.Errorf("detach %s: %w", dev, err))
		return fmt.Errorf("detach %s: %w", dev, err)
	}
	return nil
}

// Ring implements routing.Router: one lookup round trip for all bells
// (MGET, or a pipeline of GETs on a cluster), then one round trip that
// publishes one message per target node. A device registered to a node
// whose channel has no subscriber (the node died) is reported offline.
func (r *Router) Ring(ctx context.Context, bells []routing.Bell) ([]bool, error) {
	attached := make([]bool, len(bells))
	if len(bells) == 0 {
		return attached, nil
	}
	select {
	case <-r.closing:
		return nil, errors.New("ring: router closed")
	default:
	}
	if !r.healthy.Load() {
		return nil, ErrUnavailable
	}
	octx, cancel := context.WithTimeout(ctx, r.o.Timeout)
	defer cancel()
	if len(bells) == 1 && !r.cluster {
		return r.ringOne(ctx, octx, bells[0])
	}
	keys := make([]string, len(bells))
	for i, b := range bells {
		keys[i] = r.key(b.Device)
	}
	vals, err := r.lookup(octx, keys)
	if err != nil {
		err = fmt.Errorf("ring: look up %d devices: %w", len(bells), err)
		r.fail(ctx, err)
		return nil, err
	}
	groups := make(map[string][]int)
	h := r.handler()
	for i, v := range vals {
		if v == "" {
			continue
		}
		_, node, err := parseRegValue(v)
		if err != nil {
			continue // never written by a router; treat as offline
		}
		if node == r.o.Node {
			attached[i] = true
			if h != nil {
				h.Ring(bells[i])
			}
			continue
		}
		groups[node] = append(groups[node], i)
	}
	if len(groups) == 0 {
		return attached, nil
	}
	type pub struct {
		cmd  *redis.IntCmd
		idx  []int
		node string
	}
	var pubs []pub
	pipe := r.c.Pipeline()
	for node, idx := range groups {
		sub := make([]routing.Bell, len(idx))
		for k, i := range idx {
			sub[k] = bells[i]
		}
		batches, err := encodeBells(sub)
		if err != nil {
			return nil, fmt.Errorf("ring: %w", err)
		}
		off := 0
		for _, b := range batches {
			pubs = append(pubs, pub{r.publishCmd(octx, pipe, r.nodeChannel(node), b.msg), idx[off : off+b.n], node})
			off += b.n
		}
	}
	if _, err := pipe.Exec(octx); err != nil {
		err = fmt.Errorf("ring: publish to %d nodes: %w", len(groups), err)
		r.fail(ctx, err)
		return nil, err
	}
	var stale []staleReg
	for _, p := range pubs {
		if p.cmd.Val() > 0 {
			for _, i := range p.idx {
				attached[i] = true
			}
			r.n.published.Add(uint64(len(p.idx)))
			continue
		}
		for _, i := range p.idx {
			stale = append(stale, staleReg{keys[i], vals[i]})
		}
	}
	if len(stale) > 0 {
		select {
		case r.stale <- stale:
		default: // cleanup is an optimisation; TTLs remove them anyway
		}
	}
	return attached, nil
}

// ringOneScript is Ring for a single bell in one round trip: look the
// device up and publish to its node. KEYS[1] is the registration; ARGV:
// node-channel prefix, this node, message. Answers {code, registration}:
// 0 offline; 1 published to a listening node; 2 registered to this node
// (not published: the caller rings its own handler); 3 published to
// nobody (a dead node's registration).
var ringOneScript = redis.NewScript(`
local v = redis.call('GET', KEYS[1])
if not v then return {0, ''} end
local node = string.sub(v, 22)
if node == ARGV[2] then return {2, v} end
if redis.call('PUBLISH', ARGV[1] .. node, ARGV[3]) > 0 then return {1, v} end
return {3, v}
`)

// ringOne rings one bell with ringOneScript. A single bell is the common
// case (a 1-1 message to a device on another node), and the script halves
// its round trips. It cannot run on a cluster, where the channel's slot is
// not the key's.
func (r *Router) ringOne(ctx, octx context.Context, b routing.Bell) ([]bool, error) {
	batches, err := encodeBells([]routing.Bell{b})
	if err != nil {
		return nil, fmt.Errorf("ring: %w", err)
	}
	key := r.key(b.Device)
	res, err := ringOneScript.Run(octx, r.c, []string{key}, r.o.Prefix+"node:", r.o.Node, batches[0].msg).Slice()
	if err != nil || len(res) != 2 {
		err = fmt.Errorf("ring %s: answer %v: %w", b.Device, res, err)
		r.fail(ctx, err)
		return nil, err
	}
	code, _ := res[0].(int64)
	val, _ := res[1].(string)
	switch code {
	case 1:
		r.n.published.Add(1)
		return []bool{true}, nil
	case 2:
		if h := r.handler(); h != nil {
			h.Ring(b)
		}
		return []bool{true}, nil
	case 3:
		select {
		case r.stale <- []staleReg{{key, val}}:
		default:
		}
	}
	return []bool{false}, nil
}

// lookup returns the registration of each key ("" when absent).
func (r *Router) lookup(ctx context.Context, keys []string) ([]string, error) {
	out := make([]string, len(keys))
	if c, ok := r.c.(*redis.Client); ok {
		vals, err := c.MGet(ctx, keys...).Result()
		if err != nil {
			return nil, err
		}
		for i, v := range vals {
			if s, ok := v.(string); ok {
				out[i] = s
			}
		}
		return out, nil
	}
	// A cluster (or a sharded Ring client) cannot MGET across slots; a
	// pipeline is split per shard and still costs one round trip each.
	pipe := r.c.Pipeline()
	cmds := make([]*redis.StringCmd, len(keys))
	for i, k := range keys {
		cmds[i] = pipe.Get(ctx, k)
	}
	if _, err := pipe.Exec(ctx); err != nil && !errors.Is(err, redis.Nil) {
		return nil, err
	}
	for i, cmd := range cmds {
		v, err := cmd.Result()
		if err != nil && !errors.Is(err, redis.Nil) {
			return nil, err
		}
		out[i] = v
	}
	return out, nil
}

func (r *Router) publishCmd(ctx context.Context, p redis.Pipeliner, channel string, msg []byte) *redis.IntCmd {
	if r.cluster {
		return p.SPublish(ctx, channel, msg)
	}
	return p.Publish(ctx, channel, msg)
}

func (r *Router) publish(ctx context.Context, node string, msgs [][]byte) error {
	pipe := r.c.Pipeline()
	for _, m := range msgs {
		r.publishCmd(ctx, pipe, r.nodeChannel(node), m)
	}
	_, err := pipe.Exec(ctx)
	return err
}

// evictLocal tells this node's Handler that session of dev is superseded.
func (r *Router) evictLocal(dev queue.Device, session uint64) {
	r.n.evictions.Add(1)
	if h := r.handler(); h != nil {
		h.Evict(dev, session)
	}
}

// fail records that an operation failed; the maintainer marks the router
// unhealthy and starts recovery. A failure caused by the caller's own
// context ending says nothing about Redis.
func (r *Router) fail(caller context.Context, err error) {
	if caller.Err() != nil {
		return
	}
	if r.broken.CompareAndSwap(false, true) {
		r.log.Warn("redis operation failed", "err", err)
	}
	r.poke()
}

func (r *Router) poke() {
	select {
	case r.kick <- struct{}{}:
	default:
	}
}

// listen receives this node's channel. go-redis reconnects and
// resubscribes a broken connection on the next receive; a connection on
// which nothing at all arrives — not even the answers to the pings the
// maintainer sends every HealthInterval — is stalled and replaced.
func (r *Router) listen() {
	defer r.wg.Done()
	const minBackoff = 20 * time.Millisecond
	backoff := minBackoff
	stallAfter := 3*r.o.HealthInterval + r.o.Timeout
	for {
		ps := r.pubsub()
		start := time.Now()
		msg, err := ps.ReceiveTimeout(r.ctx, stallAfter)
		if r.ctx.Err() != nil {
			return
		}
		if err != nil {
			r.lostSubscription(err)
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() && time.Since(start) >= stallAfter {
				// A read that saw nothing for stallAfter, pings included.
				r.resetPubSub(ps)
				continue
			}
			select {
			case <-r.ctx.Done():
				return
			case <-time.After(backoff):
			}
			backoff = min(2*backoff, r.o.HealthInterval)
			continue
		}
		backoff = minBackoff
		switch m := msg.(type) {
		case *redis.Subscription:
			if m.Kind == "subscribe" || m.Kind == "ssubscribe" {
				r.subscribed.Store(true)
				r.poke()
			}
		case *redis.Message:
			r.dispatch(m.Payload)
		}
	}
}

func (r *Router) pubsub() *redis.PubSub {
	r.psMu.Lock()
	defer r.psMu.Unlock()
	return r.ps
}

func (r *Router) resetPubSub(old *redis.PubSub) {
	_ = old.Close()
	ps := r.subscribe() // may dial: not under psMu
	r.psMu.Lock()
	defer r.psMu.Unlock()
	if r.ps != old || r.ctx.Err() != nil {
		_ = ps.Close()
		return
	}
	r.ps = ps
}

func (r *Router) lostSubscription(err error) {
	if r.subscribed.Swap(false) {
		r.log.Warn("redis subscription lost; bells fall back to polling until it is back", "err", err)
	}
	// Bells published while the subscription was down are lost: whatever
	// happens next, recovery must ring every attached device once.
	r.broken.Store(true)
	r.poke()
}

func (r *Router) dispatch(payload string) {
	m, err := decodeMessage([]byte(payload))
	if err != nil {
		r.n.bad.Add(1)
		r.log.Warn("dropped an undecodable routing message", "err", err)
		return
	}
	h := r.handler()
	r.n.received.Add(uint64(len(m.Bells)))
	for _, b := range m.Bells {
		if h != nil {
			h.Ring(b)
		}
	}
	for _, e := range m.Evictions {
		r.mu.Lock()
		if g, ok := r.local[e.Device]; ok && g.session == e.Session {
			delete(r.local, e.Device)
		}
		r.mu.Unlock()
		r.evictLocal(e.Device, e.Session)
	}
}

// maintain owns health transitions, refreshes, recovery and fallback
// polling.
func (r *Router) maintain() {
	defer r.wg.Done()
	health := time.NewTicker(r.o.HealthInterval)
	defer health.Stop()
	refresh := time.NewTicker(r.o.RefreshInterval)
	defer refresh.Stop()
	poll := time.NewTicker(r.o.PollInterval / pollSlices)
	defer poll.Stop()
	slice := 0
	r.check()
	for {
		select {
		case <-r.ctx.Done():
			return
		case <-r.kick:
			r.check()
		case <-health.C:
			r.check()
		case <-refresh.C:
			if r.healthy.Load() {
				if err := r.refreshAll(false); err != nil {
					r.fail(r.ctx, err)
				}
			}
		case <-poll.C:
			if !r.healthy.Load() {
				r.ringLocal(func(dev queue.Device) bool { return devSlice(dev) == slice })
				slice = (slice + 1) % pollSlices
			}
		case st := <-r.stale:
			r.deleteStale(st)
		}
	}
}

func devSlice(dev queue.Device) int {
	h := fnv.New32a()
	h.Write([]byte(dev.Account))
	return int((h.Sum32() ^ dev.ID) % pollSlices)
}

// check moves the health state: a failure since the last check makes the
// router unhealthy; an unhealthy router whose Redis answers and whose
// subscription is confirmed re-registers every attached device, becomes
// healthy, and rings every attached device once to cover the bells lost
// while it was away.
func (r *Router) check() {
	if r.broken.Swap(false) && r.healthy.Load() {
		r.setHealthy(false)
	}
	ctx, cancel := context.WithTimeout(r.ctx, r.o.Timeout)
	err := r.c.Ping(ctx).Err()
	cancel()
	if ps := r.pubsub(); ps != nil {
		pctx, cancel := context.WithTimeout(r.ctx, r.o.Timeout)
		_ = ps.Ping(pctx) // answered on the listener's connection: proves it alive
		cancel()
	}
	up := err == nil && r.subscribed.Load()
	if r.healthy.Load() {
		if !up {
			if err != nil {
				r.log.Warn("redis unreachable; bells fall back to polling", "err", err)
			}
			r.setHealthy(false)
		}
		return
	}
	if !up {
		return
	}
	if err := r.refreshAll(false); err != nil {
		r.log.Warn("re-registration after a redis outage failed; retrying", "err", err)
		return
	}
	if r.broken.Swap(false) {
		return // something failed meanwhile; the next check retries
	}
	r.setHealthy(true)
	r.n.recoveries.Add(1)
	// Sessions attached between the snapshot above and now were kept
	// locally only; register them too (later ones go to Redis directly).
	if err := r.refreshAll(true); err != nil {
		r.fail(r.ctx, err)
	}
	r.ringLocal(func(queue.Device) bool { return true })
}

func (r *Router) setHealthy(v bool) {
	if r.healthy.Swap(v) == v {
		return
	}
	if v {
		r.log.Info("redis routing healthy")
	}
	if r.o.OnHealth != nil {
		r.o.OnHealth(v)
	}
}

// ringLocal rings the attached devices that pick selects, so their
// connections fetch from their queues.
func (r *Router) ringLocal(pick func(queue.Device) bool) {
	h := r.handler()
	if h == nil {
		return
	}
	var devs []queue.Device
	r.mu.Lock()
	for dev := range r.local {
		if pick(dev) {
			devs = append(devs, dev)
		}
	}
	r.mu.Unlock()
	for _, dev := range devs {
		h.Ring(routing.Bell{Device: dev})
	}
	r.n.polled.Add(uint64(len(devs)))
}

// refreshScript claims one registration for a session attached while Redis
// was unreachable.
//
// ARGV: our value, TTL in ms, mode ("claim"). Answers {code, current
// value}: 1 extended (already ours); 2 created (absent); 3 claimed from an
// older session, whose value is returned; 0 superseded by the returned
// (newer) value. Values start with the 20-digit session, so
// comparing the first 20 bytes compares sessions (Snowflake ids: later
// is larger, up to clock skew between relays).
var refreshScript = redis.NewScript(`
local cur = redis.call('GET', KEYS[1])
if cur == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return {1, ''}
end
if not cur then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return {2, ''}
end
if ARGV[3] == 'claim' and string.sub(cur, 1, 20) < string.sub(ARGV[1], 1, 20) then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return {3, cur}
end
return {0, cur}
`)

type refreshItem struct {
	dev queue.Device
	reg reg
}

// refreshAll refreshes the registrations of the attached devices (all, or
// only the unconfirmed ones), claiming them for sessions attached while
// Redis was down, and deletes the registrations of devices detached
// meanwhile.
func (r *Router) refreshAll(onlyUnconfirmed bool) error {
	r.mu.Lock()
	items := make([]refreshItem, 0, len(r.local))
	for dev, g := range r.local {
		if !onlyUnconfirmed || !g.confirmed {
			items = append(items, refreshItem{dev, g})
		}
	}
	type goneItem struct {
		dev     queue.Device
		session uint64
	}
	gone := make([]goneItem, 0, len(r.gone))
	regs := make([]staleReg, 0, len(r.gone))
	for dev, s := range r.gone {
		gone = append(gone, goneItem{dev, s})
		regs = append(regs, staleReg{r.key(dev), regValue(s, r.o.Node)})
	}
	r.mu.Unlock()
	for len(items) > 0 {
		k := min(len(items), refreshBatch)
		if err := r.refreshBatch(items[:k]); err != nil {
			return err
		}
		items = items[k:]
	}
	if len(regs) > 0 {
		if err := r.deleteRegs(regs); err != nil {
			return err
		}
		r.mu.Lock()
		for _, g := range gone {
			if r.gone[g.dev] == g.session {
				delete(r.gone, g.dev)
			}
		}
		r.mu.Unlock()
	}
	return nil
}

// refreshBatch refreshes up to refreshBatch registrations: confirmed ones
// with plain commands, unconfirmed ones with refreshScript's claim.
func (r *Router) refreshBatch(items []refreshItem) error {
	ctx, cancel := context.WithTimeout(r.ctx, r.o.Timeout+time.Duration(len(items))*10*time.Microsecond)
	defer cancel()
	var keep, claim []refreshItem
	for _, it := range items {
		if it.reg.confirmed {
			keep = append(keep, it)
		} else {
			claim = append(claim, it)
		}
	}
	var out refreshOutcome
	if len(keep) > 0 {
		if err := r.refreshKeep(ctx, keep, &out); err != nil {
			return err
		}
	}
	if len(claim) > 0 {
		if err := r.refreshClaim(ctx, claim, &out); err != nil {
			return err
		}
	}
	for node, ev := range out.evict {
		if err := r.publish(ctx, node, encodeEvictions(ev)); err != nil {
			r.log.Warn("eviction not published; the old node will notice at its next refresh", "err", err)
		}
	}
	if len(out.ghosts) > 0 {
		return r.deleteRegs(out.ghosts)
	}
	return nil
}

type refreshOutcome struct {
	ghosts []staleReg
	evict  map[string][]eviction
}

// registered notes that Redis holds the item's registration now. If the
// session was detached meanwhile, the registration is a ghost to take back
// out.
func (r *Router) registered(it refreshItem, out *refreshOutcome) bool {
	r.mu.Lock()
	g, ok := r.local[it.dev]
	still := ok && g.session == it.reg.session
	if still {
		g.confirmed = true
		r.local[it.dev] = g
	}
	r.mu.Unlock()
	if !still {
		out.ghosts = append(out.ghosts, staleReg{r.key(it.dev), regValue(it.reg.session, r.o.Node)})
	}
	return still
}

// superseded drops a session whose registration now names another one.
func (r *Router) superseded(it refreshItem) {
	r.mu.Lock()
	if g, ok := r.local[it.dev]; ok && g.session == it.reg.session {
		delete(r.local, it.dev)
	}
	r.mu.Unlock()
	r.evictLocal(it.dev, it.reg.session)
}

// refreshKeep is the steady-state refresh, in two pipelined round trips of
// plain commands (a Lua call per device costs Redis several times more
// CPU): read every key; extend ours (PEXPIRE: if another node overwrote
// the key in between, extending its TTL is harmless); re-create missing
// ones with SET NX (never clobbering a registration written in between);
// and evict sessions whose key names another session — the eviction
// message of that takeover may have been lost.
func (r *Router) refreshKeep(ctx context.Context, items []refreshItem, out *refreshOutcome) error {
	keys := make([]string, len(items))
	for i, it := range items {
		keys[i] = r.key(it.dev)
	}
	vals, err := r.lookup(ctx, keys)
	if err != nil {
		return fmt.Errorf("refresh %d registrations: %w", len(items), err)
	}
	pipe := r.c.Pipeline()
	setnx := make(map[int]*redis.BoolCmd)
	n := 0
	for i, it := range items {
		ours := regValue(it.reg.session, r.o.Node)
		switch vals[i] {
		case ours:
			pipe.PExpire(ctx, keys[i], r.o.RegistrationTTL)
			n++
		case "":
			setnx[i] = pipe.SetNX(ctx, keys[i], ours, r.o.RegistrationTTL)
			n++
		default:
			r.superseded(it)
		}
	}
	if n == 0 {
		return nil
	}
	if _, err := pipe.Exec(ctx); err != nil {
		return fmt.Errorf("refresh %d registrations: %w", n, err)
	}
	for i, cmd := range setnx {
		if cmd.Val() {
			r.n.rereg.Add(1)
			r.registered(items[i], out)
		} else {
			r.superseded(items[i]) // another session registered in between
		}
	}
	return nil
}

// refreshClaim registers sessions attached while Redis was unreachable,
// letting the newer session win a device that moved meanwhile.
func (r *Router) refreshClaim(ctx context.Context, items []refreshItem, out *refreshOutcome) error {
	ttl := r.o.RegistrationTTL.Milliseconds()
	cmds, err := evalPipelined(ctx, r.c, refreshScript, len(items), func(i int) ([]string, []any) {
		return []string{r.key(items[i].dev)}, []any{regValue(items[i].reg.session, r.o.Node), ttl, "claim"}
	})
	if err != nil {
		return fmt.Errorf("claim %d registrations: %w", len(items), err)
	}
	for i, cmd := range cmds {
		it := items[i]
		res, err := cmd.Slice()
		if err != nil || len(res) != 2 {
			return fmt.Errorf("claim %s: answer %v: %w", it.dev, res, err)
		}
		code, _ := res[0].(int64)
		cur, _ := res[1].(string)
		switch code {
		case 1, 2, 3:
			if code == 2 {
				r.n.rereg.Add(1)
			}
			if !r.registered(it, out) || code != 3 {
				continue
			}
			if s, node, err := parseRegValue(cur); err == nil {
				if node == r.o.Node {
					r.evictLocal(it.dev, s)
				} else {
					if out.evict == nil {
						out.evict = make(map[string][]eviction)
					}
					out.evict[node] = append(out.evict[node], eviction{it.dev, s})
				}
			}
		case 0:
			r.superseded(it)
		default:
			return fmt.Errorf("claim %s: unknown answer %d", it.dev, code)
		}
	}
	return nil
}

// deleteRegs deletes registrations that still hold the given values.
func (r *Router) deleteRegs(regs []staleReg) error {
	ctx, cancel := context.WithTimeout(r.ctx, r.o.Timeout+time.Duration(len(regs))*10*time.Microsecond)
	defer cancel()
	cmds, err := evalPipelined(ctx, r.c, detachScript, len(regs), func(i int) ([]string, []any) {
		return []string{regs[i].key}, []any{regs[i].value}
	})
	if err != nil {
		return fmt.Errorf("delete %d registrations: %w", len(regs), err)
	}
	for _, c := range cmds {
		if n, _ := c.Int64(); n > 0 {
			r.n.stale.Add(1)
		}
	}
	return nil
}

// deleteStale removes registrations whose node's channel had no
// subscriber: the node is gone, and its devices are offline.
func (r *Router) deleteStale(regs []staleReg) {
	if !r.healthy.Load() {
		return
	}
	if err := r.deleteRegs(regs); err != nil {
		r.fail(r.ctx, err)
	}
}

// evalPipelined runs n calls of s in one pipeline (EVALSHA; on NOSCRIPT the
// script is loaded — on every shard of a cluster — and the pipeline
// retried once). The returned commands carry each call's answer.
func evalPipelined(ctx context.Context, c redis.UniversalClient, s *redis.Script, n int, call func(i int) ([]string, []any)) ([]*redis.Cmd, error) {
	for attempt := 0; ; attempt++ {
		pipe := c.Pipeline()
		cmds := make([]*redis.Cmd, n)
		for i := range n {
			keys, args := call(i)
			cmds[i] = s.EvalSha(ctx, pipe, keys, args...)
		}
		_, err := pipe.Exec(ctx)
		if err != nil && redis.HasErrorPrefix(err, "NOSCRIPT") && attempt == 0 {
			if err := s.Load(ctx, c).Err(); err != nil {
				return nil, fmt.Errorf("load script: %w", err)
			}
			continue
		}
		if err != nil {
			return nil, err
		}
		return cmds, nil
	}
}

// Close implements routing.Router: it stops the router's goroutines and,
// if Redis answers, removes this node's remaining registrations. Later
// Attaches fail.
func (r *Router) Close() error {
	r.mu.Lock()
	if r.closed {
		r.mu.Unlock()
		return nil
	}
	r.closed = true
	close(r.closing)
	var regs []staleReg
	for dev, g := range r.local {
		regs = append(regs, staleReg{r.key(dev), regValue(g.session, r.o.Node)})
	}
	r.local = make(map[queue.Device]reg)
	r.mu.Unlock()
	healthy := r.healthy.Load()
	r.healthy.Store(false)
	if r.cancel != nil {
		r.cancel()
	}
	r.psMu.Lock()
	if r.ps != nil {
		_ = r.ps.Close()
	}
	r.psMu.Unlock()
	r.wg.Wait()
	if healthy && len(regs) > 0 {
		ctx, cancel := context.WithTimeout(context.Background(), r.o.Timeout+time.Duration(len(regs))*10*time.Microsecond)
		defer cancel()
		if _, err := evalPipelined(ctx, r.c, detachScript, len(regs), func(i int) ([]string, []any) {
			return []string{regs[i].key}, []any{regs[i].value}
		}); err != nil {
			return fmt.Errorf("redisroute: remove %d registrations on close: %w", len(regs), err)
		}
	}
	return nil
}
