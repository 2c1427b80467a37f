package server

import (
	"bytes"
	"context"
	"fmt"
	"slices"
	"testing"
	"time"

	"github.com/hushchat/hush/protocol"
	"github.com/hushchat/hush/server/queue"
)

func TestOnlineDeliveryAndAck(t *testing.T) {
	e := newEnv(t)
	e.dir.set("alice", 1)
	e.dir.set("bob", 1)
	alice := e.connect("alice", 1)
	bob := e.connect("bob", 1)
	alice.nextOf("QueueEmpty")
	bob.nextOf("QueueEmpty")

	cid := newClientID()
	ack := alice.sendAndAck(sendTo(cid, []byte("ciphertext-1"), dev("bob", 1)))
	if ack.Error != nil || ack.ServerId == 0 || !bytes.Equal(ack.ClientId, cid) || ack.ServerTimeMs == 0 {
		t.Fatalf("SendAck = %v", ack)
	}
	d := bob.nextOf("Deliver").GetDeliver()
	if len(d.Envelopes) != 1 {
		t.Fatalf("Deliver = %v", d)
	}
	env := d.Envelopes[0]
	if env.ServerId != ack.ServerId || env.Sender != "alice" || env.SenderDevice != 1 ||
		string(env.Payload) != "ciphertext-1" || env.Type != protocol.EnvelopeType_ENVELOPE_TYPE_SIGNAL || env.ServerTimeMs != ack.ServerTimeMs {
		t.Fatalf("envelope = %v, SendAck = %v", env, ack)
	}
	ctx := context.Background()
	if n, _ := e.store.Depth(ctx, dev("bob", 1)); n != 1 {
		t.Fatalf("depth before ack = %d, want 1: delivered is not acked", n)
	}
	bob.ack(env.ServerId)
	waitDepth(t, e, dev("bob", 1), 0)
}

func waitDepth(t *testing.T, e *env, d queue.Device, want int) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		n, err := e.store.Depth(context.Background(), d)
		if err != nil {
			t.Fatal(err)
		}
		if n == want {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("depth of %s = %d, want %d", d, n, want)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func TestOfflineDrainInOrderThenQueueEmpty(t *testing.T) {
	e := newEnv(t)
	e.dir.set("alice", 1)
	e.dir.set("bob", 1)
	alice := e.connect("alice", 1)
	alice.nextOf("QueueEmpty")
	const n = 600 // more than two Deliver batches
	var ids []uint64
	for i := range n {
		ack := alice.sendAndAck(sendTo(newClientID(), fmt.Appendf(nil, "m%04d", i), dev("bob", 1)))
		if ack.Error != nil {
			t.Fatal(ack.Error)
		}
		ids = append(ids, ack.ServerId)
	}
	bob := e.connect("bob", 1)
	envs := bob.drainUntilEmpty()
	if len(envs) != n {
		t.Fatalf("drained %d envelopes, want %d", len(envs), n)
	}
	for i, env := range envs {
		if env.ServerId != ids[i] || string(env.Payload) != fmt.Sprintf("m%04d", i) {
			t.Fatalf("envelope %d = id %d %q, want id %d m%04d", i, env.ServerId, env.Payload, ids[i], i)
		}
	}
	// Nothing acked: a reconnect delivers everything again.
	bob.ws.Close()
	bob.waitClosed()
	bob = e.connect("bob", 1)
	again := bob.drainUntilEmpty()
	if len(again) != n {
		t.Fatalf("redelivered %d, want %d", len(again), n)
	}
	for i := 0; i < n; i += protocol.MaxAckIDs {
		bob.ack(ids[i:min(n, i+protocol.MaxAckIDs)]...)
	}
	waitDepth(t, e, dev("bob", 1), 0)
	bob.ws.Close()
	bob.waitClosed()
	bob = e.connect("bob", 1)
	if got := bob.drainUntilEmpty(); len(got) != 0 {
		t.Fatalf("acked envelopes delivered again: %d", len(got))
	}
}

func TestIdempotentRetry(t *testing.T) {
	e := newEnv(t)
	e.dir.set("alice", 1)
	e.dir.set("bob", 1)
	alice := e.connect("alice", 1)
	alice.nextOf("QueueEmpty")
	cid := newClientID()
	first := alice.sendAndAck(sendTo(cid, []byte("once"), dev("bob", 1)))
	// The client lost the SendAck and retries, even on a new connection.
	alice.ws.Close()
	alice.waitClosed()
	alice = e.connect("alice", 1)
	alice.nextOf("QueueEmpty")
	second := alice.sendAndAck(sendTo(cid, []byte("once"), dev("bob", 1)))
	if first.Error != nil || second.Error != nil || first.ServerId != second.ServerId || first.ServerTimeMs != second.ServerTimeMs {
		t.Fatalf("retry answered %v, original %v", second, first)
	}
	bob := e.connect("bob", 1)
	if envs := bob.drainUntilEmpty(); len(envs) != 1 {
		t.Fatalf("bob got %d envelopes for one message sent twice", len(envs))
	}
}

func TestRecipientChecks(t *testing.T) {
	e := newEnv(t)
	e.dir.set("alice", 1, 2, 3)
	e.dir.set("bob", 1, 2)
	alice := e.connect("alice", 1)
	alice.nextOf("QueueEmpty")
	p := []byte("x")

	// Bob's device 2 is missing, device 5 does not exist.
	ack := alice.sendAndAck(sendTo(newClientID(), p, dev("bob", 1), dev("bob", 5)))
	if ack.Error.GetCode() != protocol.ErrorCode_CODE_DEVICE_MISMATCH || len(ack.Error.Mismatches) != 1 {
		t.Fatalf("SendAck = %v", ack)
	}
	m := ack.Error.Mismatches[0]
	if m.Account != "bob" || !slices.Equal(m.Missing, []uint32{2}) || !slices.Equal(m.Extra, []uint32{5}) {
		t.Fatalf("mismatch = %v", m)
	}
	// Unknown account.
	ack = alice.sendAndAck(sendTo(newClientID(), p, dev("bob", 1), dev("bob", 2), dev("nobody", 1)))
	if ack.Error.GetCode() != protocol.ErrorCode_CODE_UNKNOWN_ACCOUNT {
		t.Fatalf("SendAck = %v", ack)
	}
	// The sender's own other devices must be included; the sending device
	// itself never is.
	ack = alice.sendAndAck(sendTo(newClientID(), p, dev("bob", 1), dev("bob", 2), dev("alice", 2)))
	if ack.Error.GetCode() != protocol.ErrorCode_CODE_DEVICE_MISMATCH || ack.Error.Mismatches[0].Account != "alice" ||
		!slices.Equal(ack.Error.Mismatches[0].Missing, []uint32{3}) {
		t.Fatalf("own account missing device: %v", ack)
	}
	ack = alice.sendAndAck(sendTo(newClientID(), p, dev("alice", 1), dev("alice", 2), dev("alice", 3)))
	if ack.Error.GetCode() != protocol.ErrorCode_CODE_DEVICE_MISMATCH || !slices.Equal(ack.Error.Mismatches[0].Extra, []uint32{1}) {
		t.Fatalf("sending device named as recipient: %v", ack)
	}
	// No partial send: nothing of the refused sends was stored.
	ctx := context.Background()
	for _, d := range []queue.Device{dev("bob", 1), dev("bob", 2), dev("alice", 2), dev("alice", 3)} {
		if n, _ := e.store.Depth(ctx, d); n != 0 {
			t.Fatalf("refused sends left %d envelopes for %s", n, d)
		}
	}
	// The exact list succeeds.
	ack = alice.sendAndAck(sendTo(newClientID(), p, dev("bob", 1), dev("bob", 2), dev("alice", 2), dev("alice", 3)))
	if ack.Error != nil {
		t.Fatalf("exact recipients refused: %v", ack.Error)
	}
}

func TestQueueFull(t *testing.T) {
	e := newEnv(t, func(_ *Config, q *queue.Options) { q.MaxDepth = 3 })
	e.dir.set("alice", 1)
	e.dir.set("bob", 1)
	e.dir.set("carol", 1)
	alice := e.connect("alice", 1)
	alice.nextOf("QueueEmpty")
	for range 3 {
		if ack := alice.sendAndAck(sendTo(newClientID(), []byte("x"), dev("bob", 1))); ack.Error != nil {
			t.Fatal(ack.Error)
		}
	}
	ack := alice.sendAndAck(sendTo(newClientID(), []byte("x"), dev("bob", 1), dev("carol", 1)))
	if ack.Error.GetCode() != protocol.ErrorCode_CODE_QUEUE_FULL || ack.Error.Limit != 3 {
		t.Fatalf("SendAck = %v, want CODE_QUEUE_FULL with limit 3", ack)
	}
	if n, _ := e.store.Depth(context.Background(), dev("carol", 1)); n != 0 {
		t.Fatalf("a refused send reached carol's queue (%d)", n)
	}
}

func TestEphemeralNeverStored(t *testing.T) {
	e := newEnv(t)
	e.dir.set("alice", 1)
	e.dir.set("bob", 1, 2)
	alice := e.connect("alice", 1)
	bob1 := e.connect("bob", 1)
	alice.nextOf("QueueEmpty")
	bob1.nextOf("QueueEmpty")
	f := sendTo(newClientID(), []byte("typing"), dev("bob", 1), dev("bob", 2))
	f.GetSend().Ephemeral = true
	ack := alice.sendAndAck(f)
	if ack.Error != nil || ack.DeliveredOnline != 1 || ack.ServerId == 0 {
		t.Fatalf("SendAck = %v, want delivered_online 1", ack)
	}
	env := bob1.nextOf("Deliver").GetDeliver().Envelopes[0]
	if !env.Ephemeral || string(env.Payload) != "typing" {
		t.Fatalf("envelope = %v", env)
	}
	ctx := context.Background()
	for _, d := range []queue.Device{dev("bob", 1), dev("bob", 2)} {
		if n, _ := e.store.Depth(ctx, d); n != 0 {
			t.Fatalf("ephemeral send stored for %s (%d)", d, n)
		}
	}
	// The offline device never gets it.
	bob2 := e.connect("bob", 2)
	if envs := bob2.drainUntilEmpty(); len(envs) != 0 {
		t.Fatalf("offline device got %d envelopes", len(envs))
	}
}

func TestTTLExpiry(t *testing.T) {
	e := newEnv(t, func(c *Config, _ *queue.Options) { c.TTL = time.Hour })
	e.dir.set("alice", 1)
	e.dir.set("bob", 1)
	alice := e.connect("alice", 1)
	alice.nextOf("QueueEmpty")
	alice.sendAndAck(sendTo(newClientID(), []byte("old"), dev("bob", 1)))
	e.clock.Advance(59 * time.Minute)
	alice.sendAndAck(sendTo(newClientID(), []byte("new"), dev("bob", 1)))
	e.clock.Advance(2 * time.Minute) // the first is 61 min old, the second 2 min
	e.relay.Sweep()
	if n, _ := e.store.Depth(context.Background(), dev("bob", 1)); n != 1 {
		t.Fatalf("after sweep depth = %d, want 1", n)
	}
	bob := e.connect("bob", 1)
	envs := bob.drainUntilEmpty()
	if len(envs) != 1 || string(envs[0].Payload) != "new" {
		t.Fatalf("bob got %v, want only the unexpired envelope", envs)
	}
}
