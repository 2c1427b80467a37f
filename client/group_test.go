package client

import (
	"context"
	"errors"
	"slices"
	"testing"
	"time"

	"github.com/hushchat/hush/client/store"
	"github.com/hushchat/hush/crypto"
)

func groupText(group GroupID, from, text string) func(Event) bool {
	return func(ev Event) bool {
		m, ok := ev.(*MessageEvent)
		return ok && m.Message.Sender == from && m.Message.Text == text && m.Message.Group != nil && *m.Message.Group == group
	}
}

func groupUpdate(group GroupID, action string) func(Event) bool {
	return func(ev Event) bool {
		g, ok := ev.(*GroupUpdateEvent)
		return ok && g.Group.ID == group && g.Action == action
	}
}

// TestGroupRemove: a group of three talks; one member is removed and can
// read nothing sent afterwards.
func TestGroupRemove(t *testing.T) {
	ctx := context.Background()
	ts := startServer(t)
	alice := newParty(t, ts, "alice")
	bob := newParty(t, ts, "bob")
	carol := newParty(t, ts, "carol")
	for _, p := range []*party{alice, bob, carol} {
		p.waitConnected()
	}
	if _, err := alice.CreateGroup(ctx, "trio", []string{"bob", "nobody"}); !errors.Is(err, ErrUnknownAccount) {
		t.Fatalf("group with an unknown account: %v", err)
	}
	gid, err := alice.CreateGroup(ctx, "trio", []string{"bob", "carol"})
	if err != nil {
		t.Fatal(err)
	}
	bob.waitFor("create", 1, groupUpdate(gid, "create"))
	carol.waitFor("create", 1, groupUpdate(gid, "create"))
	g, err := carol.Group(ctx, gid)
	if err != nil || g.Name != "trio" || len(g.Members) != 3 || !g.Active || g.Revision != 1 {
		t.Fatalf("carol's view of the group = %+v, %v", g, err)
	}
	if found, err := bob.FindGroup(ctx, "trio"); err != nil || found != gid {
		t.Fatalf("find group = %v, %v", found, err)
	}

	// Everyone talks (one after the other: see handshake).
	m1, err := alice.SendGroup(ctx, gid, "hi all")
	if err != nil {
		t.Fatal(err)
	}
	bob.waitFor("alice's", 1, groupText(gid, "alice", "hi all"))
	carol.waitFor("alice's", 1, groupText(gid, "alice", "hi all"))
	for _, p := range []*party{bob, carol} {
		if _, err := p.SendGroup(ctx, gid, "hi from "+p.name); err != nil {
			t.Fatal(err)
		}
		for _, q := range []*party{alice, bob, carol} {
			if q != p {
				q.waitFor(p.name+"'s", 1, groupText(gid, p.name, "hi from "+p.name))
			}
		}
	}
	// Status per member: delivered by both, then read by one.
	alice.waitFor("bob delivered", 1, receiptFor("bob", StatusDelivered, m1))
	alice.waitFor("carol delivered", 1, receiptFor("carol", StatusDelivered, m1))
	if m := alice.message("alice", m1); m.Status != StatusDelivered {
		t.Fatalf("group message status = %v, want delivered", m.Status)
	}
	if err := bob.MarkRead(ctx, GroupConv(gid)); err != nil {
		t.Fatal(err)
	}
	alice.waitFor("bob read", 1, receiptFor("bob", StatusRead, m1))
	rs, _ := alice.Recipients(ctx, m1)
	if len(rs) != 2 || rs[0].Account != "bob" || rs[0].Status != StatusRead || rs[1].Status != StatusDelivered {
		t.Fatalf("per-member status = %+v", rs)
	}
	if m := alice.message("alice", m1); m.Status != StatusDelivered {
		t.Fatalf("status with one reader = %v, want delivered", m.Status)
	}

	// Only admins remove; bob is not one.
	if err := bob.RemoveMembers(ctx, gid, "carol"); err == nil {
		t.Fatal("a non-admin removed a member")
	}
	if err := alice.RemoveMembers(ctx, gid, "bob"); err != nil {
		t.Fatal(err)
	}
	carol.waitFor("removal", 1, groupUpdate(gid, "remove"))
	bob.waitFor("own removal", 1, groupUpdate(gid, "remove"))
	if g, _ := bob.Group(ctx, gid); g.Active || g.HasMember("bob") {
		t.Fatalf("bob still thinks he is in: %+v", g)
	}
	if _, err := bob.SendGroup(ctx, gid, "let me in"); !errors.Is(err, ErrNotMember) {
		t.Fatalf("removed member sending: %v", err)
	}

	// After the removal: alice and carol talk, bob sees nothing.
	if _, err := alice.SendGroup(ctx, gid, "secret from alice"); err != nil {
		t.Fatal(err)
	}
	carol.waitFor("alice's secret", 1, groupText(gid, "alice", "secret from alice"))
	if _, err := carol.SendGroup(ctx, gid, "secret from carol"); err != nil {
		t.Fatal(err)
	}
	alice.waitFor("carol's secret", 1, groupText(gid, "carol", "secret from carol"))
	// Give bob every chance to receive something.
	bob.waitConnected()
	time.Sleep(300 * time.Millisecond)
	for _, ev := range bob.log.snapshot() {
		switch e := ev.(type) {
		case *MessageEvent:
			if e.Message.Text == "secret from alice" || e.Message.Text == "secret from carol" {
				t.Fatalf("the removed member read %q", e.Message.Text)
			}
		case *UndecryptableEvent:
			t.Fatalf("the removed member was sent something after all: %+v", e.Message)
		}
	}
	for _, m := range bob.history(GroupConv(gid)) {
		if m.Text == "secret from alice" || m.Text == "secret from carol" {
			t.Fatalf("bob's history has %q", m.Text)
		}
	}
	// Carol rotated her sender key: the chain bob was given is gone from
	// her device, and bob's keys are gone from hers.
	cdb := carol.db
	if _, err := cdb.LoadSenderKey(ctx, string(gid[:]), crypto.Address{Name: "bob", DeviceID: 1}); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("carol kept bob's sender key: %v", err)
	}
	holders, _ := cdb.SenderKeyHolders(ctx, gid[:])
	if slices.ContainsFunc(holders, func(a crypto.Address) bool { return a.Name == "bob" }) {
		t.Fatalf("bob holds carol's new sender key: %v", holders)
	}

	// Rename and leave.
	if err := carol.RenameGroup(ctx, gid, "duo"); err != nil {
		t.Fatal(err)
	}
	alice.waitFor("rename", 1, groupUpdate(gid, "rename"))
	if g, _ := alice.Group(ctx, gid); g.Name != "duo" || g.Revision != 3 {
		t.Fatalf("after rename: %+v", g)
	}
	if err := carol.LeaveGroup(ctx, gid); err != nil {
		t.Fatal(err)
	}
	alice.waitFor("leave", 1, groupUpdate(gid, "leave"))
	if g, _ := alice.Group(ctx, gid); len(g.Members) != 1 {
		t.Fatalf("after carol left: %+v", g)
	}
	var lines []string
	for _, m := range alice.history(GroupConv(gid)) {
		if m.Kind == KindGroupUpdate {
			lines = append(lines, m.Text)
		}
	}
	want := []string{`you created the group "trio"`, "you removed bob", `carol renamed the group to "duo"`, "carol left"}
	if !slices.Equal(lines, want) {
		t.Fatalf("history lines = %q, want %q", lines, want)
	}
}
