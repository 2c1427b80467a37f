package tui

import (
	"context"
	"path/filepath"
	"strconv"
	"testing"

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
