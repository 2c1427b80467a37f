package client

import (
	"context"
	"errors"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"github.com/hushchat/hush/client/store"
	"github.com/hushchat/hush/crypto"
)

// recordOtherKey makes p's profile hold a different identity key for
// peer's device 1 than the one peer has — exactly what p sees when peer's
// key changes (a reinstall, or a key server handing out someone else's
// keys). With dropSession the session goes too, so p's next send fetches
// a bundle.
func recordOtherKey(t *testing.T, p *party, peer string, dropSession bool) *party {
	t.Helper()
	p.Close()
	ctx := context.Background()
	db, err := store.Open(ctx, filepath.Join(p.home, "hush.db"))
	if err != nil {
		t.Fatal(err)
	}
	other, _ := crypto.GenerateIdentityKeyPair()
	addr := crypto.Address{Name: peer, DeviceID: 1}
	if err := db.StoreIdentity(ctx, addr, crypto.IdentityRecord{Key: other.PublicKey()}); err != nil {
		t.Fatal(err)
	}
	if dropSession {
		if err := db.DeleteSession(ctx, addr); err != nil {
			t.Fatal(err)
		}
	}
	db.Close()
	return openParty(t, p.cfg, p.name)
}

func identityChangedEv(from string) func(Event) bool {
	return func(ev Event) bool {
		e, ok := ev.(*IdentityChangedEvent)
		return ok && e.Account == from
	}
}

// TestIdentityChange: a changed key is detected on receipt and on send,
// raises an event, holds messages and blocks sending until Trust.
func TestIdentityChange(t *testing.T) {
	ctx := context.Background()
	_, alice, bob := talkingPair(t)
	if err := alice.Verify(ctx, "bob"); err != nil {
		t.Fatal(err)
	}

	// Detected on receipt.
	alice = recordOtherKey(t, alice, "bob", false)
	bob.send("alice", "with my real key")
	alice.waitFor("identity change", 1, identityChangedEv("bob"))
	alice.waitConnected()
	if n := alice.count(isText("bob", "with my real key")); n != 0 {
		t.Fatal("a message with a changed key was shown before Trust")
	}
	if _, err := alice.Send(ctx, "bob", "refused"); !errors.Is(err, ErrIdentityChanged) {
		t.Fatalf("send with an unaccepted change: %v", err)
	}
	var ice *IdentityChangedError
	if _, err := alice.Send(ctx, "bob", "refused"); !errors.As(err, &ice) || ice.Accounts[0] != "bob" {
		t.Fatalf("error = %v", err)
	}
	sn, err := alice.SafetyNumber(ctx, "bob")
	if err != nil || !sn.Changed || sn.Verified {
		t.Fatalf("safety number during a change = %+v, %v", sn, err)
	}
	bobsView, _ := bob.SafetyNumber(ctx, "alice")
	if sn.Digits != bobsView.Digits {
		t.Fatal("the pending key's safety number differs from bob's")
	}
	cs, _ := alice.Contacts(ctx)
	if len(cs) != 1 || !cs[0].IdentityChanged || cs[0].Verified {
		t.Fatalf("contact during a change = %+v", cs)
	}
	if err := alice.Trust(ctx, "bob"); err != nil {
		t.Fatal(err)
	}
	alice.waitFor("held message", 1, isText("bob", "with my real key"))
	out := alice.send("bob", "accepted")
	bob.waitFor("after trust", 1, isText("alice", "accepted"))
	alice.waitSent(out)
	if sn, _ := alice.SafetyNumber(ctx, "bob"); sn.Changed || sn.Verified {
		t.Fatalf("after Trust: %+v (verification does not carry over to a new key)", sn)
	}

	// Detected when sending: the bundle's key differs.
	alice = recordOtherKey(t, alice, "bob", true)
	alice.waitConnected()
	blocked := alice.send("bob", "sent after the change")
	wctx, cancel := context.WithTimeout(ctx, 20*time.Second)
	defer cancel()
	if err := alice.WaitSent(wctx, blocked); !errors.Is(err, ErrIdentityChanged) {
		t.Fatalf("wait for a send to a changed identity: %v", err)
	}
	alice.waitFor("identity change on send", 1, identityChangedEv("bob"))
	if err := alice.Trust(ctx, "bob"); err != nil {
		t.Fatal(err)
	}
	alice.waitSent(blocked)
	bob.waitFor("the blocked message", 1, isText("alice", "sent after the change"))
	bob.send("alice", "and back")
	alice.waitFor("reply on the new session", 1, isText("bob", "and back"))
}

// TestWarnOnly: a bot's policy accepts the change, with an event.
func TestWarnOnly(t *testing.T) {
	ctx := context.Background()
	_, alice, bob := talkingPair(t)
	alice.Close()
	alice.cfg.IdentityPolicy = WarnOnly
	alice = recordOtherKey(t, alice, "bob", false)
	bob.send("alice", "straight through")
	alice.waitFor("message", 1, isText("bob", "straight through"))
	ev := alice.waitFor("warning", 1, identityChangedEv("bob"))[0].(*IdentityChangedEvent)
	if !ev.Accepted {
		t.Fatalf("event = %+v, want accepted", ev)
	}
	if _, err := alice.Send(ctx, "bob", "fine"); err != nil {
		t.Fatal(err)
	}
	bob.waitFor("reply", 1, isText("alice", "fine"))
}

// TestUndecryptableRecovers: a message that cannot be decrypted (the
// recipient lost its session) is shown as a placeholder, and the sender
// re-sends it on a fresh session after the retry request.
func TestUndecryptableRecovers(t *testing.T) {
	ctx := context.Background()
	_, alice, bob := talkingPair(t)

	bob.Close()
	db, err := store.Open(ctx, filepath.Join(bob.home, "hush.db"))
	if err != nil {
		t.Fatal(err)
	}
	if err := db.DeleteSession(ctx, crypto.Address{Name: "alice", DeviceID: 1}); err != nil {
		t.Fatal(err)
	}
	db.Close()
	bob = openParty(t, bob.cfg, "bob")

	id := alice.send("bob", "survives a lost session")
	ph := bob.waitFor("placeholder", 1, func(ev Event) bool {
		u, ok := ev.(*UndecryptableEvent)
		return ok && u.Message.Sender == "alice"
	})[0].(*UndecryptableEvent).Message
	if ph.Kind != KindUndecryptable || ph.Conv != Direct("alice") || ph.Error == "" {
		t.Fatalf("placeholder = %+v", ph)
	}
	got := bob.waitFor("re-sent message", 1, isText("alice", "survives a lost session"))[0].(*MessageEvent).Message
	if got.ID != id {
		t.Fatalf("re-sent message has id %s, want %s", got.ID, id)
	}
	// The conversation works both ways afterwards.
	bob.send("alice", "all good")
	alice.waitFor("reply", 1, isText("bob", "all good"))
	alice.send("bob", "indeed")
	bob.waitFor("and again", 1, isText("alice", "indeed"))
	// The placeholders stay visible (one is alice's message; a receipt
	// alice sent for the handshake can be another), and every text is
	// there exactly once.
	var placeholders int
	var got2 []string
	for _, m := range bob.history(Direct("alice")) {
		if m.Kind == KindUndecryptable {
			placeholders++
		} else {
			got2 = append(got2, m.Text)
		}
	}
	want := []string{"hello from alice", "hello from bob", "survives a lost session", "all good", "indeed"}
	if placeholders == 0 || !slices.Equal(got2, want) {
		t.Fatalf("bob's history: %d placeholders, texts %q", placeholders, got2)
	}
}
