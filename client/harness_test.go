package client

import (
	"context"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hushchat/hush/server/app"
	"github.com/hushchat/hush/server/app/apptest"
)

// The end-to-end tests run real hush-servers (key server + relay, SQLite,
// loopback) in process, and real clients with profiles in temp dirs.

func TestMain(m *testing.M) {
	if os.Getenv(crashChildEnv) != "" {
		crashChild()
		return
	}
	os.Exit(m.Run())
}

func testLogger(t testing.TB) *slog.Logger {
	if os.Getenv("HUSH_TEST_LOG") != "" {
		return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug})).With("test", t.Name())
	}
	return slog.New(slog.NewTextHandler(io.Discard, nil))
}

// testServer is an in-process hush-server (server/app/apptest).
type testServer = apptest.Server

func startServer(t testing.TB) *testServer {
	return startServerTTL(t, 0)
}

// startServerTTL starts a server whose auth tokens live tokenTTL (0: the
// default).
func startServerTTL(t testing.TB, tokenTTL time.Duration) *testServer {
	t.Helper()
	return apptest.Start(t, func(c *app.AllInOneConfig) {
		c.TokenTTL = tokenTTL
		c.Logger = testLogger(t).With("side", "server")
	})
}

func testConfig(t testing.TB, home string) Config {
	return Config{
		Home:            home,
		Logger:          testLogger(t).With("home", filepath.Base(home)),
		BackoffMin:      20 * time.Millisecond,
		BackoffMax:      400 * time.Millisecond,
		HoldTimeout:     500 * time.Millisecond,
		HandlerRetryMin: 10 * time.Millisecond,
		HandlerRetryMax: 50 * time.Millisecond,
		SendTimeout:     10 * time.Second,
		EventBuffer:     4096,
	}
}

// party is a client under test with its event log.
type party struct {
	*Client
	t    testing.TB
	name string
	home string
	cfg  Config
	log  *collector
}

func openParty(t testing.TB, cfg Config, name string) *party {
	t.Helper()
	c, err := Open(context.Background(), cfg)
	if err != nil {
		t.Fatalf("open %s: %v", name, err)
	}
	p := &party{Client: c, t: t, name: name, home: cfg.Home, cfg: cfg}
	p.log = collect(c)
	t.Cleanup(func() { p.Close() })
	return p
}

// newParty registers a new account on ts.
func newParty(t testing.TB, ts *testServer, name string) *party {
	t.Helper()
	cfg := testConfig(t, filepath.Join(t.TempDir(), name))
	p := openParty(t, cfg, name)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if err := p.Register(ctx, ts.URL(), name); err != nil {
		t.Fatalf("register %s: %v", name, err)
	}
	return p
}

// reopen closes p and opens its profile again.
func (p *party) reopen() *party {
	p.t.Helper()
	p.Close()
	return openParty(p.t, p.cfg, p.name)
}

func (p *party) waitConnected() {
	p.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if err := p.WaitSynced(ctx); err != nil {
		p.t.Fatalf("%s: wait for sync: %v", p.name, err)
	}
}

func (p *party) send(to, text string) MessageID {
	p.t.Helper()
	id, err := p.Send(context.Background(), to, text)
	if err != nil {
		p.t.Fatalf("%s: send to %s: %v", p.name, to, err)
	}
	return id
}

func (p *party) waitSent(id MessageID) {
	p.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := p.WaitSent(ctx, id); err != nil {
		p.t.Fatalf("%s: wait sent: %v", p.name, err)
	}
}

// collector keeps every event a client emits.
type collector struct {
	mu   sync.Mutex
	evs  []Event
	wake chan struct{}
}

func collect(c *Client) *collector {
	col := &collector{wake: make(chan struct{})}
	ch := c.Events()
	go func() {
		for ev := range ch {
			col.mu.Lock()
			col.evs = append(col.evs, ev)
			close(col.wake)
			col.wake = make(chan struct{})
			col.mu.Unlock()
		}
	}()
	return col
}

func (col *collector) snapshot() []Event {
	col.mu.Lock()
	defer col.mu.Unlock()
	return append([]Event(nil), col.evs...)
}

// waitFor waits until n events match pred and returns them.
func (p *party) waitFor(what string, n int, pred func(Event) bool) []Event {
	p.t.Helper()
	deadline := time.Now().Add(60*time.Second + time.Duration(n)*50*time.Millisecond)
	var got []Event
	next := 0
	for {
		p.log.mu.Lock()
		for ; next < len(p.log.evs); next++ {
			if ev := p.log.evs[next]; pred(ev) {
				got = append(got, ev)
			}
		}
		wake := p.log.wake
		p.log.mu.Unlock()
		if len(got) >= n {
			return got
		}
		left := time.Until(deadline)
		if left <= 0 {
			p.t.Fatalf("%s: timed out waiting for %d× %s (have %d)", p.name, n, what, len(got))
		}
		select {
		case <-wake:
		case <-time.After(min(left, 200*time.Millisecond)):
		}
	}
}

func (p *party) count(pred func(Event) bool) int {
	n := 0
	for _, ev := range p.log.snapshot() {
		if pred(ev) {
			n++
		}
	}
	return n
}

func isText(from, text string) func(Event) bool {
	return func(ev Event) bool {
		m, ok := ev.(*MessageEvent)
		return ok && m.Message.Sender == from && m.Message.Text == text
	}
}

func hasPrefix(from, prefix string) func(Event) bool {
	return func(ev Event) bool {
		m, ok := ev.(*MessageEvent)
		return ok && m.Message.Sender == from && strings.HasPrefix(m.Message.Text, prefix)
	}
}

func receiptFor(from string, st Status, id MessageID) func(Event) bool {
	return func(ev Event) bool {
		r, ok := ev.(*ReceiptEvent)
		if !ok || r.From != from || r.Status != st {
			return false
		}
		for _, x := range r.MessageIDs {
			if x == id {
				return true
			}
		}
		return false
	}
}

// history returns the texts of conv in order.
func (p *party) history(conv ConvID) []Message {
	p.t.Helper()
	ms, err := p.History(context.Background(), conv, 100000, 0)
	if err != nil {
		p.t.Fatal(err)
	}
	return ms
}

func texts(ms []Message) []string {
	out := make([]string, 0, len(ms))
	for _, m := range ms {
		if m.Kind == KindText {
			out = append(out, m.Text)
		}
	}
	return out
}

func (p *party) message(sender string, id MessageID) *Message {
	p.t.Helper()
	m, err := p.Message(context.Background(), sender, id)
	if err != nil {
		p.t.Fatalf("%s: message %s from %s: %v", p.name, id, sender, err)
	}
	return m
}

// handshake exchanges one message each way, one after the other, so both
// sides share one session before a test sends in both directions at
// once. (Simultaneous first messages make two sessions, and
// go.mau.fi/libsignal v0.2.1 corrupts the current session when it
// decrypts a message for the other one: see the report on crypto.)
// talkingPair starts a server and two connected parties, alice and bob,
// with sessions both ways.
func talkingPair(t testing.TB) (*testServer, *party, *party) {
	t.Helper()
	ts := startServer(t)
	alice := newParty(t, ts, "alice")
	bob := newParty(t, ts, "bob")
	alice.waitConnected()
	bob.waitConnected()
	handshake(alice, bob)
	return ts, alice, bob
}

func handshake(a, b *party) {
	a.t.Helper()
	a.send(b.name, "hello from "+a.name)
	b.waitFor("handshake", 1, isText(a.name, "hello from "+a.name))
	b.send(a.name, "hello from "+b.name)
	a.waitFor("handshake", 1, isText(b.name, "hello from "+b.name))
}

// eventually polls cond until it holds.
func eventually(t testing.TB, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out: %s", what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}
