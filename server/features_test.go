package server

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"runtime"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hushchat/hush/protocol"
	"github.com/hushchat/hush/server/presence"
	"github.com/hushchat/hush/server/push"
	"github.com/hushchat/hush/server/queue"
)

func TestGracefulShutdown(t *testing.T) {
	e := newEnv(t, wrapStore(func(s queue.Store) queue.Store { return slowPuts{s, 300 * time.Millisecond} }))
	e.dir.set("alice", 1)
	e.dir.set("bob", 1)
	base := runtime.NumGoroutine()
	alice := e.connect("alice", 1)
	bob := e.connect("bob", 1)
	alice.nextOf("QueueEmpty")
	bob.nextOf("QueueEmpty")
	// Sends being stored while the relay shuts down are finished and
	// answered before the connection closes.
	const n = 20
	for range n {
		alice.send(sendTo(newClientID(), []byte("x"), dev("bob", 1)))
	}
	time.Sleep(100 * time.Millisecond) // all read, all in flight
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- e.relay.Shutdown(ctx) }()

	sawReconnect := false
	answered := 0
	for {
		select {
		case f := <-alice.frames:
			switch b := f.Body.(type) {
			case *protocol.Frame_Reconnect:
				sawReconnect = true
				if b.Reconnect.Reason == "" {
					t.Error("Reconnect without a reason")
				}
			case *protocol.Frame_SendAck:
				answered++
				if err := b.SendAck.Error; err != nil {
					t.Errorf("SendAck during shutdown: %v", err)
				}
			}
			continue
		case <-alice.closed:
		}
		break
	}
	for len(alice.frames) > 0 {
		if f := <-alice.frames; f.GetSendAck() != nil {
			answered++
		}
	}
	if !sawReconnect {
		t.Error("no Reconnect before the close")
	}
	if answered != n {
		t.Errorf("%d of %d Sends answered before the close", answered, n)
	}
	if code := alice.waitClosed(); code != protocol.CloseGoingAway {
		t.Errorf("closed with %d, want %d", code, protocol.CloseGoingAway)
	}
	if err := <-done; err != nil {
		t.Fatalf("Shutdown: %v", err)
	}
	bob.waitClosed()
	if depth, _ := e.store.Depth(context.Background(), dev("bob", 1)); depth != n {
		t.Fatalf("bob's queue holds %d, want the %d acknowledged sends", depth, n)
	}
	// New connections are refused while (and after) shutting down.
	if ws, resp, err := e.dialToken(e.token("bob", 1), nil); err == nil || resp.StatusCode != http.StatusServiceUnavailable {
		if ws != nil {
			ws.Close()
		}
		t.Fatalf("connect after shutdown: %v", err)
	}
	checkGoroutines(t, base)
}

func TestPresenceMutualConsentAndHiding(t *testing.T) {
	e := newEnv(t, func(c *Config, _ *queueOptions) { c.OnlineWindow = 300 * time.Millisecond })
	for _, a := range []string{"alice", "bob", "eve"} {
		e.dir.set(a, 1)
	}
	alice := e.connect("alice", 1)
	bob := e.connect("bob", 1)
	eve := e.connect("eve", 1)
	for _, c := range []*client{alice, bob, eve} {
		c.nextOf("QueueEmpty")
	}
	sub := func(c *client, accounts ...string) {
		c.send(&protocol.Frame{Body: &protocol.Frame_PresenceSubscribe{PresenceSubscribe: &protocol.PresenceSubscribe{Accounts: accounts}}})
	}
	heartbeat := func(c *client) {
		c.send(&protocol.Frame{Body: &protocol.Frame_Heartbeat{Heartbeat: &protocol.Heartbeat{}}})
	}
	nextPresence := func(c *client) *protocol.Presence {
		t.Helper()
		for {
			f := c.next()
			if p := f.GetPresence(); p != nil {
				return p
			}
		}
	}

	heartbeat(bob)
	sub(alice, "bob")
	sub(eve, "bob") // a stranger: bob never subscribes to eve
	alice.noFrame(100 * time.Millisecond)
	sub(bob, "alice")
	// Consent is now mutual: alice learns bob's state, bob learns alice's.
	p := nextPresence(alice)
	if p.Account != "bob" || !p.Online || p.LastSeenMs == 0 || p.Hidden {
		t.Fatalf("alice sees %v", p)
	}
	p = nextPresence(bob)
	if p.Account != "alice" || p.Online {
		t.Fatalf("bob sees %v (alice never heartbeated)", p)
	}
	// Bob goes quiet: the timer turns him offline and alice is told.
	p = nextPresence(alice)
	if p.Account != "bob" || p.Online || p.LastSeenMs == 0 {
		t.Fatalf("after silence alice sees %v", p)
	}
	// Bob hides his last-seen: alice sees only online/offline.
	bob.send(&protocol.Frame{Body: &protocol.Frame_PresenceSettings{PresenceSettings: &protocol.PresenceSettings{HideLastSeen: true}}})
	p = nextPresence(alice)
	if p.Account != "bob" || !p.Hidden || p.LastSeenMs != 0 {
		t.Fatalf("alice sees hiding bob as %v", p)
	}
	// And bob, hiding, cannot see alice's last-seen.
	heartbeat(alice)
	for {
		p = nextPresence(bob)
		if p.Online {
			break
		}
	}
	if p.Account != "alice" || !p.Hidden || p.LastSeenMs != 0 {
		t.Fatalf("hiding bob sees %v", p)
	}
	// The stranger never got anything.
	eve.noFrame(50 * time.Millisecond)
}

func TestPushWebhookOnceForOfflineDevice(t *testing.T) {
	var hits atomic.Int32
	var body atomic.Value
	hook := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		body.Store(string(b))
		hits.Add(1)
	}))
	defer hook.Close()
	var wh *push.Webhook
	e := newEnv(t, func(c *Config, _ *queueOptions) {
		wh = push.NewWebhook(push.NewMemoryEndpoints(), push.WebhookOptions{AllowPrivate: true})
		c.Push = wh
	})
	defer wh.Close()
	e.dir.set("alice", 1)
	e.dir.set("bob", 1)
	bob := e.connect("bob", 1)
	bob.nextOf("QueueEmpty")
	bob.send(&protocol.Frame{Body: &protocol.Frame_PushRegister{PushRegister: &protocol.PushRegister{Endpoint: hook.URL + "/up/bob"}}})
	bob.send(&protocol.Frame{Body: &protocol.Frame_Ping{Ping: &protocol.Ping{Nonce: 1}}})
	bob.nextOf("Pong") // registration processed
	bob.ws.Close()
	bob.waitClosed()
	waitFor(t, func() bool { return e.relay.local(dev("bob", 1)) == nil })

	alice := e.connect("alice", 1)
	alice.nextOf("QueueEmpty")
	for i := range 5 {
		alice.sendAndAck(sendTo(newClientID(), fmt.Appendf(nil, "secret-%d", i), dev("bob", 1)))
	}
	waitFor(t, func() bool { return hits.Load() >= 1 })
	time.Sleep(100 * time.Millisecond)
	if n := hits.Load(); n != 1 {
		t.Fatalf("%d pushes for five messages to one offline device, want 1", n)
	}
	if b := body.Load().(string); b != push.Body {
		t.Fatalf("push body %q is not the constant content-free body", b)
	}
	// Online devices get no push; after reconnecting and going away again,
	// the next message pushes again.
	bob = e.connect("bob", 1)
	bob.drainUntilEmpty()
	alice.sendAndAck(sendTo(newClientID(), []byte("online"), dev("bob", 1)))
	bob.nextOf("Deliver")
	bob.ws.Close()
	bob.waitClosed()
	waitFor(t, func() bool { return e.relay.local(dev("bob", 1)) == nil })
	alice.sendAndAck(sendTo(newClientID(), []byte("offline again"), dev("bob", 1)))
	waitFor(t, func() bool { return hits.Load() == 2 })

	// An internal endpoint is refused without AllowPrivate.
	e2 := newEnv(t, func(c *Config, _ *queueOptions) {
		c.Push = push.NewWebhook(push.NewMemoryEndpoints(), push.WebhookOptions{})
	})
	e2.dir.set("bob", 1)
	b2 := e2.connect("bob", 1)
	b2.nextOf("QueueEmpty")
	b2.send(&protocol.Frame{Body: &protocol.Frame_PushRegister{PushRegister: &protocol.PushRegister{Endpoint: hook.URL}}})
	if f := b2.nextOf("Error"); f.GetError().Code != protocol.ErrorCode_CODE_BAD_FRAME {
		t.Fatalf("internal endpoint: %v", f)
	}
}

func waitFor(t *testing.T, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatal("condition not reached in 10 s")
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// A 1,024-member group send stores the payload once, however many devices
// it reaches.
func TestGroupSendStoresPayloadOnce(t *testing.T) {
	e := newEnv(t)
	e.dir.set("alice", 1)
	s := &protocol.Send{ClientId: newClientID(), Type: protocol.EnvelopeType_ENVELOPE_TYPE_SENDER_KEY, Payload: make([]byte, 64<<10)}
	for i := range protocol.MaxGroupMembers {
		name := fmt.Sprintf("member%04d", i)
		e.dir.set(name, 1)
		s.Recipients = append(s.Recipients, &protocol.Recipient{Account: name, Device: 1})
	}
	for i := range s.Payload {
		s.Payload[i] = byte(i * 7)
	}
	alice := e.connect("alice", 1)
	alice.nextOf("QueueEmpty")
	m0 := e.connect("member0000", 1) // one member online
	m0.nextOf("QueueEmpty")
	ack := alice.sendAndAck(&protocol.Frame{Body: &protocol.Frame_Send{Send: s}})
	if ack.Error != nil {
		t.Fatal(ack.Error)
	}
	ctx := context.Background()
	if n, err := e.store.Payloads(ctx); err != nil || n != 1 {
		t.Fatalf("stored payloads = %d, %v; want 1", n, err)
	}
	// 1,024 copies would be 64 MiB; one copy plus references is far less.
	var size int64
	for _, suffix := range []string{"", "-wal"} {
		if fi, err := os.Stat(e.dbPath + suffix); err == nil {
			size += fi.Size()
		}
	}
	if size > 4<<20 {
		t.Fatalf("queue files hold %d bytes after one 64 KiB group send", size)
	}
	env := m0.nextOf("Deliver").GetDeliver().Envelopes[0]
	if env.Type != protocol.EnvelopeType_ENVELOPE_TYPE_SENDER_KEY || len(env.Payload) != len(s.Payload) || env.Payload[100] != s.Payload[100] {
		t.Fatalf("member got type %v, %d bytes", env.Type, len(env.Payload))
	}
	m5 := e.connect("member1023", 1)
	if envs := m5.drainUntilEmpty(); len(envs) != 1 || envs[0].ServerId != ack.ServerId {
		t.Fatalf("offline member drained %v", envs)
	}
}

// The presence tracker the relay uses by default honours OnlineWindow.
var _ presence.Tracker = (*presence.Memory)(nil)
