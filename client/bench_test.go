package client

import (
	"context"
	"fmt"
	"testing"
)

// BenchmarkSendReceive measures one message from Send to the recipient's
// MessageEvent through a real in-process hush-server, with a window of
// messages in flight (the outbox pipelines them).
func BenchmarkSendReceive(b *testing.B) {
	ts := startServer(b)
	alice := newParty(b, ts, "alice")
	bob := newParty(b, ts, "bob")
	alice.waitConnected()
	bob.waitConnected()
	handshake(alice, bob)
	b.ResetTimer()
	for i := range b.N {
		if _, err := alice.Send(context.Background(), "bob", fmt.Sprintf("m%d", i)); err != nil {
			b.Fatal(err)
		}
	}
	bob.waitFor("all", b.N, hasPrefix("alice", "m"))
}

// BenchmarkSendQueue measures Send alone: the local commit of the message
// and its outbox row.
func BenchmarkSendQueue(b *testing.B) {
	c := offlineClient(b, "alice")
	ctx := context.Background()
	b.ResetTimer()
	for i := range b.N {
		if _, err := c.Send(ctx, "bob", fmt.Sprintf("m%d", i)); err != nil {
			b.Fatal(err)
		}
	}
}
