package main

import (
	"context"
	"log/slog"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hushchat/hush/client"
	"github.com/hushchat/hush/server/app/apptest"
)

// The test runs a real hush-server in process, the bot as main runs it,
// and a person (alice) on the client package.

func startServer(t *testing.T) string {
	t.Helper()
	return apptest.Start(t).URL()
}

func fast(cfg *client.Config) {
	cfg.BackoffMin, cfg.BackoffMax = 20*time.Millisecond, 300*time.Millisecond
	cfg.HoldTimeout = 500 * time.Millisecond
	cfg.HandlerRetryMin, cfg.HandlerRetryMax = 10*time.Millisecond, 50*time.Millisecond
}

var quiet = slog.New(slog.DiscardHandler)

// person is a client with a log of the messages it received.
type person struct {
	*client.Client
	mu   sync.Mutex
	msgs []client.Message
}

func newPerson(t *testing.T, server, name string) *person {
	t.Helper()
	cfg := client.Config{Home: filepath.Join(t.TempDir(), name), Logger: quiet}
	fast(&cfg)
	c, err := client.Open(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	if err := c.Register(context.Background(), server, name); err != nil {
		t.Fatal(err)
	}
	p := &person{Client: c}
	go func() {
		for ev := range c.Events() {
			if m, ok := ev.(*client.MessageEvent); ok {
				p.mu.Lock()
				p.msgs = append(p.msgs, m.Message)
				p.mu.Unlock()
			}
		}
	}()
	return p
}

// waitText waits for a message with text in conv and returns it.
func (p *person) waitText(t *testing.T, conv client.ConvID, text string) client.Message {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for time.Now().Before(deadline) {
		p.mu.Lock()
		for _, m := range p.msgs {
			if m.Conv == conv && m.Text == text {
				p.mu.Unlock()
				return m
			}
		}
		p.mu.Unlock()
		time.Sleep(20 * time.Millisecond)
	}
	t.Fatalf("no %q in %s", text, conv)
	return client.Message{}
}

func startBot(t *testing.T, server string) (*client.Client, *bot) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	c, err := open(ctx, Config{Home: filepath.Join(t.TempDir(), "bot"), Server: server, Name: "echobot", Logger: quiet, Tune: fast})
	if err != nil {
		t.Fatal(err)
	}
	b := &bot{c: c, log: quiet}
	done := make(chan error, 1)
	go func() { done <- b.serve(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("bot stopped with %v", err)
		}
		c.Close()
	})
	return c, b
}

// TestEcho: ping → "echo: ping", as a reply, 1-1 and in a group.
func TestEcho(t *testing.T) {
	ctx := context.Background()
	server := startServer(t)
	botClient, _ := startBot(t, server)
	alice := newPerson(t, server, "alice")

	ping, err := alice.Send(ctx, "echobot", "ping")
	if err != nil {
		t.Fatal(err)
	}
	m := alice.waitText(t, client.Direct("echobot"), "echo: ping")
	if m.Sender != "echobot" || m.Quote == nil || m.Quote.ID != ping {
		t.Fatalf("echo = %+v, want a reply to %s", m, ping)
	}
	// The bot marked the conversation read: alice's message shows read.
	deadline := time.Now().Add(30 * time.Second)
	for {
		got, err := alice.Message(ctx, "alice", ping)
		if err == nil && got.Status == client.StatusRead {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("ping never showed read: %+v, %v", got, err)
		}
		time.Sleep(20 * time.Millisecond)
	}

	gid, err := alice.CreateGroup(ctx, "echoes", []string{"echobot"})
	if err != nil {
		t.Fatal(err)
	}
	// The bot learns of the group from the group update, which goes
	// before this message in alice's outbox.
	if _, err := alice.SendGroup(ctx, gid, "ping all"); err != nil {
		t.Fatal(err)
	}
	gm := alice.waitText(t, client.GroupConv(gid), "echo: ping all")
	if gm.Sender != "echobot" || gm.Group == nil || *gm.Group != gid {
		t.Fatalf("group echo = %+v", gm)
	}

	// Nothing else was echoed: the bot does not answer itself or the
	// group update.
	time.Sleep(300 * time.Millisecond)
	ms, err := botClient.History(ctx, client.Direct("alice"), 100, 0)
	if err != nil {
		t.Fatal(err)
	}
	var answers []string
	for _, m := range ms {
		if m.Outgoing {
			answers = append(answers, m.Text)
		}
	}
	if strings.Join(answers, "|") != "echo: ping" {
		t.Fatalf("the bot's 1-1 answers: %q", answers)
	}
}

// TestEchoOnce: an event handled twice (as Run does after a failure or a
// crash) is answered once.
func TestEchoOnce(t *testing.T) {
	ctx := context.Background()
	server := startServer(t)
	botClient, b := startBot(t, server)
	alice := newPerson(t, server, "alice")
	if _, err := alice.Send(ctx, "echobot", "once"); err != nil {
		t.Fatal(err)
	}
	alice.waitText(t, client.Direct("echobot"), "echo: once")
	hist, err := botClient.History(ctx, client.Direct("alice"), 100, 0)
	if err != nil {
		t.Fatal(err)
	}
	var in *client.Message
	for i := range hist {
		if !hist[i].Outgoing && hist[i].Text == "once" {
			in = &hist[i]
		}
	}
	if in == nil {
		t.Fatalf("the bot has no incoming message: %+v", hist)
	}
	if err := b.handle(ctx, &client.MessageEvent{Message: *in}); err != nil {
		t.Fatal(err)
	}
	hist, _ = botClient.History(ctx, client.Direct("alice"), 100, 0)
	n := 0
	for _, m := range hist {
		if m.Outgoing && m.Text == "echo: once" {
			n++
		}
	}
	if n != 1 {
		t.Fatalf("answered %d times", n)
	}
}

// TestEchoLimits: the answer to a maximal message is cut to the limit on
// a character boundary; errors no retry can fix are told apart from
// transient ones (which Run retries).
func TestEchoLimits(t *testing.T) {
	long := strings.Repeat("é", 40000) // 80,000 bytes
	got := clipUTF8(echoPrefix+long, 65536)
	if len(got) > 65536 || !strings.HasPrefix(got, echoPrefix) || strings.ContainsRune(got, '\uFFFD') {
		t.Fatalf("clipped to %d bytes", len(got))
	}
	if clipUTF8("short", 10) != "short" {
		t.Fatal("clipped a short text")
	}
	if !permanent(client.ErrNotMember) || permanent(context.DeadlineExceeded) {
		t.Fatal("permanent() misclassifies")
	}
}
