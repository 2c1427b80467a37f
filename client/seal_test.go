package client

import (
	"context"
	"testing"
	"time"

	"github.com/hushchat/hush/client/store"
	"github.com/hushchat/hush/crypto"
	"github.com/hushchat/hush/protocol"
)

// TestSealNow: a pairwise row queued while connected, to devices this
// device has sessions with, is encrypted in the transaction that queues
// it (its frame opens at the recipient); every other row is left to the
// outbox worker, unencrypted.
func TestSealNow(t *testing.T) {
	ts, alice, bob := talkingPair(t)
	ctx := context.Background()

	content := &protocol.Content{MessageId: newMessageIDBytes(), SentAtMs: time.Now().UnixMilli(),
		Body: &protocol.Content_Receipt{Receipt: &protocol.Receipt{Type: protocol.Receipt_TYPE_DELIVERED,
			MessageIds: [][]byte{newMessageIDBytes()}}}}
	padded, err := protocol.EncodeContent(content)
	if err != nil {
		t.Fatal(err)
	}
	seal := func(accounts ...string) *store.OutboxItem {
		t.Helper()
		it := &store.OutboxItem{Kind: store.OutboxPairwise, Accounts: accounts, Content: padded, Created: time.Now()}
		if err := alice.db.Atomic(ctx, func(ctx context.Context) error { return alice.sealNow(ctx, it, false) }); err != nil {
			t.Fatalf("sealNow for %v: %v", accounts, err)
		}
		return it
	}

	it := seal("bob")
	if it.Frame == nil || len(it.ClientID) != protocol.ClientIDSize {
		t.Fatalf("a row to bob (session, connected) was not sealed: frame %d bytes, client id %x", len(it.Frame), it.ClientID)
	}
	f, err := protocol.DecodeFrame(it.Frame)
	if err != nil {
		t.Fatal(err)
	}
	send := f.GetSend()
	if send == nil || len(send.Recipients) != 1 || send.Recipients[0].Account != "bob" {
		t.Fatalf("sealed frame addresses %v", send.GetRecipients())
	}
	r := send.Recipients[0]
	pt, err := bob.protocol().Decrypt(ctx, crypto.Address{Name: "alice", DeviceID: alice.self().DeviceID},
		crypto.Ciphertext{Type: crypto.MessageType(r.Type), Body: r.Payload})
	if err != nil {
		t.Fatalf("bob cannot open the sealed frame: %v", err)
	}
	got, err := protocol.DecodeContent(pt)
	if err != nil || string(got.MessageId) != string(content.MessageId) {
		t.Fatalf("bob opened %v (%v), want the receipt", got, err)
	}

	// No session with carol: the worker fetches her keys later.
	if it := seal("carol"); it.Frame != nil || it.ClientID != nil {
		t.Fatal("a row to an account without a session was sealed")
	}

	// A pending identity change (Strict): the worker blocks the row.
	err = alice.db.RecordIdentityChange(ctx, store.IdentityChange{Name: "bob", Device: 1, OldKey: []byte{1}, NewKey: []byte{2}, Seen: time.Now()})
	if err != nil {
		t.Fatal(err)
	}
	if it := seal("bob"); it.Frame != nil {
		t.Fatal("a row to an account with a pending identity change was sealed")
	}
	if err := alice.db.ClearIdentityChanges(ctx, "bob"); err != nil {
		t.Fatal(err)
	}

	// No connection: the row may wait, and go to a device list that
	// changed meanwhile.
	ts.Stop()
	eventually(t, "alice loses the connection", func() bool { s, _ := alice.currentSession(); return s == nil })
	if it := seal("bob"); it.Frame != nil {
		t.Fatal("a row queued without a connection was sealed")
	}
}

// TestSealedSendsInOrder: messages sealed by Send, interleaved with
// delivery receipts sealed by the receive path in both directions,
// arrive once each and in order, and every one is marked delivered.
func TestSealedSendsInOrder(t *testing.T) {
	const n = 40
	_, alice, bob := talkingPair(t)
	ids := make([]MessageID, n)
	for i := range n {
		ids[i] = alice.send("bob", "sealed "+string(rune('A'+i)))
		if i%2 == 0 {
			bob.send("alice", "back "+string(rune('A'+i)))
		}
	}
	bob.waitFor("alice's messages", n, hasPrefix("alice", "sealed "))
	alice.waitFor("bob's messages", (n+1)/2, hasPrefix("bob", "back "))
	var got []string
	for _, m := range bob.history(Direct("alice")) {
		if m.Sender == "alice" && len(m.Text) > 7 && m.Text[:7] == "sealed " {
			got = append(got, m.Text)
		}
	}
	if len(got) != n {
		t.Fatalf("bob's history holds %d of %d messages", len(got), n)
	}
	for i, s := range got {
		if want := "sealed " + string(rune('A'+i)); s != want {
			t.Fatalf("bob's history[%d] = %q, want %q", i, s, want)
		}
	}
	for _, id := range ids {
		alice.waitFor("delivered", 1, receiptFor("bob", StatusDelivered, id))
	}
}
