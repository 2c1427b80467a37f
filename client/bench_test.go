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
	_, alice, bob := talkingPair(b)
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

// BenchmarkReceiveDrain measures the batched receive path: b.N messages
// wait at the relay for bob, who then connects; the relay hands them over
// in Deliver frames of up to 256 and bob processes whatever is waiting in
// one transaction (decrypt, store, event, receipts). Per message: the time
// from bob's Open to the last MessageEvent.
func BenchmarkReceiveDrain(b *testing.B) {
	_, alice, bob := talkingPair(b)
	bob.Close()
	var last MessageID
	for i := range b.N {
		last = alice.send("bob", fmt.Sprintf("m%d", i))
	}
	alice.waitSent(last)
	b.ResetTimer()
	bob = openParty(b, bob.cfg, "bob")
	bob.waitFor("all", b.N, hasPrefix("alice", "m"))
}

// BenchmarkOutboxDrain measures the batched send path: b.N messages wait
// in alice's outbox (sent while offline); then she connects, and the rows
// are encrypted and committed up to SendWindow per transaction and their
// acks completed together. Per message: the time from alice's Open to the
// last one sent (✓).
func BenchmarkOutboxDrain(b *testing.B) {
	_, alice, _ := talkingPair(b)
	alice.Close()
	cfg := alice.cfg
	cfg.Offline = true
	alice = openParty(b, cfg, "alice")
	var last MessageID
	for i := range b.N {
		last = alice.send("bob", fmt.Sprintf("m%d", i))
	}
	alice.Close()
	cfg.Offline = false
	b.ResetTimer()
	alice = openParty(b, cfg, "alice")
	alice.waitSent(last)
}
