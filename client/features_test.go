package client

import (
	"context"
	"errors"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/hushchat/hush/keyserver/ksclient"
)

// newBot registers an account whose events are consumed with Run (so no
// collector is attached).
func newBot(t *testing.T, ts *testServer, name string) (*Client, Config) {
	t.Helper()
	cfg := testConfig(t, filepath.Join(t.TempDir(), name))
	c, err := Open(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Register(context.Background(), ts.URL(), name); err != nil {
		t.Fatal(err)
	}
	return c, cfg
}

// TestRunRedelivers: a handler error keeps the event, in process (retry
// with backoff) and across a restart.
func TestRunRedelivers(t *testing.T) {
	ts := startServer(t)
	alice := newParty(t, ts, "alice")
	bot, cfg := newBot(t, ts, "bot")
	defer func() { bot.Close() }()
	alice.waitConnected()

	type call struct {
		text string
		err  bool
	}
	var mu sync.Mutex
	var calls []call
	handle := func(failures map[string]int, stopOn string, cancel context.CancelFunc) Handler {
		return func(ctx context.Context, ev Event) error {
			m, ok := ev.(*MessageEvent)
			if !ok {
				return nil
			}
			mu.Lock()
			defer mu.Unlock()
			text := m.Message.Text
			if failures[text] != 0 {
				if failures[text] > 0 {
					failures[text]--
				}
				calls = append(calls, call{text, true})
				if text == stopOn {
					cancel()
				}
				return errors.New("handler failed")
			}
			calls = append(calls, call{text, false})
			if text == stopOn {
				cancel()
			}
			return nil
		}
	}
	// In process: m1 fails twice, then succeeds; m2 is handled next.
	alice.send("bot", "m1")
	alice.send("bot", "m2")
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	err := bot.Run(ctx, handle(map[string]int{"m1": 2}, "m2", cancel))
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("Run = %v, want context.Canceled", err)
	}
	want := []call{{"m1", true}, {"m1", true}, {"m1", false}, {"m2", false}}
	mu.Lock()
	if len(calls) != len(want) {
		t.Fatalf("calls = %+v, want %+v", calls, want)
	}
	for i := range want {
		if calls[i] != want[i] {
			t.Fatalf("calls = %+v, want %+v", calls, want)
		}
	}
	calls = nil
	mu.Unlock()

	// Across a restart: m3 fails and the process stops; the next Run on
	// the profile gets m3 again.
	alice.send("bot", "m3")
	ctx, cancel = context.WithTimeout(context.Background(), 30*time.Second)
	bot.Run(ctx, handle(map[string]int{"m3": -1}, "m3", cancel))
	bot.Close()
	bot, err = Open(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel = context.WithTimeout(context.Background(), 30*time.Second)
	bot.Run(ctx, handle(nil, "m3", cancel))
	mu.Lock()
	if len(calls) != 2 || calls[0] != (call{"m3", true}) || calls[1] != (call{"m3", false}) {
		t.Fatalf("calls across restart = %+v", calls)
	}
	calls = nil
	mu.Unlock()
	// Handled now: a later Run does not see it again.
	alice.send("bot", "m4")
	bot.Close()
	bot, err = Open(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel = context.WithTimeout(context.Background(), 30*time.Second)
	bot.Run(ctx, handle(nil, "m4", cancel))
	mu.Lock()
	defer mu.Unlock()
	if len(calls) != 1 || calls[0].text != "m4" {
		t.Fatalf("calls after handling = %+v", calls)
	}
	// Events and Run exclude each other.
	bot.Events()
	if err := bot.Run(context.Background(), func(context.Context, Event) error { return nil }); !errors.Is(err, ErrEventsInUse) {
		t.Fatalf("Run while Events is consumed: %v", err)
	}
}

// TestTypingAndPresence: typing is delivered live; presence is shared
// between contacts with a conversation and respects hidden last-seen.
func TestTypingAndPresence(t *testing.T) {
	ctx := context.Background()
	ts := startServer(t)
	alice := newParty(t, ts, "alice")
	bob := newParty(t, ts, "bob")
	carol := newParty(t, ts, "carol")
	for _, p := range []*party{alice, bob, carol} {
		p.waitConnected()
	}
	handshake(alice, bob)
	alice.waitFor("bob online", 1, func(ev Event) bool {
		p, ok := ev.(*PresenceEvent)
		return ok && p.Account == "bob" && p.Online
	})
	if p, ok := alice.Presence("bob"); !ok || !p.Online {
		t.Fatalf("presence of bob = %+v, %v", p, ok)
	}
	if err := alice.SendTyping(ctx, Direct("bob"), true); err != nil {
		t.Fatal(err)
	}
	bob.waitFor("typing", 1, func(ev Event) bool {
		ty, ok := ev.(*TypingEvent)
		return ok && ty.From == "alice" && ty.Started && ty.Conv == Direct("alice")
	})
	if err := alice.SendTyping(ctx, Direct("bob"), false); err != nil {
		t.Fatal(err)
	}
	bob.waitFor("stopped typing", 1, func(ev Event) bool {
		ty, ok := ev.(*TypingEvent)
		return ok && ty.From == "alice" && !ty.Started
	})
	// Typing to someone without a session is silently nothing.
	if err := alice.SendTyping(ctx, Direct("carol"), true); err != nil {
		t.Fatal(err)
	}
	// carol never talked to alice: no presence either way.
	if _, ok := carol.Presence("alice"); ok {
		t.Fatal("carol sees alice's presence without a conversation")
	}
	if err := bob.SetHideLastSeen(ctx, true); err != nil {
		t.Fatal(err)
	}
	if !bob.HideLastSeen() {
		t.Fatal("setting not kept")
	}
	bob = bob.reopen()
	if !bob.HideLastSeen() {
		t.Fatal("setting not persisted")
	}
	bob.waitConnected()
	alice.waitFor("bob hidden", 1, func(ev Event) bool {
		p, ok := ev.(*PresenceEvent)
		return ok && p.Account == "bob" && p.Hidden && p.LastSeen.IsZero()
	})
}

// TestTokenRefreshAndKeys: short-lived tokens are renewed (the relay
// closes a connection whose token expired, and the client comes back);
// one-time prekeys are topped up and the signed prekey rotated.
func TestTokenRefreshAndKeys(t *testing.T) {
	ts := startServerTTL(t, 3*time.Second)
	alice := newParty(t, ts, "alice")
	cfg := testConfig(t, filepath.Join(t.TempDir(), "bob"))
	cfg.PreKeyLowWater, cfg.PreKeyBatch = 100, 100
	cfg.SignedPreKeyRotation = time.Second
	cfg.KeyCheckInterval = 200 * time.Millisecond
	bob := openParty(t, cfg, "bob")
	if err := bob.Register(context.Background(), ts.URL(), "bob"); err != nil {
		t.Fatal(err)
	}
	alice.waitConnected()
	bob.waitConnected()
	first, _ := bob.db.LoadAccount(context.Background())
	alice.send("bob", "uses a one-time prekey")
	bob.waitFor("first", 1, isText("alice", "uses a one-time prekey"))

	ks, err := ksclient.New(ts.URL())
	if err != nil {
		t.Fatal(err)
	}
	eventually(t, "prekeys topped up and signed prekey rotated", func() bool {
		a, err := bob.db.LoadAccount(context.Background())
		if err != nil || a.SignedPreKeyID == first.SignedPreKeyID {
			return false
		}
		st, err := ks.KeyStatus(context.Background(), a.Token)
		return err == nil && st.OneTimePreKeys == 100 && st.SignedPreKeyID == a.SignedPreKeyID
	})

	// Outlive the first tokens; messages still flow both ways.
	time.Sleep(3500 * time.Millisecond)
	alice.send("bob", "after expiry")
	bob.waitFor("after expiry", 1, isText("alice", "after expiry"))
	bob.send("alice", "and back")
	alice.waitFor("back", 1, isText("bob", "and back"))
	a, _ := bob.db.LoadAccount(context.Background())
	if a.Token == first.Token || !a.TokenExpiry.After(first.TokenExpiry) {
		t.Fatal("token was not refreshed")
	}
	// A message built on the rotated-away signed prekey still decrypts
	// (it is kept for the grace period): covered by the first message
	// above having used it; the old one must still be stored.
	if _, err := bob.db.LoadSignedPreKey(context.Background(), first.SignedPreKeyID); err != nil {
		t.Fatalf("old signed prekey removed before its grace period: %v", err)
	}
}
