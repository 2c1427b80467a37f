package client

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"sync"
	"time"

	"github.com/gorilla/websocket"

	"github.com/hushchat/hush/protocol"
)

// The relay connection: one WebSocket at a time, redialed with exponential
// backoff and full jitter. A session is one connection's lifetime; the
// outbox worker sends through the current session and gets its SendAcks
// from it, and the session's reader processes deliveries itself, so an
// envelope is acknowledged on the connection that delivered it and only
// after it was committed.

// State returns the connection state, with the reason for the last loss.
func (c *Client) State() (ConnState, string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.state, c.stateErr
}

func (c *Client) setState(s ConnState, retryIn time.Duration, why string) {
	c.mu.Lock()
	if c.state == s && c.stateErr == why && s != Reconnecting {
		c.mu.Unlock()
		return
	}
	c.state, c.stateErr = s, why
	c.mu.Unlock()
	c.events.emit(&ConnectionStateEvent{State: s, RetryIn: retryIn, Err: why})
}

// setSession installs s (nil: none). It refuses a new session once the
// client is closing and closes it instead: Close cancels the context before
// it looks for a session to close, so a dial that completes in between would
// otherwise run with nobody left to end it, and Close would wait forever.
func (c *Client) setSession(s *session) bool {
	c.mu.Lock()
	if s != nil && c.ctx.Err() != nil {
		c.mu.Unlock()
		s.close()
		return false
	}
	c.sess = s
	close(c.sessCh)
	c.sessCh = make(chan struct{})
	if s != nil {
		c.syncedCh = make(chan struct{})
	}
	c.mu.Unlock()
	return true
}

// currentSession returns the live session, or nil and a channel that is
// closed when that changes.
func (c *Client) currentSession() (*session, <-chan struct{}) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.sess, c.sessCh
}

// WaitSynced blocks until the relay has delivered everything that was
// queued for this device when the current connection opened (and it was
// processed), or ctx ends. It connects first if needed.
func (c *Client) WaitSynced(ctx context.Context) error {
	if _, _, err := c.account(); err != nil {
		return err
	}
	for {
		c.mu.Lock()
		s, synced, sessCh := c.sess, c.syncedCh, c.sessCh
		c.mu.Unlock()
		if s != nil {
			select {
			case <-synced:
				return nil
			case <-s.done:
				continue
			case <-ctx.Done():
				return ctx.Err()
			case <-c.ctx.Done():
				return ErrClosed
			}
		}
		select {
		case <-sessCh:
		case <-ctx.Done():
			return ctx.Err()
		case <-c.ctx.Done():
			return ErrClosed
		}
	}
}

// errStop ends the connection loop for good.
type errStop struct{ err error }

func (e errStop) Error() string { return e.err.Error() }

func (c *Client) connLoop() {
	defer c.setState(Offline, 0, "")
	attempt := 0
	force := false
	for c.ctx.Err() == nil {
		c.setState(Connecting, 0, "")
		s, err := c.dial(c.ctx, force)
		force = false
		if err != nil {
			if c.ctx.Err() != nil {
				return
			}
			if errors.Is(err, ErrDeviceRevoked) {
				c.revoked(err)
				return
			}
			var he *httpStatusError
			if errors.As(err, &he) && he.status == http.StatusUnauthorized {
				force = true
			}
			d := backoff(attempt, c.cfg.BackoffMin, c.cfg.BackoffMax, c.rand())
			attempt++
			c.log.Info("connect failed", "retry_in", d, "err", err)
			c.setState(Reconnecting, d, err.Error())
			if !sleep(c.clock, d, c.ctx.Done()) {
				return
			}
			continue
		}
		if !c.setSession(s) {
			return
		}
		c.setState(Connected, 0, "")
		// Receipts owed from before a crash.
		if err := c.flushReceipts(c.ctx); err != nil && c.ctx.Err() == nil {
			c.log.Error("queue owed receipts", "err", err)
		}
		wakeup(c.outboxWake)
		wakeup(c.keysWake)
		started := c.clock.Now()
		s.run()
		c.setSession(nil)
		if c.ctx.Err() != nil {
			return
		}
		err = s.err
		var stop errStop
		if errors.As(err, &stop) {
			if errors.Is(stop.err, ErrDeviceRevoked) {
				c.revoked(stop.err)
				return
			}
			c.log.Warn("connection ended for good", "err", stop.err)
			c.setState(Offline, 0, stop.err.Error())
			return
		}
		var d time.Duration
		switch {
		case s.tokenExpired:
			force, attempt = true, 0
		case s.reconnectAfter > 0:
			// The relay is going away: come back after the time it
			// asked for (already spread over its clients), plus a little
			// jitter of our own.
			attempt = 0
			d = s.reconnectAfter + time.Duration(c.rand().Int64N(int64(s.reconnectAfter/10)+1))
		default:
			if c.clock.Now().Sub(started) > c.cfg.BackoffMax {
				attempt = 0
			}
			d = backoff(attempt, c.cfg.BackoffMin, c.cfg.BackoffMax, c.rand())
			attempt++
		}
		c.log.Info("connection lost", "retry_in", d, "err", err)
		c.setState(Reconnecting, d, errString(err))
		if !sleep(c.clock, d, c.ctx.Done()) {
			return
		}
	}
}

func errString(err error) string {
	if err == nil {
		return ""
	}
	return err.Error()
}

type httpStatusError struct {
	status int
}

func (e *httpStatusError) Error() string {
	return fmt.Sprintf("relay refused the connection: HTTP %d %s", e.status, http.StatusText(e.status))
}

// dial opens an authenticated connection to the relay.
func (c *Client) dial(ctx context.Context, forceToken bool) (*session, error) {
	tok, err := c.token(ctx, forceToken)
	if err != nil {
		return nil, err
	}
	c.mu.Lock()
	relay := c.acct.RelayURL
	c.mu.Unlock()
	if c.cfg.RelayURL != "" {
		relay = c.cfg.RelayURL
	}
	d := websocket.Dialer{
		Subprotocols:     []string{protocol.Subprotocol},
		HandshakeTimeout: 15 * time.Second,
		ReadBufferSize:   16 << 10,
		WriteBufferSize:  16 << 10,
	}
	h := http.Header{}
	h.Set(protocol.AuthHeader, protocol.AuthScheme+" "+tok)
	dctx, cancel := context.WithTimeout(ctx, 20*time.Second)
	defer cancel()
	ws, resp, err := d.DialContext(dctx, relay, h)
	if err != nil {
		if resp != nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusUnauthorized && c.isRevoked(ctx) {
				return nil, ErrDeviceRevoked
			}
			return nil, &httpStatusError{status: resp.StatusCode}
		}
		return nil, fmt.Errorf("dial relay: %w", err)
	}
	if ws.Subprotocol() != protocol.Subprotocol {
		ws.Close()
		return nil, fmt.Errorf("relay speaks %q, not %q", truncate(ws.Subprotocol(), 40), protocol.Subprotocol)
	}
	ws.SetReadLimit(protocol.MaxFrameSize + 1024)
	return newSession(c, ws), nil
}

// isRevoked asks the key server whether this device still exists (a
// refused token may simply have expired).
func (c *Client) isRevoked(ctx context.Context) bool {
	_, err := c.token(ctx, true)
	return errors.Is(err, ErrDeviceRevoked)
}

// session is one connection.
type session struct {
	c    *Client
	ws   *websocket.Conn
	out  chan []byte
	acks chan *protocol.SendAck
	// inbox carries Deliver envelopes and QueueEmpty, in the order they
	// arrived, from the reader to the receiver (see receiver).
	inbox chan inboxItem
	done  chan struct{}

	closeOnce sync.Once
	mu        sync.Mutex
	err       error

	// Written by the reader only, read after done.
	reconnectAfter time.Duration
	tokenExpired   bool
}

func newSession(c *Client, ws *websocket.Conn) *session {
	return &session{
		c:     c,
		ws:    ws,
		out:   make(chan []byte, 256),
		acks:  make(chan *protocol.SendAck, 4*c.cfg.SendWindow+64),
		inbox: make(chan inboxItem, inboxFrames),
		done:  make(chan struct{}),
	}
}

// fail ends the session with err (the first reason wins).
func (s *session) fail(err error) {
	s.mu.Lock()
	if s.err == nil {
		s.err = err
	}
	s.mu.Unlock()
	s.close()
}

func (s *session) close() {
	s.closeOnce.Do(func() {
		close(s.done)
		s.ws.Close()
	})
}

// send queues an encoded frame for the writer. It fails only when the
// session ended.
func (s *session) send(frame []byte) error {
	select {
	case s.out <- frame:
		return nil
	case <-s.done:
		return errSessionDone
	}
}

var errSessionDone = errors.New("connection closed")

func (s *session) sendFrame(f *protocol.Frame) error {
	b, err := protocol.EncodeFrame(f)
	if err != nil {
		return err
	}
	return s.send(b)
}

// run drives the connection until it ends.
func (s *session) run() {
	var wg sync.WaitGroup
	wg.Add(3)
	go func() { defer wg.Done(); s.writer() }()
	go func() { defer wg.Done(); s.ticker() }()
	go func() { defer wg.Done(); s.receiver() }()
	s.c.sendPresenceSetup(s)
	s.reader()
	s.close()
	wg.Wait()
}

func (s *session) writer() {
	for {
		select {
		case b := <-s.out:
			s.ws.SetWriteDeadline(time.Now().Add(15 * time.Second))
			if err := s.ws.WriteMessage(websocket.BinaryMessage, b); err != nil {
				s.fail(fmt.Errorf("write: %w", err))
				return
			}
		case <-s.done:
			// Say goodbye when we are the ones closing.
			s.ws.WriteControl(websocket.CloseMessage, websocket.FormatCloseMessage(websocket.CloseNormalClosure, ""),
				time.Now().Add(time.Second))
			return
		}
	}
}

// ticker sends heartbeats while the user is active, pings, and presence
// subscription changes.
func (s *session) ticker() {
	c := s.c
	hb := c.clock.NewTimer(0)
	ping := c.clock.NewTimer(c.cfg.PingInterval)
	defer func() { hb.Stop(); ping.Stop() }()
	var nonce uint64
	for {
		select {
		case <-hb.C():
			c.mu.Lock()
			active := c.active
			c.mu.Unlock()
			if active {
				s.sendFrame(&protocol.Frame{Body: &protocol.Frame_Heartbeat{Heartbeat: &protocol.Heartbeat{}}})
			}
			hb = c.clock.NewTimer(c.cfg.HeartbeatInterval)
		case <-ping.C():
			nonce++
			s.sendFrame(&protocol.Frame{Body: &protocol.Frame_Ping{Ping: &protocol.Ping{Nonce: nonce}}})
			ping = c.clock.NewTimer(c.cfg.PingInterval)
		case <-c.subWake:
			c.sendSubscriptions(s)
		case <-s.done:
			return
		}
	}
}

func (s *session) reader() {
	c := s.c
	idle := c.cfg.PingInterval * 5 / 2
	for {
		s.ws.SetReadDeadline(time.Now().Add(idle))
		mt, b, err := s.ws.ReadMessage()
		if err != nil {
			s.fail(s.classify(err))
			return
		}
		if mt != websocket.BinaryMessage {
			s.fail(errors.New("relay sent a non-binary message"))
			return
		}
		f, err := protocol.DecodeFrame(b)
		if err != nil {
			c.log.Warn("dropping undecodable frame from relay", "err", err)
			continue
		}
		if err := s.handle(f); err != nil {
			s.fail(err)
			return
		}
	}
}

// inboxItem is one Deliver frame's envelopes, or the QueueEmpty marker.
type inboxItem struct {
	envs       []*protocol.Envelope
	queueEmpty bool
}

// inboxFrames bounds the Deliver frames read ahead of processing; beyond
// it the reader waits, and so, through TCP, does the relay.
const inboxFrames = 64

// maxReceiveBatch bounds the envelopes processed in one transaction (it
// holds the database's writer, which Send also needs).
const maxReceiveBatch = 256

// receiver processes deliveries in arrival order. The relay sends what
// arrives while the device is online one envelope per Deliver; taking
// every frame that is already waiting into one transaction (up to
// maxReceiveBatch envelopes) makes batches exactly when the client falls
// behind, and costs nothing in latency when it does not.
func (s *session) receiver() {
	c := s.c
	var batch []*protocol.Envelope
	for {
		var it inboxItem
		select {
		case it = <-s.inbox:
		case <-s.done:
			return
		}
		batch = append(batch[:0], it.envs...)
		for !it.queueEmpty && len(batch) < maxReceiveBatch {
			select {
			case it = <-s.inbox:
				batch = append(batch, it.envs...)
				continue
			default:
			}
			break
		}
		if len(batch) > 0 {
			if err := c.receive(c.ctx, s, batch); err != nil {
				s.fail(err)
				return
			}
		}
		if it.queueEmpty {
			c.mu.Lock()
			if c.sess == s {
				select {
				case <-c.syncedCh:
				default:
					close(c.syncedCh)
				}
			}
			c.mu.Unlock()
			wakeup(c.sweepWake)
		}
	}
}

// classify turns a read error into the session's end reason.
func (s *session) classify(err error) error {
	var ce *websocket.CloseError
	if !errors.As(err, &ce) {
		s.mu.Lock()
		prev := s.err
		s.mu.Unlock()
		if prev != nil {
			return prev
		}
		return fmt.Errorf("read: %w", err)
	}
	why := fmt.Sprintf("relay closed the connection: %s", protocol.CloseCodeName(ce.Code))
	switch ce.Code {
	case protocol.CloseReplaced:
		return errStop{errors.New(why + " (is this profile open elsewhere?)")}
	case protocol.CloseRevoked:
		return errStop{fmt.Errorf("%w: %s", ErrDeviceRevoked, why)}
	case protocol.CloseTokenExpired:
		s.tokenExpired = true
	}
	return errors.New(why)
}

// handle acts on one frame from the relay. An error ends the connection.
func (s *session) handle(f *protocol.Frame) error {
	c := s.c
	switch b := f.Body.(type) {
	case *protocol.Frame_Deliver:
		select {
		case s.inbox <- inboxItem{envs: b.Deliver.Envelopes}:
		case <-s.done:
		}
	case *protocol.Frame_SendAck:
		select {
		case s.acks <- b.SendAck:
		case <-s.done:
		}
	case *protocol.Frame_QueueEmpty:
		// After the deliveries before it are processed.
		select {
		case s.inbox <- inboxItem{queueEmpty: true}:
		case <-s.done:
		}
	case *protocol.Frame_Ping:
		return s.sendFrame(&protocol.Frame{Body: &protocol.Frame_Pong{Pong: &protocol.Pong{Nonce: b.Ping.Nonce}}})
	case *protocol.Frame_Pong:
	case *protocol.Frame_Presence:
		c.onPresence(b.Presence)
	case *protocol.Frame_Reconnect:
		s.reconnectAfter = time.Duration(b.Reconnect.AfterMs) * time.Millisecond
		if s.reconnectAfter <= 0 {
			s.reconnectAfter = c.cfg.BackoffMin
		}
		c.log.Info("relay asked to reconnect", "reason", b.Reconnect.Reason, "after", s.reconnectAfter)
	case *protocol.Frame_Error:
		e := b.Error
		c.log.Warn("relay refused a frame", "code", e.Code.String(), "message", e.Message)
		if e.Code == protocol.ErrorCode_CODE_UNAUTHENTICATED {
			s.tokenExpired = true
			return errors.New("relay: unauthenticated")
		}
	default:
		c.log.Debug("ignoring unexpected frame from relay", "type", fmt.Sprintf("%T", f.Body))
	}
	return nil
}
