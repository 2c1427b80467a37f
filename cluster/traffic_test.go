package cluster

import (
	"context"
	"crypto/rand"
	"fmt"
	"net/http"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/gorilla/websocket"

	"github.com/hushchat/hush/crypto"
	"github.com/hushchat/hush/keyserver/ksclient"
	"github.com/hushchat/hush/protocol"
)

// device is a hush device at the protocol level: real Signal keys and
// ciphertext from package crypto, registered at the key server, speaking
// the relay's WebSocket protocol. The failure tests use it instead of the
// client package so that they control every retry; it does what the
// client does about the guarantees under test — retry with the same client
// id and ciphertext until a SendAck, deduplicate by server id, acknowledge
// only what it has processed.
type device struct {
	name  string
	token string
	ks    *ksclient.Client
	proto *crypto.Protocol
}

func registerDevice(t testing.TB, ksURL, name string) *device {
	t.Helper()
	ctx := context.Background()
	ks, err := ksclient.New(ksURL)
	if err != nil {
		t.Fatal(err)
	}
	id, err := crypto.GenerateIdentityKeyPair()
	if err != nil {
		t.Fatal(err)
	}
	reg, err := crypto.GenerateRegistrationID()
	if err != nil {
		t.Fatal(err)
	}
	spk, err := crypto.GenerateSignedPreKey(id, 1)
	if err != nil {
		t.Fatal(err)
	}
	pks, _, err := crypto.GeneratePreKeys(1, 10)
	if err != nil {
		t.Fatal(err)
	}
	lr, err := crypto.GenerateLastResortPreKey()
	if err != nil {
		t.Fatal(err)
	}
	sp := spk.Public()
	keys := ksclient.DeviceKeys{
		IdentityKey:    id.PublicKey(),
		RegistrationID: reg,
		SignedPreKey:   ksclient.SignedPreKey{ID: sp.ID, PublicKey: sp.PublicKey, Signature: sp.Signature},
		LastResort:     ksclient.PreKey{ID: lr.Public().ID, PublicKey: lr.Public().PublicKey},
	}
	for _, p := range pks {
		keys.OneTime = append(keys.OneTime, ksclient.PreKey{ID: p.Public().ID, PublicKey: p.Public().PublicKey})
	}
	s, err := ks.Register(ctx, name, "", keys, id.Sign)
	if err != nil {
		t.Fatalf("register %s: %v", name, err)
	}
	p, err := crypto.New(crypto.Config{Address: crypto.Address{Name: name, DeviceID: s.Device}, Identity: id, RegistrationID: reg, Store: crypto.NewMemoryStore()})
	if err != nil {
		t.Fatal(err)
	}
	if err := p.StorePreKeys(ctx, append(pks, lr)); err != nil {
		t.Fatal(err)
	}
	if err := p.StoreSignedPreKey(ctx, spk); err != nil {
		t.Fatal(err)
	}
	return &device{name: name, token: s.Token, ks: ks, proto: p}
}

func (d *device) addr() crypto.Address { return crypto.Address{Name: d.name, DeviceID: 1} }

// encryptAll encrypts the plaintexts for to, in order, as Send frames with
// fresh client ids: what a client's outbox holds, resent verbatim on retry.
func (d *device) encryptAll(t testing.TB, to *device, plaintexts [][]byte) []*protocol.Frame {
	t.Helper()
	ctx := context.Background()
	bs, err := d.ks.Bundles(ctx, d.token, to.name, 1)
	if err != nil || len(bs) != 1 {
		t.Fatalf("bundle of %s: %v", to.name, err)
	}
	b := bs[0]
	if err := d.proto.ProcessBundle(ctx, to.addr(), crypto.Bundle{
		IdentityKey: b.IdentityKey, RegistrationID: b.RegistrationID, DeviceID: b.DeviceID,
		SignedPreKeyID: b.SignedPreKey.ID, SignedPreKey: b.SignedPreKey.PublicKey, SignedPreKeySignature: b.SignedPreKey.Signature,
		PreKeyID: b.PreKey.ID, PreKey: b.PreKey.PublicKey,
	}); err != nil {
		t.Fatalf("process bundle of %s: %v", to.name, err)
	}
	frames := make([]*protocol.Frame, len(plaintexts))
	for i, pt := range plaintexts {
		c, err := d.proto.Encrypt(ctx, to.addr(), pt)
		if err != nil {
			t.Fatalf("encrypt for %s: %v", to.name, err)
		}
		typ := protocol.EnvelopeType_ENVELOPE_TYPE_SIGNAL
		if c.Type == crypto.MessageTypePreKey {
			typ = protocol.EnvelopeType_ENVELOPE_TYPE_PREKEY
		}
		cid := make([]byte, protocol.ClientIDSize)
		rand.Read(cid)
		frames[i] = &protocol.Frame{Body: &protocol.Frame_Send{Send: &protocol.Send{
			ClientId:   cid,
			Recipients: []*protocol.Recipient{{Account: to.name, Device: 1, Payload: c.Body, Type: typ}},
		}}}
	}
	return frames
}

func (d *device) decrypt(env *protocol.Envelope) ([]byte, error) {
	c := crypto.Ciphertext{Type: crypto.MessageTypeSignal, Body: env.Payload}
	if env.Type == protocol.EnvelopeType_ENVELOPE_TYPE_PREKEY {
		c.Type = crypto.MessageTypePreKey
	}
	return d.proto.Decrypt(context.Background(), crypto.Address{Name: env.Sender, DeviceID: env.SenderDevice}, c)
}

// wsConn is one WebSocket to a relay.
type wsConn struct {
	ws     *websocket.Conn
	frames chan *protocol.Frame
	done   chan struct{}
	err    error
	wmu    sync.Mutex
}

func dialRelay(url, token string) (*wsConn, error) {
	dl := websocket.Dialer{Subprotocols: []string{protocol.Subprotocol}, HandshakeTimeout: 5 * time.Second}
	ws, resp, err := dl.Dial(url, http.Header{"Authorization": {"Bearer " + token}})
	if err != nil {
		if resp != nil {
			return nil, fmt.Errorf("dial %s: %w (HTTP %d)", url, err, resp.StatusCode)
		}
		return nil, fmt.Errorf("dial %s: %w", url, err)
	}
	c := &wsConn{ws: ws, frames: make(chan *protocol.Frame, 4096), done: make(chan struct{})}
	go func() {
		defer close(c.done)
		for {
			_, b, err := ws.ReadMessage()
			if err != nil {
				c.err = err
				return
			}
			f, err := protocol.DecodeFrame(b)
			if err != nil {
				c.err = err
				return
			}
			c.frames <- f
		}
	}()
	return c, nil
}

func (c *wsConn) send(f *protocol.Frame) error {
	b, err := protocol.EncodeFrame(f)
	if err != nil {
		return err
	}
	c.wmu.Lock()
	defer c.wmu.Unlock()
	c.ws.SetWriteDeadline(time.Now().Add(10 * time.Second))
	return c.ws.WriteMessage(websocket.BinaryMessage, b)
}

func (c *wsConn) close() { c.ws.Close() }

// relaySet is the relays clients may use; a client tries its preferred
// relay first and the others after it, as a client behind a load balancer
// would land on any surviving node.
type relaySet struct {
	urls []string
}

func (rs *relaySet) order(pref int) []string {
	out := make([]string, 0, len(rs.urls))
	for i := range rs.urls {
		out = append(out, rs.urls[(pref+i)%len(rs.urls)])
	}
	return out
}

// connect dials the relays in order until one accepts, retrying the round
// for up to a minute.
func (rs *relaySet) connect(ctx context.Context, pref int, token string) (*wsConn, int, error) {
	deadline := time.Now().Add(time.Minute)
	var last error
	for time.Now().Before(deadline) {
		for i, u := range rs.order(pref) {
			c, err := dialRelay(u, token)
			if err == nil {
				return c, (pref + i) % len(rs.urls), nil
			}
			last = err
		}
		select {
		case <-ctx.Done():
			return nil, 0, ctx.Err()
		case <-time.After(200 * time.Millisecond):
		}
	}
	return nil, 0, fmt.Errorf("no relay accepts a connection: %w", last)
}

// conversation is one sender's messages to one recipient.
type conversation struct {
	id       int
	from, to *device
	frames   []*protocol.Frame
	index    map[string]int // client id → seq

	mu       sync.Mutex
	acked    []bool
	serverID []uint64
}

func newConversation(t testing.TB, id int, from, to *device, n int) *conversation {
	pts := make([][]byte, n)
	for i := range pts {
		pts[i] = fmt.Appendf(nil, "conv %d seq %d", id, i)
	}
	c := &conversation{id: id, from: from, to: to, frames: from.encryptAll(t, to, pts),
		index: make(map[string]int, n), acked: make([]bool, n), serverID: make([]uint64, n)}
	for i, f := range c.frames {
		c.index[string(f.GetSend().ClientId)] = i
	}
	return c
}

func (c *conversation) ackedCount() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	n := 0
	for _, a := range c.acked {
		if a {
			n++
		}
	}
	return n
}

// trafficStats counts what the clients saw.
type trafficStats struct {
	acks        atomic.Int64 // SendAcks without error
	unavailable atomic.Int64 // SendAcks with CODE_UNAVAILABLE (retried)
	reconnects  atomic.Int64
	redelivered atomic.Int64 // envelopes delivered again (same server id)
	delivered   atomic.Int64 // envelopes handed to the application
}

// peer is one device at work: it sends its conversation (if any) and
// receives into its inbox over one connection at a time — a device has one
// live connection, a second would replace the first. It resends every
// message without a successful SendAck — after a dropped connection (to the
// next relay) or a CODE_UNAVAILABLE (after its retry_after_ms) — with the
// same frame; it decrypts and records each delivered envelope, then
// acknowledges it, and only acknowledges again a server id it processed.
type peer struct {
	d    *device
	pref int
	out  *conversation // nil: receive only
	in   *inbox
}

type retry struct {
	i  int
	at time.Time
}

func (p *peer) run(ctx context.Context, rs *relaySet, window int, pace time.Duration, st *trafficStats) error {
	for ctx.Err() == nil {
		conn, _, err := rs.connect(ctx, p.pref, p.d.token)
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			return fmt.Errorf("%s: %w", p.d.name, err)
		}
		err = p.serve(ctx, conn, window, pace, st)
		conn.close()
		if err != nil {
			return err
		}
		if ctx.Err() == nil {
			st.reconnects.Add(1)
		}
	}
	return nil
}

// serve works one connection until it drops (nil) or something is wrong
// for good (an error).
func (p *peer) serve(ctx context.Context, conn *wsConn, window int, pace time.Duration, st *trafficStats) error {
	c := p.out
	var queue []int
	inflight := map[string]int{}
	var retries []retry
	if c != nil {
		c.mu.Lock()
		for i, a := range c.acked {
			if !a {
				queue = append(queue, i)
			}
		}
		c.mu.Unlock()
	}
	var nextAt time.Time
	tick := time.NewTicker(10 * time.Millisecond)
	defer tick.Stop()
	for {
		now := time.Now()
		for c != nil && len(inflight) < window && !now.Before(nextAt) {
			i := -1
			if len(retries) > 0 && !retries[0].at.After(now) {
				i, retries = retries[0].i, retries[1:]
			} else if len(queue) > 0 {
				i, queue = queue[0], queue[1:]
			}
			if i < 0 {
				break
			}
			f := c.frames[i]
			inflight[string(f.GetSend().ClientId)] = i
			if err := conn.send(f); err != nil {
				return nil
			}
			if pace > 0 {
				nextAt = now.Add(pace)
			}
		}
		select {
		case <-ctx.Done():
			return nil
		case <-conn.done:
			return nil
		case <-tick.C:
		case f := <-conn.frames:
			if d := f.GetDeliver(); d != nil {
				if !p.in.handle(conn, d, st) {
					return nil
				}
				continue
			}
			a := f.GetSendAck()
			if a == nil || c == nil {
				continue
			}
			i, ok := inflight[string(a.ClientId)]
			if !ok {
				continue
			}
			delete(inflight, string(a.ClientId))
			switch {
			case a.Error == nil:
				c.mu.Lock()
				c.acked[i], c.serverID[i] = true, a.ServerId
				c.mu.Unlock()
				st.acks.Add(1)
			case a.Error.Code == protocol.ErrorCode_CODE_UNAVAILABLE:
				st.unavailable.Add(1)
				retries = append(retries, retry{i, time.Now().Add(time.Duration(a.Error.RetryAfterMs) * time.Millisecond)})
			default:
				return fmt.Errorf("%s: send %d refused: %v", c.from.name, i, a.Error)
			}
		}
	}
}

// inbox is one device's application state: what it has processed, by
// server id and by content.
type inbox struct {
	d *device

	mu      sync.Mutex
	seen    map[uint64]bool     // server ids processed (the client's processed-id table)
	got     map[int]map[int]int // conversation → seq → times handed to the application
	arrival map[int][]int       // conversation → seqs in arrival order
	at      []time.Time         // when each message reached the application
	errs    []error
}

func newInbox(d *device) *inbox {
	return &inbox{d: d, seen: map[uint64]bool{}, got: map[int]map[int]int{}, arrival: map[int][]int{}}
}

// handle processes one Deliver and acknowledges it; false means the
// connection broke.
func (in *inbox) handle(conn *wsConn, d *protocol.Deliver, st *trafficStats) bool {
	ids := make([]uint64, 0, len(d.Envelopes))
	for _, env := range d.Envelopes {
		if env.Ephemeral {
			continue
		}
		ids = append(ids, env.ServerId)
		in.mu.Lock()
		dup := in.seen[env.ServerId]
		in.mu.Unlock()
		if dup {
			st.redelivered.Add(1)
			continue
		}
		pt, err := in.d.decrypt(env)
		if err != nil {
			in.fail(fmt.Errorf("%s: decrypt %d from %s: %w", in.d.name, env.ServerId, env.Sender, err))
			continue
		}
		var conv, seq int
		if _, err := fmt.Sscanf(string(pt), "conv %d seq %d", &conv, &seq); err != nil {
			in.fail(fmt.Errorf("%s: plaintext %q", in.d.name, pt))
			continue
		}
		in.mu.Lock()
		in.seen[env.ServerId] = true
		if in.got[conv] == nil {
			in.got[conv] = map[int]int{}
		}
		in.got[conv][seq]++
		in.arrival[conv] = append(in.arrival[conv], seq)
		in.at = append(in.at, time.Now())
		in.mu.Unlock()
		st.delivered.Add(1)
	}
	if len(ids) == 0 {
		return true
	}
	return conn.send(&protocol.Frame{Body: &protocol.Frame_Ack{Ack: &protocol.Ack{ServerIds: ids}}}) == nil
}

func (in *inbox) fail(err error) {
	in.mu.Lock()
	in.errs = append(in.errs, err)
	in.mu.Unlock()
}

func (in *inbox) count(conv int) int {
	in.mu.Lock()
	defer in.mu.Unlock()
	return len(in.got[conv])
}

// deliveredBetween counts messages that reached the application in [from, to).
func (in *inbox) deliveredBetween(from, to time.Time) int {
	in.mu.Lock()
	defer in.mu.Unlock()
	n := 0
	for _, at := range in.at {
		if !at.Before(from) && at.Before(to) {
			n++
		}
	}
	return n
}

// runConfig describes one run of runTraffic.
type runConfig struct {
	relays  *relaySet
	convs   []*conversation // at most one sent by each device
	pref    map[*device]int // preferred relay of each device
	window  int
	pace    time.Duration
	timeout time.Duration
	during  func(st *trafficStats) // called once while traffic flows
}

// runTraffic drives every device until each message is acknowledged and
// delivered (or the timeout), and returns the inboxes for the checks.
func runTraffic(t *testing.T, rc runConfig) (map[*device]*inbox, *trafficStats) {
	t.Helper()
	st := &trafficStats{}
	ctx, cancel := context.WithTimeout(context.Background(), rc.timeout)
	defer cancel()
	peers := map[*device]*peer{}
	get := func(d *device) *peer {
		if peers[d] == nil {
			peers[d] = &peer{d: d, pref: rc.pref[d], in: newInbox(d)}
		}
		return peers[d]
	}
	for _, c := range rc.convs {
		if get(c.from).out != nil {
			t.Fatalf("%s sends two conversations", c.from.name)
		}
		get(c.from).out = c
		get(c.to)
	}
	pctx, stop := context.WithCancel(ctx)
	var wg sync.WaitGroup
	errs := make(chan error, len(peers))
	for _, p := range peers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := p.run(pctx, rc.relays, rc.window, rc.pace, st); err != nil {
				errs <- err
			}
		}()
	}
	if rc.during != nil {
		rc.during(st)
	}
	done := func() bool {
		for _, c := range rc.convs {
			n := c.ackedCount()
			if n < len(c.frames) || peers[c.to].in.count(c.id) < n {
				return false
			}
		}
		return true
	}
	for !done() && ctx.Err() == nil && len(errs) == 0 {
		time.Sleep(50 * time.Millisecond)
	}
	if ctx.Err() != nil {
		t.Errorf("traffic did not complete within %v: %d acknowledged, %d delivered", rc.timeout, st.acks.Load(), st.delivered.Load())
	}
	// A little longer, so that a duplicate would show up.
	time.Sleep(500 * time.Millisecond)
	stop()
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	inboxes := map[*device]*inbox{}
	for d, p := range peers {
		inboxes[d] = p.in
	}
	return inboxes, st
}

// checkExactlyOnce asserts that every message got a SendAck and reached
// its recipient's application exactly once, and returns how many arrived
// in a different order than sent (a cross-relay effect the client undoes
// by ordering by the sender's counter, here the seq).
func checkExactlyOnce(t *testing.T, convs []*conversation, inboxes map[*device]*inbox) (reordered int) {
	t.Helper()
	for _, in := range inboxes {
		for _, err := range in.errs {
			t.Error(err)
		}
	}
	for _, c := range convs {
		in := inboxes[c.to]
		in.mu.Lock()
		got := in.got[c.id]
		arrival := in.arrival[c.id]
		in.mu.Unlock()
		c.mu.Lock()
		for i, a := range c.acked {
			if !a {
				t.Errorf("conversation %d (%s → %s): message %d never acknowledged", c.id, c.from.name, c.to.name, i)
				continue
			}
			switch n := got[i]; {
			case n == 0:
				t.Errorf("conversation %d (%s → %s): acknowledged message %d (server id %d) lost", c.id, c.from.name, c.to.name, i, c.serverID[i])
			case n > 1:
				t.Errorf("conversation %d (%s → %s): message %d reached the application %d times", c.id, c.from.name, c.to.name, i, n)
			}
		}
		c.mu.Unlock()
		if len(got) != len(c.frames) {
			t.Errorf("conversation %d: %d distinct messages delivered, want %d", c.id, len(got), len(c.frames))
		}
		for j := 1; j < len(arrival); j++ {
			if arrival[j] < arrival[j-1] {
				reordered++
			}
		}
	}
	return reordered
}
