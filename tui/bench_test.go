package tui

import (
	"context"
	"path/filepath"
	"strconv"
	"testing"
	"time"

	"github.com/hushchat/hush/client"
)

// BenchmarkStartup10k measures what the UI does before its first full
// screen on a profile holding 10,000 messages in one conversation: build
// the model, load the conversation list, load the newest page of the
// open conversation, render. (The program's own terminal setup is not
// included.) Run: go test ./tui -run '^$' -bench Startup -benchtime 20x
func BenchmarkStartup10k(b *testing.B) {
	ts := startServer(b)
	home := filepath.Join(b.TempDir(), "alice")
	c := openClient(b, home)
	ctx := context.Background()
	if err := c.Register(ctx, ts.url, "alice"); err != nil {
		b.Fatal(err)
	}
	newClient(b, ts, "bob")
	c.Close()
	cfg := clientConfig(home)
	cfg.Offline = true // the messages stay in the outbox: only the store matters here
	c, err := client.Open(ctx, cfg)
	if err != nil {
		b.Fatal(err)
	}
	defer c.Close()
	for i := range 10000 {
		if _, err := c.Send(ctx, "bob", "message number "+strconv.Itoa(i)+" with a bit of text to wrap around the screen"); err != nil {
			b.Fatal(err)
		}
	}
	b.ResetTimer()
	for b.Loop() {
		m, err := newModel(ctx, c, Config{}, Options{})
		if err != nil {
			b.Fatal(err)
		}
		m.width, m.height = 120, 40
		m.layout()
		m.update(m.loadConvs()())
		conv := m.convs[0].ID
		m.chat = chatState{conv: conv, name: m.convName(conv)}
		m.update(m.loadHistory(conv, "")())
		if len(m.chat.msgs) != pageSize || m.render() == "" {
			b.Fatalf("loaded %d messages", len(m.chat.msgs))
		}
	}
}

// BenchmarkRender measures one full frame (list + 40 wrapped messages
// with quotes and ticks) at 120×40: what every keystroke costs.
func BenchmarkRender(b *testing.B) {
	c := openClient(b, filepath.Join(b.TempDir(), "p"))
	m, err := newModel(context.Background(), c, Config{}, Options{})
	if err != nil {
		b.Fatal(err)
	}
	m.reg, m.me, m.registered = nil, "alice", true
	m.width, m.height = 120, 40
	m.layout()
	conv := client.Direct("bob")
	now := time.Now()
	for i := range 200 {
		m.chat.msgs = append(m.chat.msgs, client.Message{Seq: int64(i + 1), ID: client.MessageID{byte(i), byte(i >> 8)}, Conv: conv,
			Sender: "bob", Outgoing: i%2 == 0, Status: client.StatusRead, SentAt: now, Kind: client.KindText,
			Text: "a message of moderate length that wraps once or twice in the conversation pane " + strconv.Itoa(i)})
	}
	m.chat.conv, m.chat.name, m.chat.loaded = conv, "bob", true
	for i := range 30 {
		m.convs = append(m.convs, client.Conversation{ID: client.Direct("peer" + strconv.Itoa(i)), Name: "peer" + strconv.Itoa(i), Last: &m.chat.msgs[i]})
	}
	for b.Loop() {
		if m.render() == "" {
			b.Fatal("empty")
		}
	}
}
