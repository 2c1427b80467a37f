package server

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"io"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"github.com/gorilla/websocket"
	"google.golang.org/protobuf/proto"

	"github.com/hushchat/hush/protocol"
	"github.com/hushchat/hush/server/queue"
)

// conn is one device's WebSocket. Goroutines: the reader (for the life of
// the connection), the pump (only while there is something to write or
// deliver; an idle connection has none), and one short-lived goroutine per
// Send being stored.
type conn struct {
	r       *Relay
	ws      *websocket.Conn
	dev     queue.Device
	session uint64
	expiry  time.Time

	sendSlots chan struct{} // bounds this connection's Sends in flight; made by the reader at its first Send
	closing   atomic.Bool   // a close was requested: read no more frames

	// Reader-only state.
	bucket    tokenBucket
	badFrames int

	mu       sync.Mutex
	out      [][]byte // encoded frames waiting for the pump
	outBytes int
	pingDue  bool
	nextPing time.Time
	closeReq int // close code to send after out is flushed; 0 none
	closeMsg string
	pumping  bool
	dead     bool

	// Delivery state (see deliver.go).
	draining       bool   // the backlog since connect is not delivered yet
	drainUpTo      uint64 // ids ≤ this may have been stored unseen: await them
	waitingHorizon bool
	fetchNeeded    bool   // something is in the queue that memory lacks
	fetchGen       uint64 // bumped by every reason to fetch
	fetchBackoff   bool   // the last fetch failed; a timer retries
	blockedAt      uint64 // a fetch stopped before this in-flight id
	cursor         uint64 // highest id delivered on this connection
	rescan         bool   // a bell named an id ≤ cursor: read from rescanAfter
	rescanAfter    uint64
	fetching       bool                // a Fetch is running
	fetchRescan    bool                // … and it is a rescan
	ackedDuring    map[uint64]struct{} // ids acked while a rescan ran
	bellsDuring    []uint64            // bell ids that rang while a fetch ran
	pending        []pendingEntry
	pendingBytes   int
	unacked        map[uint64]struct{}

	// Acks (see handleAck), guarded by mu.
	acks   []uint64 // ids waiting for the ack worker
	pongs  [][]byte // Pongs to queue once the acks received before them are applied
	acking bool     // an ack worker runs
	ackWG  sync.WaitGroup

	subs []string // presence subjects (guarded by Relay.presMu)
}

func newConn(r *Relay, ws *websocket.Conn, dev queue.Device, expiry time.Time) *conn {
	c := &conn{
		r:        r,
		ws:       ws,
		dev:      dev,
		expiry:   expiry,
		draining: true,
		nextPing: r.cfg.Now().Add(r.cfg.PingInterval),
	}
	c.bucket.init(r.cfg.FrameRate, r.cfg.FrameBurst)
	return c
}

// tokenBucket slows a connection's reader to rate frames per second with
// bursts of burst: a flood is throttled through TCP backpressure instead of
// costing the relay CPU.
type tokenBucket struct {
	rate   float64
	burst  float64
	tokens float64
	last   time.Time
}

func (b *tokenBucket) init(rate, burst int) {
	b.rate, b.burst, b.tokens = float64(rate), float64(burst), float64(burst)
	b.last = time.Now()
}

func (b *tokenBucket) take() {
	now := time.Now()
	b.tokens = min(b.burst, b.tokens+now.Sub(b.last).Seconds()*b.rate)
	b.last = now
	if b.tokens < 1 {
		wait := time.Duration((1 - b.tokens) / b.rate * float64(time.Second))
		time.Sleep(wait)
		b.tokens = 1
		b.last = time.Now()
	}
	b.tokens--
}

var readBufs = sync.Pool{New: func() any { return new(bytes.Buffer) }}

// maxPooledReadBuf: larger read buffers are dropped rather than pooled, so
// one big frame does not pin a megabyte per pool slot.
const maxPooledReadBuf = 64 << 10

// readLoop reads frames until the connection ends, then tears it down.
func (c *conn) readLoop() {
	defer c.teardown()
	ws := c.ws
	deadline := func() { ws.SetReadDeadline(time.Now().Add(c.r.cfg.ReadTimeout)) }
	deadline()
	ws.SetPongHandler(func(string) error { deadline(); return nil })

	ctx, cancel := context.WithTimeout(c.r.ctx, 5*time.Second)
	if depth, err := c.r.store.Depth(ctx, c.dev); err == nil {
		c.r.m.queueDepth.Observe(float64(depth))
	}
	cancel()

	for {
		mt, rd, err := ws.NextReader()
		if err != nil {
			c.logClose(err)
			return
		}
		if !c.closing.Load() {
			deadline()
		}
		buf := readBufs.Get().(*bytes.Buffer)
		buf.Reset()
		_, err = buf.ReadFrom(io.LimitReader(rd, protocol.MaxFrameSize+1))
		if err != nil {
			readBufs.Put(buf)
			c.logClose(err)
			return
		}
		if !c.closing.Load() {
			c.bucket.take()
			c.handleMessage(mt, buf.Bytes())
		}
		if buf.Cap() <= maxPooledReadBuf {
			readBufs.Put(buf)
		}
	}
}

func (c *conn) logClose(err error) {
	reason := "error"
	var ce *websocket.CloseError
	switch {
	case errors.As(err, &ce):
		reason = "client_" + protocol.CloseCodeName(ce.Code)
	case c.closing.Load():
		c.mu.Lock()
		reason = protocol.CloseCodeName(c.closeReq)
		c.mu.Unlock()
	}
	c.r.m.disconnects.WithLabelValues(reason).Inc()
	c.r.log.Debug("device disconnected", "account", c.dev.Account, "device", c.dev.ID, "reason", reason)
}

func (c *conn) teardown() {
	// Acks read before the end are applied before the device counts as
	// gone (and before Shutdown, which waits for detach, closes the store).
	c.ackWG.Wait()
	c.mu.Lock()
	c.dead = true
	unacked := len(c.unacked)
	c.unacked = nil
	c.pending = nil
	c.out = nil
	c.mu.Unlock()
	c.ws.Close()
	c.r.m.redeliveries.Add(float64(unacked))
	c.r.detach(c)
}

// handleMessage acts on one WebSocket message.
func (c *conn) handleMessage(mt int, b []byte) {
	if mt != websocket.BinaryMessage {
		c.refuse(protocol.ErrorCode_CODE_BAD_FRAME, "frames are binary WebSocket messages", 0)
		return
	}
	if len(b) > protocol.MaxFrameSize {
		c.refuse(protocol.ErrorCode_CODE_FRAME_TOO_LARGE, "frame exceeds the maximum frame size", protocol.MaxFrameSize)
		c.closeWith(protocol.CloseTooBig, "frame too large")
		return
	}
	f, err := protocol.DecodeFrame(b)
	if err != nil {
		c.refuseDecode(b, err)
		return
	}
	switch body := f.Body.(type) {
	case *protocol.Frame_Send:
		c.startSend(body.Send)
	case *protocol.Frame_Ack:
		c.handleAck(body.Ack.ServerIds)
	case *protocol.Frame_Ping:
		c.pong(encode(&protocol.Frame{Body: &protocol.Frame_Pong{Pong: &protocol.Pong{Nonce: body.Ping.GetNonce()}}}))
	case *protocol.Frame_Pong:
		// Liveness only; the read deadline was extended above.
	case *protocol.Frame_Heartbeat:
		if err := c.r.pres.Heartbeat(c.r.ctx, c.dev.Account); err != nil {
			c.r.log.Warn("presence heartbeat failed", "account", c.dev.Account, "err", err)
		}
	case *protocol.Frame_PresenceSettings:
		if err := c.r.pres.SetHidden(c.r.ctx, c.dev.Account, body.PresenceSettings.GetHideLastSeen()); err != nil {
			c.r.log.Warn("presence settings failed", "account", c.dev.Account, "err", err)
			c.refuse(protocol.ErrorCode_CODE_UNAVAILABLE, "presence unavailable; retry later", 0)
		}
	case *protocol.Frame_PresenceSubscribe:
		c.r.subscribePresence(c, body.PresenceSubscribe.GetAccounts())
	case *protocol.Frame_PushRegister:
		c.registerPush(body.PushRegister.GetEndpoint())
	default:
		c.refuse(protocol.ErrorCode_CODE_BAD_FRAME, "this frame type is sent by the relay, not by clients", 0)
	}
}

// refuseDecode answers a frame that did not decode or validate. A Send
// whose client id is readable is answered with a SendAck carrying the
// error, so the client can match it to the message.
func (c *conn) refuseDecode(b []byte, err error) {
	code := protocol.ErrorCode_CODE_BAD_FRAME
	var limit uint64
	msg := err.Error()
	var le *protocol.LimitError
	if errors.As(err, &le) {
		limit = uint64(le.Limit)
		switch le.What {
		case "recipient devices":
			code = protocol.ErrorCode_CODE_TOO_MANY_RECIPIENTS
		case "payload size":
			code = protocol.ErrorCode_CODE_PAYLOAD_TOO_LARGE
		}
	}
	var f protocol.Frame
	if proto.Unmarshal(b, &f) == nil {
		if s := f.GetSend(); s != nil && len(s.ClientId) == protocol.ClientIDSize {
			c.countBad(code)
			c.enqueue(sendAckError(s.ClientId, &protocol.Error{Code: code, Message: msg, Limit: limit}))
			return
		}
	}
	c.refuse(code, msg, limit)
}

func sendAckError(clientID []byte, e *protocol.Error) *protocol.Frame {
	return &protocol.Frame{Body: &protocol.Frame_SendAck{SendAck: &protocol.SendAck{ClientId: clientID, Error: e}}}
}

// refuse answers a bad frame with an Error and counts it against the
// connection's budget.
func (c *conn) refuse(code protocol.ErrorCode, msg string, limit uint64) {
	c.countBad(code)
	c.enqueue(&protocol.Frame{Body: &protocol.Frame_Error{Error: &protocol.Error{Code: code, Message: msg, Limit: limit}}})
}

func (c *conn) countBad(code protocol.ErrorCode) {
	c.r.m.rejected.WithLabelValues(code.String()).Inc()
	c.badFrames++
	if c.badFrames == c.r.cfg.MaxBadFrames {
		c.r.log.Info("closing a connection that sent too many bad frames", "account", c.dev.Account, "device", c.dev.ID)
		c.closeWith(protocol.CloseProtocolViolation, "too many malformed or refused frames")
	}
}

// maxQueuedAcks bounds the ack ids one connection has waiting for its ack
// worker; beyond it the reader applies its acks itself, so a client that
// acks faster than the store deletes is slowed through TCP backpressure.
const maxQueuedAcks = 4 * protocol.MaxAckIDs

// handleAck hands the ids to the connection's ack worker and goes on
// reading: an ack must not hold up the Sends behind it while the store
// commits it. The worker applies whatever acks have queued up meanwhile as
// one store call. Pongs wait for the acks received before their Ping (see
// pong), and teardown waits for the worker, so "answered" and
// "disconnected" both still mean "every earlier ack is applied".
func (c *conn) handleAck(ids []uint64) {
	c.mu.Lock()
	if c.acking {
		if len(c.acks)+len(ids) <= maxQueuedAcks {
			c.acks = append(c.acks, ids...)
			c.mu.Unlock()
			return
		}
		c.mu.Unlock()
		c.applyAcks(ids)
		return
	}
	c.acking = true
	c.acks = append(c.acks, ids...)
	c.mu.Unlock()
	c.ackWG.Add(1) // only the reader adds, and only the reader's teardown waits
	go c.ackLoop()
}

// ackLoop applies queued acks until none are left, then queues the Pongs
// that waited for them.
func (c *conn) ackLoop() {
	defer c.ackWG.Done()
	var spare []uint64
	for {
		c.mu.Lock()
		ids, pongs := c.acks, c.pongs
		c.acks, c.pongs = spare[:0], nil
		if len(ids) == 0 && len(pongs) == 0 {
			c.acking = false
			c.acks = nil // an idle connection keeps no buffer
			c.mu.Unlock()
			return
		}
		c.mu.Unlock()
		if len(ids) > 0 {
			c.applyAcks(ids)
		}
		for _, p := range pongs {
			c.enqueueBytes(p, false)
		}
		spare = ids
		if cap(spare) > maxQueuedAcks {
			spare = nil
		}
	}
}

// pong answers a Ping once the acks received before it are applied.
func (c *conn) pong(b []byte) {
	c.mu.Lock()
	if c.acking {
		c.pongs = append(c.pongs, b)
		c.mu.Unlock()
		return
	}
	c.mu.Unlock()
	c.enqueueBytes(b, false)
}

// applyAcks deletes acked envelopes from the store and then forgets them
// here. They stay in unacked until the store has deleted them: a rescan
// reading the queue meanwhile must still see them as delivered.
func (c *conn) applyAcks(ids []uint64) {
	ctx, cancel := context.WithTimeout(c.r.ctx, c.r.cfg.SendTimeout)
	n, err := c.r.store.Ack(ctx, c.dev, ids)
	cancel()
	if err != nil {
		c.r.log.Warn("ack failed", "account", c.dev.Account, "device", c.dev.ID, "err", err)
		c.r.m.rejected.WithLabelValues(protocol.ErrorCode_CODE_UNAVAILABLE.String()).Inc()
		c.enqueue(&protocol.Frame{Body: &protocol.Frame_Error{Error: &protocol.Error{
			Code: protocol.ErrorCode_CODE_UNAVAILABLE, Message: "ack not stored; send it again later", RetryAfterMs: 1000}}})
		return
	}
	c.r.m.acks.Add(float64(n))
	c.mu.Lock()
	wasFull := len(c.unacked) >= c.r.cfg.MaxUnacked
	for _, id := range ids {
		delete(c.unacked, id)
	}
	if c.fetching && c.fetchRescan {
		// A rescan reading now may have seen these rows before the ack
		// deleted them: it must not deliver them again.
		if c.ackedDuring == nil {
			c.ackedDuring = make(map[uint64]struct{}, len(ids))
		}
		for _, id := range ids {
			c.ackedDuring[id] = struct{}{}
		}
	}
	c.mu.Unlock()
	if wasFull {
		c.kick()
	}
}

func (c *conn) registerPush(endpoint string) {
	if c.r.push == nil {
		c.refuse(protocol.ErrorCode_CODE_FORBIDDEN, "push notifications are not enabled on this relay", 0)
		return
	}
	ctx, cancel := context.WithTimeout(c.r.ctx, 5*time.Second)
	defer cancel()
	if err := c.r.push.Register(ctx, c.dev, endpoint); err != nil {
		c.refuse(protocol.ErrorCode_CODE_BAD_FRAME, "push endpoint refused: "+err.Error(), 0)
	}
}

// encode marshals a frame the relay built. Frames the relay builds are
// valid by construction (they are made from validated input), so this
// skips ValidateFrame's walk on the hot path.
func encode(f *protocol.Frame) []byte {
	b, err := proto.Marshal(f)
	if err != nil {
		panic("relay: encoding a frame it built: " + err.Error())
	}
	return b
}

// enqueue queues a frame for the pump. A client whose queue overflows is
// not reading: it is disconnected (CloseSlowReader) rather than allowed to
// grow the relay's memory.
func (c *conn) enqueue(f *protocol.Frame) {
	c.enqueueBytes(encode(f), false)
}

// enqueueEphemeral hands an ephemeral envelope to the device now; when the
// connection is backed up the envelope is dropped (it was never promised).
func (c *conn) enqueueEphemeral(env *protocol.Envelope) bool {
	b := encode(&protocol.Frame{Body: &protocol.Frame_Deliver{Deliver: &protocol.Deliver{Envelopes: []*protocol.Envelope{env}}}})
	if !c.enqueueBytes(b, true) {
		return false
	}
	c.r.m.deliveries.WithLabelValues("ephemeral").Inc()
	return true
}

func (c *conn) enqueueBytes(b []byte, droppable bool) bool {
	c.mu.Lock()
	if c.dead || c.closeReq != 0 {
		c.mu.Unlock()
		return false
	}
	if len(c.out) >= c.r.cfg.MaxOutFrames || c.outBytes+len(b) > c.r.cfg.MaxOutBytes {
		if droppable {
			c.mu.Unlock()
			return false
		}
		c.out = nil
		c.outBytes = 0
		c.mu.Unlock()
		c.r.log.Info("closing a slow reader", "account", c.dev.Account, "device", c.dev.ID)
		c.forceClose(protocol.CloseSlowReader, "send buffer full: read your frames")
		return false
	}
	c.out = append(c.out, b)
	c.outBytes += len(b)
	start := !c.pumping
	c.pumping = true
	c.mu.Unlock()
	if start {
		go c.pump()
	}
	return true
}

// closeWith closes the connection after the frames already queued (e.g.
// an Error, a Reconnect) have been written.
func (c *conn) closeWith(code int, msg string) {
	c.mu.Lock()
	if c.dead || c.closeReq != 0 {
		c.mu.Unlock()
		return
	}
	c.closeReq, c.closeMsg = code, msg
	c.closing.Store(true)
	c.mu.Unlock()
	c.kick()
}

// forceClose closes at once, without waiting for the pump, which may be
// stuck writing to a client that does not read.
func (c *conn) forceClose(code int, msg string) {
	c.mu.Lock()
	if c.dead || c.closeReq != 0 && c.closeReq == code {
		c.mu.Unlock()
		return
	}
	c.closeReq, c.closeMsg = code, msg
	c.closing.Store(true)
	c.mu.Unlock()
	go func() {
		c.ws.WriteControl(websocket.CloseMessage, websocket.FormatCloseMessage(code, msg), time.Now().Add(time.Second))
		c.ws.NetConn().Close()
	}()
}

// tick is called about every second by the relay: it schedules pings and
// ends connections whose token expired.
func (c *conn) tick(now time.Time) {
	if !now.Before(c.expiry) {
		c.closeWith(protocol.CloseTokenExpired, "token expired; reconnect with a fresh token")
		return
	}
	c.mu.Lock()
	if c.dead || now.Before(c.nextPing) {
		c.mu.Unlock()
		return
	}
	c.nextPing = now.Add(c.r.cfg.PingInterval)
	c.pingDue = true
	c.mu.Unlock()
	c.kick()
}

// kick makes sure a pump runs if there may be work.
func (c *conn) kick() {
	c.mu.Lock()
	if c.pumping || c.dead {
		c.mu.Unlock()
		return
	}
	c.pumping = true
	c.mu.Unlock()
	go c.pump()
}

// pump writes queued frames and deliveries until there is nothing left to
// do, then exits; kick starts it again. Only the pump writes data frames,
// so writes need no further locking.
func (c *conn) pump() {
	for {
		c.mu.Lock()
		if c.dead {
			c.pumping = false
			c.mu.Unlock()
			return
		}
		if len(c.out) > 0 || c.pingDue {
			out, ping := c.out, c.pingDue
			c.out, c.outBytes, c.pingDue = nil, 0, false
			c.mu.Unlock()
			if !c.writeFrames(out, ping) {
				return
			}
			continue
		}
		if c.closeReq != 0 {
			code, msg := c.closeReq, c.closeMsg
			c.mu.Unlock()
			c.ws.WriteControl(websocket.CloseMessage, websocket.FormatCloseMessage(code, msg), time.Now().Add(c.r.cfg.WriteTimeout))
			// Give the client a moment to answer the close, then the
			// reader's deadline ends the connection. pumping stays true:
			// nothing more is written.
			c.ws.SetReadDeadline(time.Now().Add(2 * time.Second))
			return
		}
		frames, queueEmpty, more := c.deliverLocked() // unlocks c.mu
		if len(frames) > 0 && !c.writeFrames(frames, false) {
			return
		}
		if queueEmpty && !c.writeFrames([][]byte{queueEmptyFrame}, false) {
			return
		}
		if !more {
			c.mu.Lock()
			if len(c.out) == 0 && !c.pingDue && c.closeReq == 0 && !c.hasDeliveryWorkLocked() {
				c.pumping = false
				c.mu.Unlock()
				return
			}
			c.mu.Unlock()
		}
	}
}

var queueEmptyFrame = encode(&protocol.Frame{Body: &protocol.Frame_QueueEmpty{QueueEmpty: &protocol.QueueEmpty{}}})

// writeFrames writes frames (and a ping) with the write deadline; on error
// the connection is closed and false returned.
//
// The frames are written by hand, not through gorilla's writer, which
// makes one write(2) per message: here every frame queued together goes
// out in as few writes as the pooled buffer allows (one, for the SendAcks
// of a group commit or a batch of deliveries). A server frame is a short
// header and the unmasked payload, so nothing is lost by it; each Write
// holds whole frames, and net.Conn never interleaves two Writes, so
// gorilla's own control frames (a Pong to a WebSocket ping, a close) slot
// in between, never inside.
func (c *conn) writeFrames(frames [][]byte, ping bool) bool {
	nc := c.ws.NetConn()
	if err := nc.SetWriteDeadline(time.Now().Add(c.r.cfg.WriteTimeout)); err != nil {
		c.writeFailed(err)
		return false
	}
	if len(frames) == 0 {
		// A ping alone: no buffer, no allocation (an idle connection's
		// only write).
		if ping {
			if _, err := nc.Write(pingFrame); err != nil {
				c.writeFailed(err)
				return false
			}
		}
		return true
	}
	bp := c.r.writeBufs.Get().(*[]byte)
	defer c.r.writeBufs.Put(bp)
	b := (*bp)[:0]
	var err error
	for _, f := range frames {
		if len(b) > 0 && len(b)+maxFrameHeader+len(f) > cap(b) {
			if _, err = nc.Write(b); err != nil {
				break
			}
			b = b[:0]
		}
		if maxFrameHeader+len(f) > cap(b) {
			// Larger than the buffer: header and payload in one writev.
			bufs := net.Buffers{appendFrameHeader(b, websocket.BinaryMessage, len(f)), f}
			if _, err = bufs.WriteTo(nc); err != nil {
				break
			}
			continue
		}
		b = appendFrameHeader(b, websocket.BinaryMessage, len(f))
		b = append(b, f...)
	}
	if err == nil && ping {
		b = append(b, pingFrame...)
	}
	if err == nil && len(b) > 0 {
		_, err = nc.Write(b)
	}
	if err != nil {
		c.writeFailed(err)
		return false
	}
	return true
}

// maxFrameHeader is the longest header of an unmasked WebSocket frame.
const maxFrameHeader = 10

// pingFrame is a WebSocket ping with no payload, as the server sends it.
var pingFrame = []byte{0x80 | websocket.PingMessage, 0}

// appendFrameHeader appends the header of a final, unmasked frame of n
// payload bytes (RFC 6455 section 5.2).
func appendFrameHeader(b []byte, opcode, n int) []byte {
	b = append(b, 0x80|byte(opcode))
	switch {
	case n < 126:
		return append(b, byte(n))
	case n <= 0xffff:
		return append(b, 126, byte(n>>8), byte(n))
	default:
		return binary.BigEndian.AppendUint64(append(b, 127), uint64(n))
	}
}

func (c *conn) writeFailed(err error) {
	c.r.log.Debug("write failed", "account", c.dev.Account, "device", c.dev.ID, "err", err)
	c.mu.Lock()
	c.pumping = false
	c.dead = true // the reader's teardown finishes the job
	c.mu.Unlock()
	c.ws.NetConn().Close()
}
