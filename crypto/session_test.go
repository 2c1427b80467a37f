package crypto

import (
	"bytes"
	"context"
	"errors"
	"testing"
)

func TestSessionBasic(t *testing.T) {
	ctx := context.Background()
	alice := newDevice(t, "alice", 1, 2)
	bob := newDevice(t, "bob", 3, 2)
	connect(t, alice, bob, 0)

	c, err := alice.Encrypt(ctx, bob.Address(), []byte("hello"))
	if err != nil {
		t.Fatal(err)
	}
	if c.Type != MessageTypePreKey {
		t.Fatalf("first message type %v, want prekey", c.Type)
	}
	pt, err := bob.Decrypt(ctx, alice.Address(), c)
	if err != nil {
		t.Fatal(err)
	}
	if string(pt) != "hello" {
		t.Fatalf("got %q", pt)
	}
	// The one-time prekey is consumed, the other one and the last-resort key stay.
	if _, err := bob.store.LoadPreKey(ctx, bob.pks[0].ID()); !errors.Is(err, ErrNotFound) {
		t.Fatalf("used prekey still stored: %v", err)
	}
	if n := bob.store.PreKeyCount(); n != 2 {
		t.Fatalf("bob has %d prekeys, want 2", n)
	}
	if _, err := bob.Decrypt(ctx, alice.Address(), c); !errors.Is(err, ErrDuplicateMessage) {
		t.Fatalf("duplicate prekey message: got %v, want ErrDuplicateMessage", err)
	}
	r, err := bob.Encrypt(ctx, alice.Address(), []byte("hi"))
	if err != nil {
		t.Fatal(err)
	}
	if r.Type != MessageTypeSignal {
		t.Fatalf("reply type %v, want signal", r.Type)
	}
	pt, err = alice.Decrypt(ctx, bob.Address(), r)
	if err != nil || !bytes.Equal(pt, []byte("hi")) {
		t.Fatalf("reply: %q, %v", pt, err)
	}
	c2, err := alice.Encrypt(ctx, bob.Address(), []byte("after"))
	if err != nil || c2.Type != MessageTypeSignal {
		t.Fatalf("after reply: %v %v", c2.Type, err)
	}
}
