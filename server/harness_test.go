package server

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/gorilla/websocket"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/hushchat/hush/keyserver/authtoken"
	"github.com/hushchat/hush/protocol"
	"github.com/hushchat/hush/server/directory"
	"github.com/hushchat/hush/server/queue"
	"github.com/hushchat/hush/server/queue/sqlite"
)

// mutableDir is a directory the tests change while the relay runs.
type mutableDir struct {
	mu sync.Mutex
	m  map[string][]uint32
}

func (d *mutableDir) Devices(_ context.Context, account string) ([]uint32, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	ids, ok := d.m[account]
	if !ok {
		return nil, &directory.UnknownAccountError{Account: account}
	}
	return slices.Clone(ids), nil
}

func (d *mutableDir) set(account string, ids ...uint32) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if len(ids) == 0 {
		delete(d.m, account)
		return
	}
	d.m[account] = ids
}

// logBuffer captures everything the relay logs, for the blind-relay scan.
type logBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (l *logBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.buf.Write(p)
}

func (l *logBuffer) Bytes() []byte {
	l.mu.Lock()
	defer l.mu.Unlock()
	return bytes.Clone(l.buf.Bytes())
}

type env struct {
	t      testing.TB
	relay  *Relay
	srv    *httptest.Server
	url    string
	priv   ed25519.PrivateKey
	dir    *mutableDir
	store  *sqlite.Store
	dbPath string
	reg    *prometheus.Registry
	logs   *logBuffer
	clock  *fakeClock
	wrap   func(queue.Store) queue.Store
}

type fakeClock struct {
	mu     sync.Mutex
	offset time.Duration
}

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return time.Now().Add(c.offset)
}

func (c *fakeClock) Advance(d time.Duration) {
	c.mu.Lock()
	c.offset += d
	c.mu.Unlock()
}

type queueOptions = queue.Options

type envOption func(*Config, *queue.Options)

// newEnv starts a relay on a real SQLite queue in a temporary directory,
// behind a real HTTP server on loopback.
func newEnv(t testing.TB, opts ...envOption) *env {
	t.Helper()
	pub, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	e := &env{t: t, priv: priv, dir: &mutableDir{m: map[string][]uint32{}}, reg: prometheus.NewRegistry(), logs: &logBuffer{}, clock: &fakeClock{}}
	cfg := Config{
		Directory:  e.dir,
		TokenKey:   pub,
		NodeID:     1,
		Registerer: e.reg,
		Logger:     slog.New(slog.NewTextHandler(e.logs, &slog.HandlerOptions{Level: slog.LevelDebug})),
		Now:        e.clock.Now,
	}
	qopts := queue.Options{Clock: e.clock.Now}
	for _, o := range opts {
		o(&cfg, &qopts)
	}
	if w, ok := cfg.Store.(wrapper); ok {
		e.wrap = w.wrap
		cfg.Store = nil
	}
	e.dbPath = filepath.Join(t.TempDir(), "queue.db")
	e.store, err = sqlite.Open(e.dbPath, qopts)
	if err != nil {
		t.Fatal(err)
	}
	cfg.Store = e.store
	if e.wrap != nil {
		cfg.Store = e.wrap(e.store)
	}
	e.relay, err = New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	mux := http.NewServeMux()
	mux.Handle(protocol.WSPath, e.relay.Handler())
	e.srv = httptest.NewServer(mux)
	e.url = "ws" + strings.TrimPrefix(e.srv.URL, "http") + protocol.WSPath
	t.Cleanup(e.close)
	return e
}

func (e *env) close() {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := e.relay.Shutdown(ctx); err != nil {
		e.t.Errorf("relay shutdown: %v", err)
	}
	e.srv.Close()
	e.store.Close()
}

func (e *env) token(account string, device uint32) string {
	return e.tokenExp(account, device, time.Now().Add(24*time.Hour))
}

func (e *env) tokenExp(account string, device uint32, exp time.Time) string {
	tok, err := authtoken.Issue(e.priv, authtoken.Claims{Account: account, Device: device, IssuedAt: exp.Add(-2 * time.Hour), Expiry: exp})
	if err != nil {
		e.t.Fatal(err)
	}
	return tok
}

// client is a test device speaking the wire protocol.
type client struct {
	t      testing.TB
	ws     *websocket.Conn
	frames chan *protocol.Frame
	closed chan struct{}
	err    error // why the read loop ended (valid after closed)
	dev    queue.Device
}

func (e *env) dialToken(token string, header http.Header) (*websocket.Conn, *http.Response, error) {
	if header == nil {
		header = http.Header{}
	}
	if token != "" {
		header.Set("Authorization", "Bearer "+token)
	}
	d := websocket.Dialer{Subprotocols: []string{protocol.Subprotocol}, HandshakeTimeout: 5 * time.Second}
	return d.Dial(e.url, header)
}

// connect registers nothing: the device must be in e.dir.
func (e *env) connect(account string, device uint32) *client {
	e.t.Helper()
	ws, resp, err := e.dialToken(e.token(account, device), nil)
	if err != nil {
		status := 0
		if resp != nil {
			status = resp.StatusCode
		}
		e.t.Fatalf("connect %s.%d: %v (HTTP %d)", account, device, err, status)
	}
	return newClient(e.t, ws, queue.Device{Account: account, ID: device})
}

func newClient(t testing.TB, ws *websocket.Conn, dev queue.Device) *client {
	c := &client{t: t, ws: ws, frames: make(chan *protocol.Frame, 100_000), closed: make(chan struct{}), dev: dev}
	go func() {
		defer close(c.closed)
		for {
			mt, b, err := ws.ReadMessage()
			if err != nil {
				c.err = err
				return
			}
			if mt != websocket.BinaryMessage {
				c.err = fmt.Errorf("relay sent message type %d", mt)
				return
			}
			f, err := protocol.DecodeFrame(b)
			if err != nil {
				c.err = fmt.Errorf("relay sent an invalid frame: %w", err)
				return
			}
			c.frames <- f
		}
	}()
	t.Cleanup(func() { ws.Close() })
	return c
}

func (c *client) send(f *protocol.Frame) {
	c.t.Helper()
	b, err := protocol.EncodeFrame(f)
	if err != nil {
		c.t.Fatalf("encode: %v", err)
	}
	if err := c.ws.WriteMessage(websocket.BinaryMessage, b); err != nil {
		c.t.Fatalf("write: %v", err)
	}
}

func (c *client) writeRaw(mt int, b []byte) error { return c.ws.WriteMessage(mt, b) }

// next returns the next frame, failing after a timeout.
func (c *client) next() *protocol.Frame {
	c.t.Helper()
	select {
	case f := <-c.frames:
		return f
	case <-c.closed:
		select {
		case f := <-c.frames:
			return f
		default:
		}
		c.t.Fatalf("%s: connection ended: %v", c.dev, c.err)
	case <-time.After(15 * time.Second):
		c.t.Fatalf("%s: no frame within 15 s", c.dev)
	}
	return nil
}

// nextOf skips Ping/Pong/Presence frames unless asked for.
func (c *client) nextOf(kind string) *protocol.Frame {
	c.t.Helper()
	for {
		f := c.next()
		if frameKind(f) == kind {
			return f
		}
		switch f.Body.(type) {
		case *protocol.Frame_Pong, *protocol.Frame_Presence:
			continue
		}
		c.t.Fatalf("%s: want %s, got %s: %v", c.dev, kind, frameKind(f), f)
	}
}

func frameKind(f *protocol.Frame) string {
	switch f.Body.(type) {
	case *protocol.Frame_SendAck:
		return "SendAck"
	case *protocol.Frame_Deliver:
		return "Deliver"
	case *protocol.Frame_QueueEmpty:
		return "QueueEmpty"
	case *protocol.Frame_Error:
		return "Error"
	case *protocol.Frame_Reconnect:
		return "Reconnect"
	case *protocol.Frame_Presence:
		return "Presence"
	case *protocol.Frame_Pong:
		return "Pong"
	}
	return fmt.Sprintf("%T", f.Body)
}

// noFrame asserts that nothing but pongs/presence arrives within d.
func (c *client) noFrame(d time.Duration) {
	c.t.Helper()
	select {
	case f := <-c.frames:
		c.t.Fatalf("%s: unexpected %s: %v", c.dev, frameKind(f), f)
	case <-time.After(d):
	}
}

// waitClosed waits for the relay to close the connection and returns the
// close code.
func (c *client) waitClosed() int {
	c.t.Helper()
	select {
	case <-c.closed:
	case <-time.After(15 * time.Second):
		c.t.Fatalf("%s: connection not closed", c.dev)
	}
	var ce *websocket.CloseError
	if errors.As(c.err, &ce) {
		return ce.Code
	}
	return -1
}

// drainUntilEmpty collects envelopes until QueueEmpty.
func (c *client) drainUntilEmpty() []*protocol.Envelope {
	c.t.Helper()
	var envs []*protocol.Envelope
	for {
		f := c.next()
		switch b := f.Body.(type) {
		case *protocol.Frame_Deliver:
			envs = append(envs, b.Deliver.Envelopes...)
		case *protocol.Frame_QueueEmpty:
			return envs
		case *protocol.Frame_Pong, *protocol.Frame_Presence:
		default:
			c.t.Fatalf("%s: while draining got %s", c.dev, frameKind(f))
		}
	}
}

func (c *client) ack(ids ...uint64) {
	c.send(&protocol.Frame{Body: &protocol.Frame_Ack{Ack: &protocol.Ack{ServerIds: ids}}})
}

func newClientID() []byte {
	id := make([]byte, protocol.ClientIDSize)
	rand.Read(id)
	return id
}

// to builds a 1-1 Send of payload to the given devices.
func sendTo(clientID, payload []byte, devs ...queue.Device) *protocol.Frame {
	s := &protocol.Send{ClientId: clientID}
	for _, d := range devs {
		s.Recipients = append(s.Recipients, &protocol.Recipient{Account: d.Account, Device: d.ID, Payload: payload, Type: protocol.EnvelopeType_ENVELOPE_TYPE_SIGNAL})
	}
	return &protocol.Frame{Body: &protocol.Frame_Send{Send: s}}
}

// sendAndAck sends and returns the SendAck.
func (c *client) sendAndAck(f *protocol.Frame) *protocol.SendAck {
	c.t.Helper()
	c.send(f)
	return c.nextOf("SendAck").GetSendAck()
}

func dev(account string, id uint32) queue.Device { return queue.Device{Account: account, ID: id} }

// checkGoroutines fails if the goroutine count does not come back to
// (about) base: connections must leave nothing behind.
func checkGoroutines(t *testing.T, base int) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		n := runtime.NumGoroutine()
		if n <= base+2 {
			return
		}
		if time.Now().After(deadline) {
			buf := make([]byte, 1<<20)
			buf = buf[:runtime.Stack(buf, true)]
			t.Fatalf("goroutines: %d, baseline %d\n%s", n, base, buf)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// counter reads a counter (or gauge) with one label value from the relay's
// registry; 0 when absent.
func counter(t *testing.T, e *env, name, label string) float64 {
	t.Helper()
	mfs, err := e.reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
		for _, m := range mf.GetMetric() {
			if label != "" && (len(m.GetLabel()) == 0 || m.GetLabel()[0].GetValue() != label) {
				continue
			}
			switch {
			case m.GetCounter() != nil:
				return m.GetCounter().GetValue()
			case m.GetGauge() != nil:
				return m.GetGauge().GetValue()
			}
		}
	}
	return 0
}

// wrapper, set as Config.Store by an envOption, wraps the real store.
type wrapper struct {
	queue.Store
	wrap func(queue.Store) queue.Store
}

func wrapStore(w func(queue.Store) queue.Store) envOption {
	return func(c *Config, _ *queue.Options) { c.Store = wrapper{wrap: w} }
}

// slowPuts delays every Put, so Sends are in flight when a test wants them.
type slowPuts struct {
	queue.Store
	delay time.Duration
}

func (s slowPuts) Put(ctx context.Context, p queue.Put) (queue.PutResult, error) {
	time.Sleep(s.delay)
	return s.Store.Put(ctx, p)
}
