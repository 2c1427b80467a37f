package server

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"errors"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/bwmarrin/snowflake"
	"github.com/gorilla/websocket"

	"github.com/hushchat/hush/protocol"
	"github.com/hushchat/hush/server/nodeid"
	"github.com/hushchat/hush/server/queue"
	"github.com/hushchat/hush/server/routing"
)

// Tests of what the relay does for scale-out: node-id validity, doorbells
// after the SendAck, router failures, and envelopes that another relay
// stores below a connection's position. The routers and node-id providers
// here are fakes of the project's own interfaces; the real Redis router
// and Cassandra store run in the multi-process tests of package cluster.

func TestSequencerOverflowStaysInNode(t *testing.T) {
	ids, err := nodeid.NewStatic(1023)
	if err != nil {
		t.Fatal(err)
	}
	now := time.UnixMilli(snowflake.Epoch + 1_000_000)
	clock := func() time.Time { return now }
	s, err := newSequencer(ids, clock)
	if err != nil {
		t.Fatal(err)
	}
	node := func(id uint64) uint64 { return id >> snowflake.StepBits & (1<<snowflake.NodeBits - 1) }
	ms := func(id uint64) int64 { return int64(id >> (snowflake.NodeBits + snowflake.StepBits)) }
	// Three sequences' worth in one millisecond of a frozen clock: each
	// full sequence must carry into the time field, never into the node
	// bits (node 1023 has all of them set: a carry would wrap it to 0 and
	// bump the time by one, minting node 0's ids).
	var last uint64
	for i := range 3*4096 + 10 {
		id := s.nextLocked()
		if id <= last {
			t.Fatalf("id %d: %d not above %d", i, id, last)
		}
		if node(id) != 1023 {
			t.Fatalf("id %d carries node %d, want 1023", i, node(id))
		}
		if want := int64(1_000_000 + i/4096); ms(id) != want {
			t.Fatalf("id %d: time field %d, want %d", i, ms(id), want)
		}
		if got := idTime(id).UnixMilli() - snowflake.Epoch; got != ms(id) {
			t.Fatalf("idTime: %d, want %d", got, ms(id))
		}
		last = id
	}
	// The clock steps back a second: ids keep increasing, still node 1023.
	now = now.Add(-time.Second)
	for range 5000 {
		id := s.nextLocked()
		if id <= last || node(id) != 1023 {
			t.Fatalf("after the clock stepped back: id %d (node %d) after %d", id, node(id), last)
		}
		last = id
	}
	// The clock moves past the borrowed milliseconds: ids follow it again.
	now = now.Add(time.Minute)
	if id := s.nextLocked(); ms(id) != now.UnixMilli()-snowflake.Epoch || id&(1<<snowflake.StepBits-1) != 0 {
		t.Fatalf("id %d: time %d step %d, want time %d step 0", id, ms(id), id&(1<<snowflake.StepBits-1), now.UnixMilli()-snowflake.Epoch)
	}
}

// switchableIDs is a nodeid.Provider whose validity the test sets.
type switchableIDs struct {
	id  int64
	err atomic.Pointer[error]
}

func (s *switchableIDs) ID() int64 { return s.id }
func (s *switchableIDs) Valid() error {
	if p := s.err.Load(); p != nil {
		return *p
	}
	return nil
}
func (s *switchableIDs) Lost() <-chan struct{}       { return nil }
func (s *switchableIDs) Close(context.Context) error { return nil }
func (s *switchableIDs) set(err error) {
	if err == nil {
		s.err.Store(nil)
	} else {
		s.err.Store(&err)
	}
}

func TestSendRefusedWhileNodeIDInvalid(t *testing.T) {
	ids := &switchableIDs{id: 7}
	e := newEnv(t, func(c *Config, _ *queue.Options) { c.NodeIDs = ids })
	e.dir.set("alice", 1)
	e.dir.set("bob", 1)
	alice := e.connect("alice", 1)
	alice.nextOf("QueueEmpty")
	bob := e.connect("bob", 1)
	bob.nextOf("QueueEmpty")

	ids.set(nodeid.ErrSuspended)
	cid := newClientID()
	ack := alice.sendAndAck(sendTo(cid, []byte("while suspended"), dev("bob", 1)))
	if ack.Error == nil || ack.Error.Code != protocol.ErrorCode_CODE_UNAVAILABLE || ack.Error.RetryAfterMs == 0 {
		t.Fatalf("send with a suspended node id: %v, want CODE_UNAVAILABLE with retry_after_ms", ack)
	}
	if !bytes.Equal(ack.ClientId, cid) {
		t.Fatal("refusal names another client id")
	}
	ephemeral := sendTo(newClientID(), []byte("typing"), dev("bob", 1))
	ephemeral.GetSend().Ephemeral = true
	if ack := alice.sendAndAck(ephemeral); ack.Error == nil || ack.Error.Code != protocol.ErrorCode_CODE_UNAVAILABLE {
		t.Fatalf("ephemeral send with a suspended node id: %v", ack)
	}
	if err := e.relay.Ready(context.Background()); err == nil {
		t.Fatal("Ready with a suspended node id")
	}
	if v := counter(t, e, "hush_node_id_valid", ""); v != 0 {
		t.Fatalf("hush_node_id_valid = %v while suspended", v)
	}
	bob.noFrame(200 * time.Millisecond)
	if d, err := e.store.Depth(context.Background(), dev("bob", 1)); err != nil || d != 0 {
		t.Fatalf("something was stored while refusing: depth %d, %v", d, err)
	}

	// Valid again: the retry with the same client id goes through once.
	ids.set(nil)
	ack = alice.sendAndAck(sendTo(cid, []byte("while suspended"), dev("bob", 1)))
	if ack.Error != nil || ack.ServerId == 0 {
		t.Fatalf("retry after the lease came back: %v", ack)
	}
	if got := bob.nextOf("Deliver").GetDeliver().Envelopes; len(got) != 1 || got[0].ServerId != ack.ServerId {
		t.Fatalf("bob got %v", got)
	}
	if node := ack.ServerId >> snowflake.StepBits & (1<<snowflake.NodeBits - 1); node != 7 {
		t.Fatalf("server id minted with node %d, want the provider's 7", node)
	}
	if v := counter(t, e, "hush_node_id_valid", ""); v != 1 {
		t.Fatalf("hush_node_id_valid = %v", v)
	}
}

// stallRouter is a Local router whose Ring can be made to block (a
// stalled Redis) or fail (Redis down), and which reports a settable
// health.
type stallRouter struct {
	*routing.Local
	gate    chan struct{} // non-nil: Ring waits for it to close
	fail    atomic.Bool
	healthy atomic.Bool
	rings   atomic.Int64
}

func (r *stallRouter) Ring(ctx context.Context, bells []routing.Bell) ([]bool, error) {
	r.rings.Add(1)
	if r.gate != nil {
		select {
		case <-r.gate:
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
	if r.fail.Load() {
		return nil, errors.New("routing: redis unavailable")
	}
	return r.Local.Ring(ctx, bells)
}

func (r *stallRouter) Healthy() bool { return r.healthy.Load() }

func TestSendAckNotDelayedByStalledRouter(t *testing.T) {
	rt := &stallRouter{Local: routing.NewLocal(), gate: make(chan struct{})}
	t.Cleanup(func() { rt.Close() })
	e := newEnv(t, func(c *Config, _ *queue.Options) { c.Router = rt })
	e.dir.set("alice", 1)
	e.dir.set("bob", 1) // offline: its bell goes to the router
	alice := e.connect("alice", 1)
	alice.nextOf("QueueEmpty")
	for i := range 3 {
		ack := alice.sendAndAck(sendTo(newClientID(), []byte("x"), dev("bob", 1)))
		if ack.Error != nil {
			t.Fatalf("send %d: %v", i, ack.Error)
		}
	}
	// Every SendAck arrived while every Ring was still blocked.
	deadline := time.Now().Add(5 * time.Second)
	for rt.rings.Load() < 3 && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	if n := rt.rings.Load(); n != 3 {
		t.Fatalf("%d rings started, want 3", n)
	}
	close(rt.gate)
}

// recordingPush is a push.Notifier that records whom it would wake.
type recordingPush struct {
	mu     sync.Mutex
	notify map[queue.Device]int
}

func (p *recordingPush) Register(context.Context, queue.Device, string) error { return nil }
func (p *recordingPush) Notify(d queue.Device) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.notify == nil {
		p.notify = map[queue.Device]int{}
	}
	p.notify[d]++
}
func (p *recordingPush) Reset(queue.Device) {}
func (p *recordingPush) Close() error       { return nil }
func (p *recordingPush) count(d queue.Device) int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.notify[d]
}

func TestRingFailurePushesAndLogsOnce(t *testing.T) {
	rt := &stallRouter{Local: routing.NewLocal()}
	rt.fail.Store(true)
	t.Cleanup(func() { rt.Close() })
	pu := &recordingPush{}
	e := newEnv(t, func(c *Config, _ *queue.Options) { c.Router, c.Push = rt, pu })
	e.dir.set("alice", 1)
	e.dir.set("bob", 1, 2)
	alice := e.connect("alice", 1)
	alice.nextOf("QueueEmpty")
	bob1 := e.connect("bob", 1) // connected here: served from memory, never pushed
	bob1.nextOf("QueueEmpty")
	const n = 5
	for i := range n {
		if ack := alice.sendAndAck(sendTo(newClientID(), []byte("x"), dev("bob", 1), dev("bob", 2))); ack.Error != nil {
			t.Fatalf("send %d during a router outage: %v", i, ack.Error)
		}
		if envs := bob1.nextOf("Deliver").GetDeliver().Envelopes; len(envs) != 1 {
			t.Fatalf("bob.1 got %d envelopes", len(envs))
		}
	}
	waitUntil(t, "rings", func() bool { return counter(t, e, "hush_doorbell_failures_total", "") == n })
	if got := pu.count(dev("bob", 2)); got != n {
		t.Fatalf("bob.2 (not here, router down) pushed %d times, want %d", got, n)
	}
	if got := pu.count(dev("bob", 1)); got != 0 {
		t.Fatalf("bob.1, connected here, pushed %d times", got)
	}
	if k := strings.Count(string(e.logs.Bytes()), "doorbells failing"); k != 1 {
		t.Fatalf("the outage was logged %d times, want once:\n%s", k, e.logs.Bytes())
	}
	rt.fail.Store(false)
	if ack := alice.sendAndAck(sendTo(newClientID(), []byte("x"), dev("bob", 1), dev("bob", 2))); ack.Error != nil {
		t.Fatal(ack.Error)
	}
	waitUntil(t, "recovery log", func() bool { return bytes.Contains(e.logs.Bytes(), []byte("doorbells work again")) })
}

func TestReadyWhileRouterUnhealthy(t *testing.T) {
	rt := &stallRouter{Local: routing.NewLocal()}
	t.Cleanup(func() { rt.Close() })
	e := newEnv(t, func(c *Config, _ *queue.Options) { c.Router = rt })
	if err := e.relay.Ready(context.Background()); err != nil {
		t.Fatalf("Ready with an unhealthy router: %v", err)
	}
	if v := counter(t, e, "hush_router_healthy", ""); v != 0 {
		t.Fatalf("hush_router_healthy = %v, want 0", v)
	}
	rt.healthy.Store(true)
	if v := counter(t, e, "hush_router_healthy", ""); v != 1 {
		t.Fatalf("hush_router_healthy = %v, want 1", v)
	}
}

// testNet joins several relays in one process: a fake routing.Router per
// relay over one shared device map, so a bell rung on one relay reaches the
// relay the device is attached to — what the Redis router does between
// processes.
type testNet struct {
	mu    sync.Mutex
	where map[queue.Device]*netNode
}

type netNode struct {
	net *testNet
	mu  sync.Mutex
	h   routing.Handler
}

func (n *testNet) node() *netNode {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.where == nil {
		n.where = map[queue.Device]*netNode{}
	}
	return &netNode{net: n}
}

func (n *netNode) Subscribe(h routing.Handler) { n.mu.Lock(); n.h = h; n.mu.Unlock() }
func (n *netNode) Attach(_ context.Context, d queue.Device, _ uint64) error {
	n.net.mu.Lock()
	n.net.where[d] = n
	n.net.mu.Unlock()
	return nil
}
func (n *netNode) Detach(_ context.Context, d queue.Device, _ uint64) error {
	n.net.mu.Lock()
	if n.net.where[d] == n {
		delete(n.net.where, d)
	}
	n.net.mu.Unlock()
	return nil
}
func (n *netNode) Ring(_ context.Context, bells []routing.Bell) ([]bool, error) {
	out := make([]bool, len(bells))
	for i, b := range bells {
		n.net.mu.Lock()
		to := n.net.where[b.Device]
		n.net.mu.Unlock()
		if to == nil {
			continue
		}
		out[i] = true
		to.mu.Lock()
		h := to.h
		to.mu.Unlock()
		h.Ring(b)
	}
	return out, nil
}
func (n *netNode) Close() error { return nil }

// trio is two relays sharing one store, alice and bob on the first (e's),
// carol on the second (routed through nodeB).
type trio struct {
	e                 *env
	nodeB             *netNode
	alice, bob, carol *client
}

// skewedTrio starts a trio whose second relay's clock is shifted by skew,
// each client past QueueEmpty. cfg, when not nil, adjusts the first relay's
// Config.
func skewedTrio(t *testing.T, skew time.Duration, cfg func(*Config)) trio {
	t.Helper()
	var net testNet
	nodeA, nodeB := net.node(), net.node()
	e := newEnv(t, func(c *Config, _ *queue.Options) {
		c.Router = nodeA
		if cfg != nil {
			cfg(c)
		}
	})
	_, urlB := secondRelay(t, e, nodeB, 2, func() time.Time { return time.Now().Add(skew) })
	e.dir.set("alice", 1)
	e.dir.set("bob", 1)
	e.dir.set("carol", 1)
	tr := trio{e: e, nodeB: nodeB}
	tr.bob = e.connect("bob", 1)
	tr.bob.nextOf("QueueEmpty")
	tr.alice = e.connect("alice", 1)
	tr.alice.nextOf("QueueEmpty")
	tr.carol = e.connectURL(urlB, "carol", 1)
	tr.carol.nextOf("QueueEmpty")
	return tr
}

// secondRelay starts another relay on e's store and directory with the
// given router and clock, and returns its WebSocket URL.
func secondRelay(t *testing.T, e *env, router routing.Router, nodeID int64, now func() time.Time) (*Relay, string) {
	t.Helper()
	r, err := New(Config{
		Store: e.store, Directory: e.dir, TokenKey: e.priv.Public().(ed25519.PublicKey),
		NodeID: nodeID, Router: router, Now: now,
		Logger: slog.New(slog.NewTextHandler(e.logs, nil)),
	})
	if err != nil {
		t.Fatal(err)
	}
	mux := http.NewServeMux()
	mux.Handle(protocol.WSPath, r.Handler())
	srv := httptest.NewServer(mux)
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		r.Shutdown(ctx)
		srv.Close()
	})
	return r, "ws" + strings.TrimPrefix(srv.URL, "http") + protocol.WSPath
}

func (e *env) connectURL(url, account string, device uint32) *client {
	e.t.Helper()
	d := websocket.Dialer{Subprotocols: []string{protocol.Subprotocol}, HandshakeTimeout: 5 * time.Second}
	ws, _, err := d.Dial(url, http.Header{"Authorization": {"Bearer " + e.token(account, device)}})
	if err != nil {
		e.t.Fatalf("connect %s.%d to %s: %v", account, device, url, err)
	}
	return newClient(e.t, ws, queue.Device{Account: account, ID: device})
}

// A relay whose clock lags stores an envelope for bob under an id below
// what bob's connection on another relay has already delivered; its bell
// must still get it delivered, without a reconnect. The same for an
// envelope whose bell was lost, found by the router's id-less poll bell.
func TestCrossRelayBellBelowCursorDelivered(t *testing.T) {
	tr := skewedTrio(t, -10*time.Second, nil) // carol's relay 10 s behind
	e, nodeB, alice, bob, carol := tr.e, tr.nodeB, tr.alice, tr.bob, tr.carol

	high := alice.sendAndAck(sendTo(newClientID(), []byte("from A"), dev("bob", 1)))
	if high.Error != nil {
		t.Fatal(high.Error)
	}
	if envs := bob.nextOf("Deliver").GetDeliver().Envelopes; len(envs) != 1 || envs[0].ServerId != high.ServerId {
		t.Fatalf("bob got %v", envs)
	}
	bob.ack(high.ServerId)
	ping(bob) // the ack is processed

	low := carol.sendAndAck(sendTo(newClientID(), []byte("from B"), dev("bob", 1)))
	if low.Error != nil {
		t.Fatal(low.Error)
	}
	if low.ServerId >= high.ServerId {
		t.Fatalf("relay B's id %d is not below relay A's %d: the test needs the lagging clock", low.ServerId, high.ServerId)
	}
	envs := bob.nextOf("Deliver").GetDeliver().Envelopes
	if len(envs) != 1 || envs[0].ServerId != low.ServerId || string(envs[0].Payload) != "from B" {
		t.Fatalf("bob got %v, want relay B's envelope %d", envs, low.ServerId)
	}
	if v := counter(t, e, "hush_late_deliveries_total", ""); v != 1 {
		t.Fatalf("hush_late_deliveries_total = %v, want 1", v)
	}

	// A bell for an id bob has delivered and not acked yet: nothing again.
	nodeB.Ring(context.Background(), []routing.Bell{{Device: dev("bob", 1), ServerID: low.ServerId}})
	bob.noFrame(300 * time.Millisecond)
	bob.ack(low.ServerId)
	ping(bob)

	// An envelope stored below the cursor whose bell was lost: an id-less
	// bell (the Redis router's fallback poll) rescans the queue.
	lost := high.ServerId - 1000
	res, err := e.store.Put(context.Background(), queue.Put{
		ServerID: lost, Sender: "carol", SenderDevice: 1, ClientID: newClientID(),
		ServerTime: time.Now(), ExpiresAt: time.Now().Add(time.Hour),
		Recipients: []queue.Recipient{{Device: dev("bob", 1), Type: 1, Payload: []byte("bell lost")}},
	})
	if err != nil || res.Duplicate {
		t.Fatalf("put: %v %v", res, err)
	}
	nodeB.Ring(context.Background(), []routing.Bell{{Device: dev("bob", 1)}})
	envs = bob.nextOf("Deliver").GetDeliver().Envelopes
	if len(envs) != 1 || envs[0].ServerId != lost {
		t.Fatalf("after the poll bell bob got %v, want %d", envs, lost)
	}
	bob.noFrame(300 * time.Millisecond) // and nothing twice
}

// unknownOutcome stores the first attempt of a chosen client id and then
// reports a retryable failure, as a relay sees a Cassandra write whose
// answer was lost; the retry finds it stored (Duplicate), as a Cassandra
// take-over finishing an earlier attempt answers.
type unknownOutcome struct {
	queue.Store
	mu     sync.Mutex
	target []byte
}

func (u *unknownOutcome) Put(ctx context.Context, p queue.Put) (queue.PutResult, error) {
	res, err := u.Store.Put(ctx, p)
	u.mu.Lock()
	hit := u.target != nil && bytes.Equal(p.ClientID, u.target)
	if hit {
		u.target = nil
	}
	u.mu.Unlock()
	if hit && err == nil {
		return queue.PutResult{}, queue.Unavailable("queue put", errors.New("write timeout"))
	}
	return res, err
}

func TestDuplicateFromTakeOverRingsRecipients(t *testing.T) {
	uo := &unknownOutcome{}
	var net testNet
	nodeA, nodeB := net.node(), net.node()
	e := newEnv(t, wrapStore(func(s queue.Store) queue.Store { uo.Store = s; return uo }),
		func(c *Config, _ *queue.Options) { c.Router = nodeA })
	_, urlB := secondRelay(t, e, nodeB, 2, time.Now)
	e.dir.set("alice", 1)
	e.dir.set("bob", 1, 2)
	alice := e.connect("alice", 1)
	alice.nextOf("QueueEmpty")
	bob1 := e.connect("bob", 1) // on the sender's relay
	bob1.nextOf("QueueEmpty")
	bob2 := e.connectURL(urlB, "bob", 2) // on the other relay
	bob2.nextOf("QueueEmpty")

	cid := newClientID()
	uo.mu.Lock()
	uo.target = cid
	uo.mu.Unlock()
	f := sendTo(cid, []byte("stored, answer lost"), dev("bob", 1), dev("bob", 2))
	if ack := alice.sendAndAck(f); ack.Error == nil || ack.Error.Code != protocol.ErrorCode_CODE_UNAVAILABLE {
		t.Fatalf("first attempt: %v, want CODE_UNAVAILABLE", ack)
	}
	// Nothing tells either connection about the stored envelope yet.
	bob1.noFrame(200 * time.Millisecond)
	bob2.noFrame(50 * time.Millisecond)
	ack := alice.sendAndAck(f)
	if ack.Error != nil || ack.ServerId == 0 {
		t.Fatalf("retry: %v", ack)
	}
	for _, b := range []*client{bob1, bob2} {
		envs := b.nextOf("Deliver").GetDeliver().Envelopes
		if len(envs) != 1 || envs[0].ServerId != ack.ServerId {
			t.Fatalf("%s got %v, want %d", b.dev, envs, ack.ServerId)
		}
		b.noFrame(100 * time.Millisecond)
	}
	if v := counter(t, e, "hush_sends_total", "duplicate"); v != 1 {
		t.Fatalf("hush_sends_total{duplicate} = %v", v)
	}
}

// ping waits until the relay has processed every frame c sent before.
func ping(c *client) {
	c.t.Helper()
	n := uint64(time.Now().UnixNano())
	c.send(&protocol.Frame{Body: &protocol.Frame_Ping{Ping: &protocol.Ping{Nonce: n}}})
	for {
		if p := c.nextOf("Pong").GetPong(); p.Nonce == n {
			return
		}
	}
}

func waitUntil(t *testing.T, what string, ok func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !ok() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// The other way round: bob's cursor is at a higher id from a relay whose
// clock runs ahead, and then his own relay stores an envelope for him under
// a lower id. It must reach him from memory (or, when the memory bound
// makes the relay leave it to the queue, by a rescan), not be taken for
// delivered because it is below the cursor.
func TestLocalSendBelowForeignCursorDelivered(t *testing.T) {
	for _, tc := range []struct {
		name       string
		maxPending int
	}{{"memory", 0}, {"queue", 1}} {
		t.Run(tc.name, func(t *testing.T) {
			tr := skewedTrio(t, 10*time.Second, func(c *Config) { c.MaxPendingBytes = tc.maxPending }) // carol's relay 10 s ahead
			e, alice, bob, carol := tr.e, tr.alice, tr.bob, tr.carol

			high := carol.sendAndAck(sendTo(newClientID(), []byte("from B"), dev("bob", 1)))
			if high.Error != nil {
				t.Fatal(high.Error)
			}
			if envs := bob.nextOf("Deliver").GetDeliver().Envelopes; len(envs) != 1 || envs[0].ServerId != high.ServerId {
				t.Fatalf("bob got %v", envs)
			}
			for i := range 3 {
				low := alice.sendAndAck(sendTo(newClientID(), []byte("from A"), dev("bob", 1)))
				if low.Error != nil {
					t.Fatal(low.Error)
				}
				if low.ServerId >= high.ServerId {
					t.Fatalf("relay A's id %d is not below relay B's %d", low.ServerId, high.ServerId)
				}
				envs := bob.nextOf("Deliver").GetDeliver().Envelopes
				if len(envs) != 1 || envs[0].ServerId != low.ServerId {
					t.Fatalf("send %d: bob got %v, want relay A's envelope %d", i, envs, low.ServerId)
				}
			}
			bob.noFrame(300 * time.Millisecond)
			if v := counter(t, e, "hush_late_deliveries_total", ""); v != 3 {
				t.Fatalf("hush_late_deliveries_total = %v, want 3", v)
			}
		})
	}
}

// slowFetch holds each Fetch's answer for a while after reading it, so a
// test can store and ring something while a fetch is in flight.
type slowFetch struct {
	queue.Store
	hold  atomic.Int64 // nanoseconds
	reads chan struct{}
}

func (s *slowFetch) Fetch(ctx context.Context, d queue.Device, after uint64, limit int) ([]queue.Message, error) {
	msgs, err := s.Store.Fetch(ctx, d, after, limit)
	if h := time.Duration(s.hold.Load()); h > 0 {
		select {
		case s.reads <- struct{}{}:
		default:
		}
		time.Sleep(h)
	}
	return msgs, err
}

// A bell rings while a fetch is in flight, for an envelope stored after
// the fetch read the queue and below what the fetch returns: once the
// fetch moves the cursor past it, only a rescan finds it.
func TestBellDuringFetchBelowNewCursor(t *testing.T) {
	sf := &slowFetch{reads: make(chan struct{}, 1)}
	var net testNet
	nodeA, nodeB := net.node(), net.node()
	e := newEnv(t, wrapStore(func(s queue.Store) queue.Store { sf.Store = s; return sf }),
		func(c *Config, _ *queue.Options) { c.Router = nodeA })
	e.dir.set("bob", 1)
	bob := e.connect("bob", 1)
	bob.nextOf("QueueEmpty")
	put := func(id uint64, payload string) {
		t.Helper()
		now := time.Now()
		if _, err := e.store.Put(context.Background(), queue.Put{
			ServerID: id, Sender: "carol", SenderDevice: 1, ClientID: newClientID(), ServerTime: now, ExpiresAt: now.Add(time.Hour),
			Recipients: []queue.Recipient{{Device: dev("bob", 1), Type: 1, Payload: []byte(payload)}},
		}); err != nil {
			t.Fatal(err)
		}
	}
	base := uint64(time.Now().UnixMilli()-snowflake.Epoch) << 22
	high, low := base+2<<22|5<<12, base+1<<22|5<<12 // another relay's ids (node 5)

	sf.hold.Store(int64(300 * time.Millisecond))
	put(high, "high")
	nodeB.Ring(context.Background(), []routing.Bell{{Device: dev("bob", 1), ServerID: high}})
	<-sf.reads // the fetch has read the queue (high only) and is held
	put(low, "low")
	nodeB.Ring(context.Background(), []routing.Bell{{Device: dev("bob", 1), ServerID: low}})
	sf.hold.Store(0)

	var got []uint64
	for len(got) < 2 {
		for _, env := range bob.nextOf("Deliver").GetDeliver().Envelopes {
			got = append(got, env.ServerId)
		}
	}
	if len(got) != 2 || got[0] != high || got[1] != low {
		t.Fatalf("bob got %v, want %d then %d", got, high, low)
	}
	bob.noFrame(300 * time.Millisecond)
}

// A bell below the cursor rings while a rescan is in flight, for an id
// above where that rescan started but in the range it has already read:
// the rescan must look again, not carry on past it.
func TestBellDuringRescanInReadRange(t *testing.T) {
	sf := &slowFetch{reads: make(chan struct{}, 1)}
	var net testNet
	nodeA, nodeB := net.node(), net.node()
	e := newEnv(t, wrapStore(func(s queue.Store) queue.Store { sf.Store = s; return sf }),
		func(c *Config, _ *queue.Options) { c.Router = nodeA })
	e.dir.set("bob", 1)
	bob := e.connect("bob", 1)
	bob.nextOf("QueueEmpty")
	put := func(id uint64) {
		t.Helper()
		now := time.Now()
		if _, err := e.store.Put(context.Background(), queue.Put{
			ServerID: id, Sender: "carol", SenderDevice: 1, ClientID: newClientID(), ServerTime: now, ExpiresAt: now.Add(time.Hour),
			Recipients: []queue.Recipient{{Device: dev("bob", 1), Type: 1, Payload: []byte("x")}},
		}); err != nil {
			t.Fatal(err)
		}
	}
	ring := func(id uint64) {
		nodeB.Ring(context.Background(), []routing.Bell{{Device: dev("bob", 1), ServerID: id}})
	}
	base := uint64(time.Now().UnixMilli()-snowflake.Epoch) << 22
	low, mid, high := base+1<<22|5<<12, base+2<<22|5<<12, base+3<<22|5<<12
	want := func(id uint64) {
		t.Helper()
		envs := bob.nextOf("Deliver").GetDeliver().Envelopes
		if len(envs) != 1 || envs[0].ServerId != id {
			t.Fatalf("bob got %v, want %d", envs, id)
		}
	}
	put(high)
	ring(high)
	want(high) // cursor = high
	sf.hold.Store(int64(300 * time.Millisecond))
	put(low)
	ring(low) // below the cursor: a rescan from low-1, held after reading
	<-sf.reads
	put(mid)
	ring(mid) // below the cursor, above the rescan's start, stored after it read
	sf.hold.Store(0)
	got := map[uint64]bool{}
	for len(got) < 2 {
		for _, env := range bob.nextOf("Deliver").GetDeliver().Envelopes {
			got[env.ServerId] = true
		}
	}
	if !got[low] || !got[mid] {
		t.Fatalf("bob got %v, want %d and %d", got, low, mid)
	}
	bob.noFrame(300 * time.Millisecond)
}
