package server

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/gorilla/websocket"

	"github.com/hushchat/hush/keyserver/authtoken"
	"github.com/hushchat/hush/protocol"
	"github.com/hushchat/hush/server/directory"
	"github.com/hushchat/hush/server/presence"
	"github.com/hushchat/hush/server/push"
	"github.com/hushchat/hush/server/queue"
	"github.com/hushchat/hush/server/routing"
)

// Relay is hush's blind relay. Create it with New, serve Handler at
// protocol.WSPath, stop it with Shutdown.
type Relay struct {
	cfg      Config
	log      *slog.Logger
	m        *metrics
	seq      *sequencer
	store    queue.Store
	dir      directory.Directory
	router   routing.Router
	pres     presence.Tracker
	push     push.Notifier
	owned    []interface{ Close() error }
	upgrader websocket.Upgrader
	// writeBufs hold the frames of one pump write (see writeFrames); only
	// a connection that is writing holds one.
	writeBufs sync.Pool

	ctx    context.Context // store operations; cancelled at the end of Shutdown
	cancel context.CancelFunc

	hubMu    sync.RWMutex
	hub      map[queue.Device]*conn
	sessions map[uint64]*conn
	closing  bool
	conns    sync.WaitGroup

	presMu   sync.Mutex
	presSubs map[string]map[*conn]struct{} // subject → local connections following it

	sendMu      sync.RWMutex
	sendsClosed bool
	sends       sync.WaitGroup

	bg        sync.WaitGroup // background loops and helpers
	stopLoops chan struct{}
	shutdown  sync.Once

	ringFailing atomic.Bool // the last Ring failed (logged once per outage)
	kept        *keptBells  // bells of failed Rings, for retryLoop
}

// New returns a running relay (its ping, sweep and presence timers start
// now).
func New(cfg Config) (*Relay, error) {
	if err := cfg.setDefaults(); err != nil {
		return nil, err
	}
	seq, err := newSequencer(cfg.NodeIDs, cfg.Now)
	if err != nil {
		return nil, fmt.Errorf("relay: %w", err)
	}
	m, err := newMetrics(cfg.Registerer, cfg.Router, cfg.NodeIDs)
	if err != nil {
		return nil, fmt.Errorf("relay: metrics: %w", err)
	}
	r := &Relay{
		cfg:       cfg,
		log:       cfg.Logger,
		m:         m,
		seq:       seq,
		store:     cfg.Store,
		dir:       cfg.Directory,
		router:    cfg.Router,
		pres:      cfg.Presence,
		push:      cfg.Push,
		hub:       make(map[queue.Device]*conn),
		sessions:  make(map[uint64]*conn),
		presSubs:  make(map[string]map[*conn]struct{}),
		stopLoops: make(chan struct{}),
		kept:      newKeptBells(),
	}
	if r.router == nil {
		l := routing.NewLocal()
		r.router = l
		r.owned = append(r.owned, l)
	}
	if r.pres == nil {
		p := presence.NewMemory(presence.Options{OnlineWindow: cfg.OnlineWindow})
		r.pres = p
		r.owned = append(r.owned, p)
	}
	r.ctx, r.cancel = context.WithCancel(context.Background())
	r.writeBufs.New = func() any {
		b := make([]byte, 0, cfg.WriteBufferSize)
		return &b
	}
	r.upgrader = websocket.Upgrader{
		HandshakeTimeout: 10 * time.Second,
		ReadBufferSize:   cfg.ReadBufferSize,
		WriteBufferSize:  cfg.WriteBufferSize,
		WriteBufferPool:  &sync.Pool{},
		Subprotocols:     []string{protocol.Subprotocol},
		// Authentication is a bearer token, never a cookie, so a page of
		// another origin cannot ride on a user's credentials.
		CheckOrigin: func(*http.Request) bool { return true },
		Error: func(w http.ResponseWriter, _ *http.Request, status int, reason error) {
			http.Error(w, "websocket handshake: "+reason.Error(), status)
		},
	}
	r.router.Subscribe(routerHandler{r})
	r.pres.Watch(r.presenceEvent)
	r.bg.Add(3)
	go r.pingLoop()
	go r.sweepLoop()
	go r.retryLoop()
	return r, nil
}

// Handler returns the WebSocket endpoint; mount it at protocol.WSPath.
func (r *Relay) Handler() http.Handler { return http.HandlerFunc(r.serveWS) }

// Ready reports whether the relay accepts connections and Sends: it is
// not shutting down, its node id may be used, and its store answers (for
// /readyz). An unhealthy router does not make it unready: delivery goes on
// through fallback polling, and refusing connections would only move the
// same problem to the other relays.
func (r *Relay) Ready(ctx context.Context) error {
	r.hubMu.RLock()
	closing := r.closing
	r.hubMu.RUnlock()
	if closing {
		return errors.New("relay is shutting down")
	}
	if err := r.cfg.NodeIDs.Valid(); err != nil {
		return fmt.Errorf("node id %d: %w", r.cfg.NodeIDs.ID(), err)
	}
	if _, err := r.store.Depth(ctx, queue.Device{Account: "readyz", ID: 1}); err != nil {
		return fmt.Errorf("queue store: %w", err)
	}
	return nil
}

// httpError answers a refused handshake with a plain-text reason.
func (r *Relay) httpError(w http.ResponseWriter, status int, result, msg string) {
	r.m.connects.WithLabelValues(result).Inc()
	if status == http.StatusUnauthorized {
		w.Header().Set("WWW-Authenticate", `Bearer realm="hush", error="invalid_token"`)
	}
	http.Error(w, msg, status)
}

// authFromRequest finds the token (Authorization header, or a
// "hush.auth.<token>" subprotocol) and checks the offered protocol version.
func authFromRequest(req *http.Request) (token string, versionOK bool) {
	versionOK = true
	var offered []string
	for _, v := range req.Header.Values("Sec-WebSocket-Protocol") {
		for _, p := range strings.Split(v, ",") {
			if p = strings.TrimSpace(p); p != "" {
				offered = append(offered, p)
			}
		}
	}
	other := false
	hasVersion := false
	for _, p := range offered {
		switch {
		case strings.HasPrefix(p, protocol.AuthSubprotocolPrefix):
			token = strings.TrimPrefix(p, protocol.AuthSubprotocolPrefix)
		case p == protocol.Subprotocol:
			hasVersion = true
		default:
			other = true
		}
	}
	if other && !hasVersion {
		versionOK = false
	}
	if h := req.Header.Get(protocol.AuthHeader); h != "" {
		if scheme, t, ok := strings.Cut(h, " "); ok && strings.EqualFold(scheme, protocol.AuthScheme) {
			token = strings.TrimSpace(t)
		}
	}
	return token, versionOK
}

func (r *Relay) serveWS(w http.ResponseWriter, req *http.Request) {
	r.hubMu.RLock()
	closing := r.closing
	r.hubMu.RUnlock()
	if closing {
		r.httpError(w, http.StatusServiceUnavailable, "shutting_down", "relay is shutting down; reconnect to another relay")
		return
	}
	token, versionOK := authFromRequest(req)
	if !versionOK {
		r.httpError(w, http.StatusUpgradeRequired, "bad_request", "unsupported protocol version: this relay speaks "+protocol.Subprotocol)
		return
	}
	if token == "" {
		r.httpError(w, http.StatusUnauthorized, "unauthenticated", "unauthenticated: no token (send Authorization: Bearer <token>)")
		return
	}
	claims, err := authtoken.Verify(r.cfg.TokenKey, token, r.cfg.Now())
	if err != nil {
		msg := "unauthenticated: invalid token"
		if errors.Is(err, authtoken.ErrExpired) {
			msg = "unauthenticated: token expired"
		}
		r.httpError(w, http.StatusUnauthorized, "unauthenticated", msg)
		return
	}
	if protocol.ValidateAccountName(claims.Account) != nil {
		r.httpError(w, http.StatusUnauthorized, "unauthenticated", "unauthenticated: invalid token")
		return
	}
	dev := queue.Device{Account: claims.Account, ID: claims.Device}
	ctx, cancel := context.WithTimeout(req.Context(), 5*time.Second)
	devices, err := r.dir.Devices(ctx, dev.Account)
	cancel()
	switch {
	case errors.Is(err, directory.ErrUnknownAccount) || err == nil && !directory.HasDevice(devices, dev.ID):
		r.httpError(w, http.StatusUnauthorized, "revoked", "unauthenticated: device revoked")
		return
	case err != nil:
		r.log.Warn("device lookup failed at connect", "account", dev.Account, "device", dev.ID, "err", err)
		r.httpError(w, http.StatusServiceUnavailable, "unavailable", "device directory unavailable; retry later")
		return
	}
	ws, err := r.upgrader.Upgrade(w, req, nil)
	if err != nil {
		r.m.connects.WithLabelValues("bad_request").Inc()
		return // the upgrader has answered
	}
	r.accept(ws, dev, claims.Expiry)
	// Returning lets net/http drop its per-request state: an idle
	// connection costs one reader goroutine and the conn struct.
}

func (r *Relay) accept(ws *websocket.Conn, dev queue.Device, expiry time.Time) {
	c := newConn(r, ws, dev, expiry)
	var old *conn
	refused := false
	c.drainUpTo = r.seq.attach(func() {
		r.hubMu.Lock()
		if r.closing {
			refused = true
		} else {
			c.session = r.seq.nextLocked()
			old = r.hub[dev]
			r.hub[dev] = c
			r.sessions[c.session] = c
			r.conns.Add(1)
		}
		r.hubMu.Unlock()
	})
	if refused {
		ws.WriteControl(websocket.CloseMessage, websocket.FormatCloseMessage(protocol.CloseGoingAway, "relay is shutting down"), time.Now().Add(time.Second))
		ws.Close()
		return
	}
	r.m.connects.WithLabelValues("accepted").Inc()
	r.m.connections.Inc()
	if old != nil {
		old.closeWith(protocol.CloseReplaced, "a newer connection of this device was opened")
	}
	if err := r.router.Attach(r.ctx, dev, c.session); err != nil {
		r.log.Warn("router attach failed", "account", dev.Account, "device", dev.ID, "err", err)
		c.closeWith(protocol.CloseInternal, "routing unavailable; reconnect later")
	}
	if r.push != nil {
		r.push.Reset(dev)
	}
	r.log.Debug("device connected", "account", dev.Account, "device", dev.ID)
	go c.readLoop()
	c.kick() // start draining the queue
}

// detach is called once by a connection's reader when it ends.
func (r *Relay) detach(c *conn) {
	r.hubMu.Lock()
	if r.hub[c.dev] == c {
		delete(r.hub, c.dev)
	}
	delete(r.sessions, c.session)
	r.hubMu.Unlock()
	if err := r.router.Detach(context.Background(), c.dev, c.session); err != nil {
		r.log.Warn("router detach failed", "account", c.dev.Account, "device", c.dev.ID, "err", err)
	}
	r.setPresenceSubs(c, nil)
	r.m.connections.Dec()
	r.conns.Done()
}

// local returns the connection of dev on this relay, if any.
func (r *Relay) local(dev queue.Device) *conn {
	r.hubMu.RLock()
	defer r.hubMu.RUnlock()
	return r.hub[dev]
}

type routerHandler struct{ r *Relay }

// Ring handles a doorbell from the router: fetch, or (ephemeral) hand over.
func (h routerHandler) Ring(b routing.Bell) {
	c := h.r.local(b.Device)
	if c == nil {
		return
	}
	if b.Envelope != nil {
		c.enqueueEphemeral(b.Envelope)
		return
	}
	c.bell(b.ServerID)
}

// Evict closes a connection superseded by a newer one of its device.
func (h routerHandler) Evict(dev queue.Device, session uint64) {
	h.r.hubMu.RLock()
	c := h.r.sessions[session]
	h.r.hubMu.RUnlock()
	if c != nil && c.dev == dev {
		c.closeWith(protocol.CloseReplaced, "a newer connection of this device was opened")
	}
}

// DeviceChanged is the key server's device-change notification for
// account: the cached device list is dropped, and connections of devices
// that no longer exist are closed with CloseRevoked.
func (r *Relay) DeviceChanged(account string) {
	if inv, ok := r.dir.(interface{ Invalidate(string) }); ok {
		inv.Invalidate(account)
	}
	var conns []*conn
	r.hubMu.RLock()
	for id := uint32(1); id <= protocol.MaxDeviceID; id++ {
		if c := r.hub[queue.Device{Account: account, ID: id}]; c != nil {
			conns = append(conns, c)
		}
	}
	if len(conns) == 0 || r.closing {
		r.hubMu.RUnlock()
		return
	}
	// Added under the lock that Shutdown takes to set closing, so the
	// WaitGroup is never added to while Shutdown waits on it.
	r.bg.Add(1)
	r.hubMu.RUnlock()
	go func() {
		defer r.bg.Done()
		ctx, cancel := context.WithTimeout(r.ctx, 10*time.Second)
		defer cancel()
		devices, err := r.dir.Devices(ctx, account)
		if err != nil && !errors.Is(err, directory.ErrUnknownAccount) {
			r.log.Warn("device lookup after change failed", "account", account, "err", err)
			return
		}
		for _, c := range conns {
			if !directory.HasDevice(devices, c.dev.ID) {
				r.log.Info("closing a removed device's connection", "account", account, "device", c.dev.ID)
				c.closeWith(protocol.CloseRevoked, "this device was removed from its account")
				r.pres.Forget(ctx, c.dev)
			}
		}
	}()
}

func (r *Relay) pingLoop() {
	defer r.bg.Done()
	tick := min(time.Second, r.cfg.PingInterval/4)
	t := time.NewTicker(tick)
	defer t.Stop()
	var batch []*conn
	for {
		select {
		case <-r.stopLoops:
			return
		case <-t.C:
		}
		now := r.cfg.Now()
		batch = batch[:0]
		r.hubMu.RLock()
		for _, c := range r.sessions {
			batch = append(batch, c)
		}
		r.hubMu.RUnlock()
		for _, c := range batch {
			c.tick(now)
		}
		clear(batch)
	}
}

func (r *Relay) sweepLoop() {
	defer r.bg.Done()
	t := time.NewTicker(r.cfg.SweepInterval)
	defer t.Stop()
	for {
		select {
		case <-r.stopLoops:
			return
		case <-t.C:
			r.Sweep()
		}
	}
}

// Sweep deletes expired envelopes now and refreshes the oldest-envelope
// gauge; the relay calls it every SweepInterval.
func (r *Relay) Sweep() {
	ctx, cancel := context.WithTimeout(r.ctx, r.cfg.SweepInterval)
	defer cancel()
	now := r.cfg.Now()
	n, err := r.store.Sweep(ctx, now)
	if err != nil {
		r.log.Warn("queue sweep failed", "err", err)
	} else if n > 0 {
		r.m.expired.Add(float64(n))
		r.log.Info("expired envelopes deleted", "count", n)
	}
	oldest, err := r.store.Oldest(ctx)
	switch {
	case err != nil:
		r.log.Warn("queue oldest failed", "err", err)
	case oldest.IsZero():
		r.m.oldest.Set(0)
	default:
		r.m.oldest.Set(now.Sub(oldest).Seconds())
	}
}

// Shutdown stops the relay gracefully: it refuses new connections, sends
// Reconnect to every client, refuses Sends that arrive after it, finishes
// the Sends in flight (their SendAcks are written), flushes every
// connection and closes it with CloseGoingAway. When ctx ends first, the
// remaining connections are cut. It does not close the Store.
func (r *Relay) Shutdown(ctx context.Context) error {
	var err error
	r.shutdown.Do(func() { err = r.doShutdown(ctx) })
	return err
}

func (r *Relay) doShutdown(ctx context.Context) error {
	r.hubMu.Lock()
	r.closing = true
	conns := make([]*conn, 0, len(r.sessions))
	for _, c := range r.sessions {
		conns = append(conns, c)
	}
	r.hubMu.Unlock()
	r.sendMu.Lock()
	r.sendsClosed = true
	r.sendMu.Unlock()
	r.log.Info("relay shutting down", "connections", len(conns))

	for _, c := range conns {
		// Spread the reconnects so the next relay is not hit at once.
		after := uint32(rand.IntN(5000))
		c.enqueue(&protocol.Frame{Body: &protocol.Frame_Reconnect{Reconnect: &protocol.Reconnect{Reason: "relay shutting down", AfterMs: after}}})
	}
	var firstErr error
	if err := waitCtx(ctx, &r.sends); err != nil {
		firstErr = fmt.Errorf("relay shutdown: sends still in flight: %w", err)
	}
	for _, c := range conns {
		c.closeWith(protocol.CloseGoingAway, "relay shutting down")
	}
	if err := waitCtx(ctx, &r.conns); err != nil {
		for _, c := range conns {
			c.ws.NetConn().Close()
		}
		if firstErr == nil {
			firstErr = fmt.Errorf("relay shutdown: connections still open: %w", err)
		}
	}
	close(r.stopLoops)
	r.cancel()
	r.bg.Wait()
	for _, o := range r.owned {
		o.Close()
	}
	return firstErr
}

func waitCtx(ctx context.Context, wg *sync.WaitGroup) error {
	done := make(chan struct{})
	go func() { wg.Wait(); close(done) }()
	select {
	case <-done:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}
