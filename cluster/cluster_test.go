package cluster

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/hushchat/hush/client"
	"github.com/hushchat/hush/internal/testenv"
)

// party is a real hush client (package client, its own SQLite profile)
// pinned to one relay, with every event it emits.
type party struct {
	*client.Client
	t    *testing.T
	name string
	home string

	mu   sync.Mutex
	evs  []client.Event
	wake chan struct{}
}

func openParty(t *testing.T, home, relayURL, name string) *party {
	t.Helper()
	c, err := client.Open(context.Background(), client.Config{
		Home:              home,
		RelayURL:          relayURL,
		Logger:            slog.New(slog.NewTextHandler(io.Discard, nil)),
		HeartbeatInterval: 500 * time.Millisecond,
		BackoffMin:        20 * time.Millisecond,
		BackoffMax:        500 * time.Millisecond,
		SendTimeout:       10 * time.Second,
		EventBuffer:       4096,
	})
	if err != nil {
		t.Fatalf("open %s: %v", name, err)
	}
	p := &party{Client: c, t: t, name: name, home: home, wake: make(chan struct{})}
	go func() {
		for ev := range c.Events() {
			p.mu.Lock()
			p.evs = append(p.evs, ev)
			close(p.wake)
			p.wake = make(chan struct{})
			p.mu.Unlock()
		}
	}()
	t.Cleanup(func() { c.Close() })
	return p
}

// newParty registers name at the key server and connects to relayURL.
func newParty(t *testing.T, ksURL, relayURL, name string) *party {
	t.Helper()
	p := openParty(t, filepath.Join(t.TempDir(), name), relayURL, name)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := p.Register(ctx, ksURL, name); err != nil {
		t.Fatalf("register %s: %v", name, err)
	}
	if err := p.WaitSynced(ctx); err != nil {
		t.Fatalf("%s: sync: %v", name, err)
	}
	return p
}

// waitEvent waits for an event satisfying ok and returns it.
func (p *party) waitEvent(what string, ok func(client.Event) bool) client.Event {
	p.t.Helper()
	deadline := time.After(30 * time.Second)
	seen := 0
	for {
		p.mu.Lock()
		evs, wake := p.evs, p.wake
		p.mu.Unlock()
		for ; seen < len(evs); seen++ {
			if ok(evs[seen]) {
				return evs[seen]
			}
		}
		select {
		case <-wake:
		case <-deadline:
			p.t.Fatalf("%s: no %s within 30 s", p.name, what)
		}
	}
}

func (p *party) send(to, text string) client.MessageID {
	p.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	id, err := p.Send(ctx, to, text)
	if err != nil {
		p.t.Fatalf("%s: send: %v", p.name, err)
	}
	if err := p.WaitSent(ctx, id); err != nil {
		p.t.Fatalf("%s: wait sent: %v", p.name, err)
	}
	return id
}

func message(text string) func(client.Event) bool {
	return func(ev client.Event) bool {
		m, ok := ev.(*client.MessageEvent)
		return ok && !m.Message.Outgoing && m.Message.Text == text
	}
}

func receipt(id client.MessageID, status client.Status) func(client.Event) bool {
	return func(ev client.Event) bool {
		r, ok := ev.(*client.ReceiptEvent)
		if !ok || r.Status != status {
			return false
		}
		for _, m := range r.MessageIDs {
			if m == id {
				return true
			}
		}
		return false
	}
}

// TestClusterAliceAndBobAcrossRelays: Alice's client is connected to relay
// A only, Bob's to relay B only; everything between them crosses relays
// through Cassandra and Redis. Messages, delivery and read receipts (which
// are encrypted messages), typing indicators (ephemeral, carried inside the
// doorbell) and presence (Redis, mutual consent) all flow both ways.
func TestClusterAliceAndBobAcrossRelays(t *testing.T) {
	r := testenv.NeedRedis(t)
	d := newDeployment(t, r.Addr, r.Prefix)
	d.startKeyserver(true)
	relays := d.startRelays(relayOptions{name: "relay-a"}, relayOptions{name: "relay-b"})
	alice := newParty(t, d.keyserver.url(), relays[0].wsURL(), "alice")
	bob := newParty(t, d.keyserver.url(), relays[1].wsURL(), "bob")
	ctx := ctxTimeout(t, 2*time.Minute)

	for _, dir := range []struct {
		from, to *party
	}{{alice, bob}, {bob, alice}} {
		from, to := dir.from, dir.to
		text := fmt.Sprintf("hello %s, from %s", to.name, from.name)
		id := from.send(to.name, text)
		to.waitEvent("message from "+from.name, message(text))
		from.waitEvent("delivery receipt", receipt(id, client.StatusDelivered))
		if err := to.MarkRead(ctx, client.Direct(from.name)); err != nil {
			t.Fatal(err)
		}
		from.waitEvent("read receipt", receipt(id, client.StatusRead))

		if err := from.SendTyping(ctx, client.Direct(to.name), true); err != nil {
			t.Fatal(err)
		}
		to.waitEvent("typing from "+from.name, func(ev client.Event) bool {
			ty, ok := ev.(*client.TypingEvent)
			return ok && ty.From == from.name && ty.Started
		})
	}

	// Presence: each sees the other online (heartbeats go to different
	// relays; Redis holds them and broadcasts the changes).
	for _, p := range []struct{ who, of *party }{{alice, bob}, {bob, alice}} {
		p.who.waitEvent(p.of.name+" online", func(ev client.Event) bool {
			pe, ok := ev.(*client.PresenceEvent)
			return ok && pe.Account == p.of.name && pe.Online
		})
	}
	// Bob goes inactive: once his last heartbeat leaves the online window,
	// relay B's Redis sweep reports it and relay A tells Alice.
	bob.SetActive(false)
	alice.waitEvent("bob offline", func(ev client.Event) bool {
		pe, ok := ev.(*client.PresenceEvent)
		return ok && pe.Account == "bob" && !pe.Online && !pe.LastSeen.IsZero()
	})
}

// TestClusterClockSkewKeepsConversationOrder: relay A's clock runs 3 s
// behind, relay B's 3 s ahead (HUSH_TESTING_CLOCK_OFFSET; Cassandra's
// write timestamps still come from the machine's one real clock). Alice
// sends five messages through B, then five through A: the later ones get
// server ids about six seconds lower. Bob, online on A the whole time, and
// Carol, offline until the end (her drain returns the queue in server-id
// order, so the last five first), must both show the conversation in
// Alice's order: the client orders by the sender's counter inside the
// ciphertext, not by server id. The relay's own guarantee under skew is
// that every message is delivered, including the ones whose ids fall below
// what a connection has already received.
func TestClusterClockSkewKeepsConversationOrder(t *testing.T) {
	r := testenv.NeedRedis(t)
	d := newDeployment(t, r.Addr, r.Prefix)
	d.startKeyserver(true)
	relays := d.startRelays(
		relayOptions{name: "relay-a", env: []string{"HUSH_TESTING_CLOCK_OFFSET=-3s"}},
		relayOptions{name: "relay-b", env: []string{"HUSH_TESTING_CLOCK_OFFSET=3s"}},
	)
	a, b := relays[0].wsURL(), relays[1].wsURL()
	bob := newParty(t, d.keyserver.url(), a, "bob")
	carol := newParty(t, d.keyserver.url(), b, "carol")
	carolHome := carol.home
	carol.Close() // offline until every message is stored
	alice := newParty(t, d.keyserver.url(), b, "alice")

	var texts []string
	serverIDs := map[string]uint64{}
	for i := range 10 {
		if i == 5 {
			home := alice.home
			alice.Close()
			alice = openParty(t, home, a, "alice") // same profile, now through relay A
		}
		text := fmt.Sprintf("message %d", i+1)
		texts = append(texts, text)
		alice.send("bob", text)
		alice.send("carol", text)
		ev := bob.waitEvent(text, message(text)).(*client.MessageEvent)
		serverIDs[text] = ev.Message.ServerID
	}
	if serverIDs["message 6"] >= serverIDs["message 5"] {
		t.Fatalf("message 6 (relay A, -3 s) has server id %d, not below message 5's %d (relay B, +3 s): the skew did not take effect",
			serverIDs["message 6"], serverIDs["message 5"])
	}
	carol = openParty(t, carolHome, b, "carol")
	for _, text := range texts {
		carol.waitEvent(text, message(text))
	}
	ctx := ctxTimeout(t, time.Minute)
	for _, p := range []*party{bob, carol} {
		h, err := p.History(ctx, client.Direct("alice"), 100, 0)
		if err != nil {
			t.Fatal(err)
		}
		var got []string
		for _, m := range h {
			got = append(got, m.Text)
		}
		if fmt.Sprint(got) != fmt.Sprint(texts) {
			t.Errorf("%s's conversation with alice reads %q, want %q", p.name, got, texts)
		}
	}
}
