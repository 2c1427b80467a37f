package server

import (
	"context"
	"testing"
	"time"

	"github.com/hushchat/hush/protocol"
	"github.com/hushchat/hush/server/queue"
)

// gatedAcks holds every store Ack until gate is closed.
type gatedAcks struct {
	queue.Store
	gate    chan struct{}
	started chan struct{}
}

func (g gatedAcks) Ack(ctx context.Context, d queue.Device, ids []uint64) (int, error) {
	select {
	case g.started <- struct{}{}:
	default:
	}
	select {
	case <-g.gate:
	case <-ctx.Done():
		return 0, ctx.Err()
	}
	return g.Store.Ack(ctx, d, ids)
}

// An Ack being stored does not hold up the frames behind it (bob's Send is
// answered meanwhile), but a Ping behind it is answered only once it is
// applied, and the acks that queued up meanwhile are applied too.
func TestAckDoesNotBlockReaderButPongWaitsForIt(t *testing.T) {
	gate, started := make(chan struct{}), make(chan struct{}, 1)
	e := newEnv(t, wrapStore(func(s queue.Store) queue.Store { return gatedAcks{s, gate, started} }))
	e.dir.set("alice", 1)
	e.dir.set("bob", 1)
	alice := e.connect("alice", 1)
	alice.nextOf("QueueEmpty")
	bob := e.connect("bob", 1)
	bob.nextOf("QueueEmpty")
	var ids []uint64
	for range 3 {
		ack := alice.sendAndAck(sendTo(newClientID(), []byte("x"), dev("bob", 1)))
		if ack.Error != nil {
			t.Fatal(ack.Error)
		}
		ids = append(ids, ack.ServerId)
	}
	for got := 0; got < len(ids); {
		got += len(bob.nextOf("Deliver").GetDeliver().Envelopes)
	}

	bob.ack(ids[0])
	<-started // the ack worker is in the store
	bob.ack(ids[1:]...)
	if ack := bob.sendAndAck(sendTo(newClientID(), []byte("reply"), dev("alice", 1))); ack.Error != nil {
		t.Fatal(ack.Error)
	}
	bob.send(&protocol.Frame{Body: &protocol.Frame_Ping{Ping: &protocol.Ping{Nonce: 9}}})
	bob.noFrame(100 * time.Millisecond) // no Pong while the acks wait
	if d, err := e.store.Depth(context.Background(), dev("bob", 1)); err != nil || d != 3 {
		t.Fatalf("depth while the ack is held = %d, %v; want 3", d, err)
	}
	close(gate)
	if p := bob.nextOf("Pong").GetPong(); p.GetNonce() != 9 {
		t.Fatalf("pong nonce %d", p.GetNonce())
	}
	if d, err := e.store.Depth(context.Background(), dev("bob", 1)); err != nil || d != 0 {
		t.Fatalf("depth after the Pong = %d, %v; want 0 (every earlier ack applied)", d, err)
	}
}

// A connection that closes right after acking has its acks applied before
// it is gone.
func TestAcksAppliedBeforeDisconnectCompletes(t *testing.T) {
	e := newEnv(t)
	e.dir.set("alice", 1)
	e.dir.set("bob", 1)
	alice := e.connect("alice", 1)
	alice.nextOf("QueueEmpty")
	bob := e.connect("bob", 1)
	bob.nextOf("QueueEmpty")
	ack := alice.sendAndAck(sendTo(newClientID(), []byte("x"), dev("bob", 1)))
	if ack.Error != nil {
		t.Fatal(ack.Error)
	}
	bob.nextOf("Deliver")
	bob.ack(ack.ServerId)
	bob.ws.Close()
	waitUntil(t, "bob detached", func() bool { return e.relay.local(dev("bob", 1)) == nil })
	if d, err := e.store.Depth(context.Background(), dev("bob", 1)); err != nil || d != 0 {
		t.Fatalf("depth after bob left = %d, %v; want 0", d, err)
	}
	bob = e.connect("bob", 1)
	if f := bob.next(); f.GetQueueEmpty() == nil {
		t.Fatalf("reconnected bob got %s before QueueEmpty: the ack was lost", frameKind(f))
	}
}
