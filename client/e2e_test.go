package client

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"
)

// TestDirect: three accounts; 1-1 online and offline; statuses go sent →
// delivered → read; both sides' histories agree.
func TestDirect(t *testing.T) {
	ts := startServer(t)
	alice := newParty(t, ts, "alice")
	bob := newParty(t, ts, "bob")
	carol := newParty(t, ts, "Carol") // names are case-insensitive
	if a, _ := carol.Account(); a.Name != "carol" || a.DeviceID != 1 {
		t.Fatalf("carol's account = %+v", a)
	}
	alice.waitConnected()
	bob.waitConnected()

	// Online.
	id := alice.send("bob", "hello bob")
	alice.waitSent(id)
	got := bob.waitFor("hello", 1, isText("alice", "hello bob"))[0].(*MessageEvent).Message
	if got.ID != id || got.Outgoing || got.Conv != Direct("alice") || got.Counter != 1 || got.SenderDevice != 1 {
		t.Fatalf("bob got %+v", got)
	}
	alice.waitFor("delivered", 1, receiptFor("bob", StatusDelivered, id))
	if m := alice.message("alice", id); m.Status != StatusDelivered {
		t.Fatalf("alice's status after delivery = %v", m.Status)
	}
	if err := bob.MarkRead(context.Background(), Direct("alice")); err != nil {
		t.Fatal(err)
	}
	alice.waitFor("read", 1, receiptFor("bob", StatusRead, id))
	if m := alice.message("alice", id); m.Status != StatusRead {
		t.Fatalf("alice's status after read = %v", m.Status)
	}
	rs, err := alice.Recipients(context.Background(), id)
	if err != nil || len(rs) != 1 || rs[0].Account != "bob" || rs[0].Status != StatusRead {
		t.Fatalf("recipients = %+v, %v", rs, err)
	}
	reply := bob.send("alice", "hi alice")
	alice.waitFor("reply", 1, isText("bob", "hi alice"))
	bob.waitSent(reply)

	// Offline: carol is closed while alice writes, then comes back.
	carol.Close()
	off1 := alice.send("carol", "while you were out 1")
	off2 := alice.send("carol", "while you were out 2")
	alice.waitSent(off1)
	alice.waitSent(off2)
	if m := alice.message("alice", off2); m.Status != StatusSent {
		t.Fatalf("status to an offline recipient = %v, want sent", m.Status)
	}
	carol = carol.reopen()
	carol.waitFor("offline messages", 2, hasPrefix("alice", "while you were out"))
	if got := texts(carol.history(Direct("alice"))); !slices.Equal(got, []string{"while you were out 1", "while you were out 2"}) {
		t.Fatalf("carol's history = %q", got)
	}
	alice.waitFor("delivered to carol", 1, receiptFor("carol", StatusDelivered, off2))

	// Histories, conversations, contacts, search.
	if got := texts(alice.history(Direct("bob"))); !slices.Equal(got, []string{"hello bob", "hi alice"}) {
		t.Fatalf("alice's history with bob = %q", got)
	}
	if got := texts(bob.history(Direct("alice"))); !slices.Equal(got, []string{"hello bob", "hi alice"}) {
		t.Fatalf("bob's history with alice = %q", got)
	}
	convs, err := alice.Conversations(context.Background())
	if err != nil || len(convs) != 2 || convs[0].ID != Direct("carol") {
		t.Fatalf("alice's conversations = %+v, %v", convs, err)
	}
	cs, err := alice.Contacts(context.Background())
	if err != nil || len(cs) != 2 || cs[0].Name != "bob" || cs[0].Verified || len(cs[0].Devices) != 1 {
		t.Fatalf("alice's contacts = %+v, %v", cs, err)
	}
	res, err := carol.Search(context.Background(), "OUT 2", "", 10)
	if err != nil || len(res) != 1 || res[0].ID != off2 {
		t.Fatalf("search = %+v, %v", res, err)
	}

	// Errors: unknown account, bad name, self.
	nobody, err := alice.Send(context.Background(), "nobody", "hi?")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if err := alice.WaitSent(ctx, nobody); !errors.Is(err, ErrSendFailed) {
		t.Fatalf("send to an unknown account: %v", err)
	}
	if m := alice.message("alice", nobody); m.Status != StatusFailed || m.Error == "" {
		t.Fatalf("failed message = %+v", m)
	}
	if _, err := alice.Send(context.Background(), "Not A Name!", "x"); err == nil {
		t.Fatal("send to an invalid name succeeded")
	}
	if _, err := alice.Send(context.Background(), "alice", "x"); err == nil {
		t.Fatal("send to self succeeded")
	}

	// Safety numbers agree on both sides.
	sa, err := alice.SafetyNumber(context.Background(), "bob")
	if err != nil {
		t.Fatal(err)
	}
	sb, err := bob.SafetyNumber(context.Background(), "alice")
	if err != nil {
		t.Fatal(err)
	}
	if sa.Digits != sb.Digits || len(sa.Digits) != 60 {
		t.Fatalf("safety numbers differ: %s vs %s", sa.Digits, sb.Digits)
	}
	if err := alice.Verify(context.Background(), "bob"); err != nil {
		t.Fatal(err)
	}
	if s, _ := alice.SafetyNumber(context.Background(), "bob"); !s.Verified {
		t.Fatal("not verified after Verify")
	}
}

// TestSecondDevice: a linked second device sees both directions of the
// account's conversations.
func TestSecondDevice(t *testing.T) {
	ts := startServer(t)
	alice := newParty(t, ts, "alice")
	bob := newParty(t, ts, "bob")
	alice.waitConnected()
	bob.waitConnected()
	ctx := context.Background()
	gid, err := alice.CreateGroup(ctx, "us", []string{"bob"})
	if err != nil {
		t.Fatal(err)
	}
	bob.waitFor("group", 1, groupUpdate(gid, "create"))
	first := alice.send("bob", "before the second device")
	bob.waitFor("first", 1, isText("alice", "before the second device"))
	alice.waitSent(first)

	code, err := alice.NewLinkCode(ctx)
	if err != nil {
		t.Fatal(err)
	}
	alice2 := openParty(t, testConfig(t, t.TempDir()+"/alice2"), "alice2")
	if err := alice2.LinkDevice(context.Background(), code); err != nil {
		t.Fatal(err)
	}
	if a, _ := alice2.Account(); a.Name != "alice" || a.DeviceID != 2 {
		t.Fatalf("linked account = %+v", a)
	}
	alice2.waitConnected()
	devs, err := alice.Devices(context.Background())
	if err != nil || len(devs) != 2 || !devs[0].Current {
		t.Fatalf("devices = %+v, %v", devs, err)
	}

	// bob → alice reaches both devices.
	bob.send("alice", "to both of you")
	alice.waitFor("on device 1", 1, isText("bob", "to both of you"))
	alice2.waitFor("on device 2", 1, isText("bob", "to both of you"))

	// alice on device 1 → bob; device 2 sees its own side.
	out := alice.send("bob", "from device one")
	bob.waitFor("from 1", 1, isText("alice", "from device one"))
	synced := alice2.waitFor("sync of device 1's message", 1, isText("alice", "from device one"))[0].(*MessageEvent).Message
	if !synced.Outgoing || synced.ID != out || synced.Conv != Direct("bob") || synced.SenderDevice != 1 {
		t.Fatalf("device 2's copy = %+v", synced)
	}
	// And the other way round.
	out2 := alice2.send("bob", "from device two")
	bob.waitFor("from 2", 1, isText("alice", "from device two"))
	m := alice.waitFor("sync of device 2's message", 1, isText("alice", "from device two"))[0].(*MessageEvent).Message
	if !m.Outgoing || m.ID != out2 || m.SenderDevice != 2 {
		t.Fatalf("device 1's copy = %+v", m)
	}
	// Receipts reach both of alice's devices.
	alice2.waitFor("delivered on device 2", 1, receiptFor("bob", StatusDelivered, out))
	// Reading on one device marks it read on the other.
	if err := alice.MarkRead(context.Background(), Direct("bob")); err != nil {
		t.Fatal(err)
	}
	eventually(t, "read sync on device 2", func() bool {
		for _, m := range alice2.history(Direct("bob")) {
			if !m.Outgoing && !m.Read {
				return false
			}
		}
		return true
	})
	want := []string{"to both of you", "from device one", "from device two"}
	if got := texts(alice2.history(Direct("bob"))); !slices.Equal(got, want) {
		t.Fatalf("device 2's history = %q, want %q", got, want)
	}

	// The new device learned the account's groups from device 1 and
	// takes part in them.
	alice2.waitFor("group sync", 1, groupUpdate(gid, "sync"))
	if _, err := bob.SendGroup(ctx, gid, "to the group"); err != nil {
		t.Fatal(err)
	}
	alice.waitFor("group message on 1", 1, groupText(gid, "bob", "to the group"))
	alice2.waitFor("group message on 2", 1, groupText(gid, "bob", "to the group"))
	if _, err := alice2.SendGroup(ctx, gid, "from the new device"); err != nil {
		t.Fatal(err)
	}
	bob.waitFor("from alice2", 1, groupText(gid, "alice", "from the new device"))
	own := alice.waitFor("own group message", 1, groupText(gid, "alice", "from the new device"))[0].(*MessageEvent)
	if !own.Message.Outgoing || own.Message.SenderDevice != 2 {
		t.Fatalf("device 1's copy = %+v", own.Message)
	}
}

// Test1000EachWay: 1,000 messages each way at once arrive complete, once,
// and in order.
func Test1000EachWay(t *testing.T) {
	const n = 1000
	_, alice, bob := talkingPair(t)
	start := time.Now()
	done := make(chan error, 2)
	go func() {
		for i := range n {
			if _, err := alice.Send(context.Background(), "bob", fmt.Sprintf("a%04d", i)); err != nil {
				done <- err
				return
			}
		}
		done <- nil
	}()
	go func() {
		for i := range n {
			if _, err := bob.Send(context.Background(), "alice", fmt.Sprintf("b%04d", i)); err != nil {
				done <- err
				return
			}
		}
		done <- nil
	}()
	for range 2 {
		if err := <-done; err != nil {
			t.Fatal(err)
		}
	}
	bob.waitFor("alice's messages", n, hasPrefix("alice", "a"))
	alice.waitFor("bob's messages", n, hasPrefix("bob", "b"))
	t.Logf("%d messages each way in %v", n, time.Since(start))
	check := func(p *party, from, prefix string) {
		var got []string
		var last uint64
		for _, m := range p.history(Direct(from)) {
			if m.Sender != from || !strings.HasPrefix(m.Text, prefix) {
				continue
			}
			if m.Counter <= last {
				t.Fatalf("%s: counter %d after %d", p.name, m.Counter, last)
			}
			last = m.Counter
			got = append(got, m.Text)
		}
		if len(got) != n {
			t.Fatalf("%s has %d messages from %s, want %d", p.name, len(got), from, n)
		}
		for i, s := range got {
			if s != fmt.Sprintf("%s%04d", prefix, i) {
				t.Fatalf("%s: message %d is %q", p.name, i, s)
			}
		}
		if c := p.count(hasPrefix(from, prefix)); c != n {
			t.Fatalf("%s got %d message events from %s, want %d", p.name, c, from, n)
		}
	}
	check(bob, "alice", "a")
	check(alice, "bob", "b")
}

// TestReceiveBatchFallback: an envelope whose processing fails makes its
// batch fail; the batch is then processed one envelope at a time, the
// others are stored and acknowledged, and the bad one comes again (after
// the reconnect its failure causes) until it goes through. Nothing is lost
// or shown twice.
func TestReceiveBatchFallback(t *testing.T) {
	const n = 8
	_, alice, bob := talkingPair(t)
	bob.Close()
	want := make([]string, n)
	var last MessageID
	for i := range n {
		want[i] = fmt.Sprintf("batch %d", i)
		last = alice.send("bob", want[i])
	}
	alice.waitSent(last)

	var mu sync.Mutex
	var bad uint64
	var failures, alone int
	cfg := bob.cfg
	cfg.testHookInBatch = func(serverID uint64, i, size int) bool {
		mu.Lock()
		defer mu.Unlock()
		if bad == 0 && size > 1 && i == 2 {
			bad = serverID
		}
		if serverID != bad || failures >= 3 {
			return false
		}
		failures++
		if size == 1 {
			alone++
		}
		return true
	}
	reopened := openParty(t, cfg, "bob")
	reopened.waitFor("the batch", n, hasPrefix("alice", "batch "))
	mu.Lock()
	if bad == 0 || alone == 0 {
		t.Fatalf("no batch with a failing envelope was processed one by one (bad %d, alone %d)", bad, alone)
	}
	mu.Unlock()
	var got []string
	for _, m := range reopened.history(Direct("alice")) {
		if strings.HasPrefix(m.Text, "batch ") {
			got = append(got, m.Text)
		}
	}
	if !slices.Equal(got, want) {
		t.Fatalf("bob's history:\n got %q\nwant %q", got, want)
	}
	if c := reopened.count(hasPrefix("alice", "batch ")); c != n {
		t.Fatalf("%d message events for %d messages", c, n)
	}
}
