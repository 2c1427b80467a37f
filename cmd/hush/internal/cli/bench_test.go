package cli

import (
	"context"
	"io"
	"testing"
	"time"

	"github.com/hushchat/hush/client"
)

// BenchmarkEventLine: the cost of turning a received message into its
// JSON line (receive/listen do this once per event).
func BenchmarkEventLine(b *testing.B) {
	id, _ := client.ParseMessageID("8d382ec7aa06b99a87fd40f4bc14d485")
	ev := &client.MessageEvent{Message: client.Message{ID: id, Conv: client.Direct("alice"), Sender: "alice", SenderDevice: 1,
		Kind: client.KindText, Text: "hello bob, a message of ordinary length for a chat", SentAt: time.Now(), Received: time.Now()}}
	gn := &groupNames{names: map[client.GroupID]string{}}
	ctx := context.Background()
	b.ReportAllocs()
	for b.Loop() {
		if err := writeJSON(io.Discard, eventJSON(ctx, gn, ev)); err != nil {
			b.Fatal(err)
		}
	}
}
