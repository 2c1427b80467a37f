package presence

import (
	"context"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/hushchat/hush/server/queue"
)

type clock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *clock) now() time.Time { c.mu.Lock(); defer c.mu.Unlock(); return c.t }
func (c *clock) add(d time.Duration) {
	c.mu.Lock()
	c.t = c.t.Add(d)
	c.mu.Unlock()
}

type events struct {
	mu sync.Mutex
	ev []Event
}

func (e *events) add(ev Event) { e.mu.Lock(); e.ev = append(e.ev, ev); e.mu.Unlock() }
func (e *events) take() []Event {
	e.mu.Lock()
	defer e.mu.Unlock()
	out := e.ev
	e.ev = nil
	return out
}

func newTest(t *testing.T) (*Memory, *clock, *events) {
	c := &clock{t: time.Unix(1_700_000_000, 0)}
	m := NewMemory(Options{OnlineWindow: 10 * time.Second, CheckInterval: time.Hour, Now: c.now})
	t.Cleanup(func() { m.Close() })
	var ev events
	m.Watch(ev.add)
	return m, c, &ev
}

var (
	ctx    = context.Background()
	alice1 = queue.Device{Account: "alice", ID: 1}
	alice2 = queue.Device{Account: "alice", ID: 2}
	bob1   = queue.Device{Account: "bob", ID: 1}
	eve1   = queue.Device{Account: "eve", ID: 1}
)

func TestMutualConsent(t *testing.T) {
	m, _, ev := newTest(t)
	m.Heartbeat(ctx, "bob")
	ev.take()

	// Alice follows Bob, Bob does not follow Alice: Alice sees nothing.
	m.Subscribe(ctx, alice1, []string{"bob"})
	if got, _ := m.View(ctx, "alice", []string{"bob"}); len(got) != 0 {
		t.Fatalf("one-sided subscription revealed %+v", got)
	}
	// A stranger subscribing to Bob learns nothing either.
	m.Subscribe(ctx, eve1, []string{"bob"})
	if got, _ := m.View(ctx, "eve", []string{"bob"}); len(got) != 0 {
		t.Fatalf("stranger saw %+v", got)
	}
	ev.take()

	// Bob follows Alice back (from his device 1): consent is mutual.
	m.Subscribe(ctx, bob1, []string{"alice"})
	if got := ev.take(); !slices.Contains(got, Event{Subject: "bob", Viewer: "alice"}) {
		t.Fatalf("consent change events %+v lack {bob→alice}", got)
	}
	got, _ := m.View(ctx, "alice", []string{"bob", "eve"})
	if len(got) != 1 || got[0].Account != "bob" || !got[0].Online || got[0].LastSeen.IsZero() {
		t.Fatalf("View = %+v, want bob online with last-seen", got)
	}
	if got, _ := m.View(ctx, "eve", []string{"bob"}); len(got) != 0 {
		t.Fatalf("stranger saw %+v after alice's consent", got)
	}

	// Another device of Alice replacing its own (empty) set does not
	// withdraw the account's consent; Alice's device 1 withdrawing does.
	m.Subscribe(ctx, alice2, nil)
	if got, _ := m.View(ctx, "bob", []string{"alice"}); len(got) != 1 {
		t.Fatalf("bob lost alice after alice2's empty subscribe: %+v", got)
	}
	ev.take()
	m.Subscribe(ctx, alice1, nil)
	if got, _ := m.View(ctx, "bob", []string{"alice"}); len(got) != 0 {
		t.Fatalf("consent withdrawn but bob sees %+v", got)
	}
	if got := ev.take(); !slices.Contains(got, Event{Subject: "alice", Viewer: "bob"}) {
		t.Fatalf("withdrawal events %+v lack {alice→bob}", got)
	}
}

func TestOnlineOfflineEvents(t *testing.T) {
	m, c, ev := newTest(t)
	m.Heartbeat(ctx, "bob")
	if got := ev.take(); !slices.Equal(got, []Event{{Subject: "bob"}}) {
		t.Fatalf("coming online: events %+v", got)
	}
	c.add(5 * time.Second)
	m.Heartbeat(ctx, "bob")
	if got := ev.take(); len(got) != 0 {
		t.Fatalf("a heartbeat while online emitted %+v", got)
	}
	seen := c.now()
	c.add(9 * time.Second)
	m.expire()
	if got := ev.take(); len(got) != 0 {
		t.Fatalf("offline too early: %+v", got)
	}
	c.add(time.Second)
	m.expire()
	if got := ev.take(); !slices.Equal(got, []Event{{Subject: "bob"}}) {
		t.Fatalf("going offline: events %+v", got)
	}
	m.Subscribe(ctx, alice1, []string{"bob"})
	m.Subscribe(ctx, bob1, []string{"alice"})
	got, _ := m.View(ctx, "alice", []string{"bob"})
	if len(got) != 1 || got[0].Online || !got[0].LastSeen.Equal(seen) {
		t.Fatalf("View = %+v, want offline, last seen %v", got, seen)
	}
}

func TestHideLastSeen(t *testing.T) {
	m, _, ev := newTest(t)
	m.Subscribe(ctx, alice1, []string{"bob"})
	m.Subscribe(ctx, bob1, []string{"alice"})
	m.Heartbeat(ctx, "alice")
	m.Heartbeat(ctx, "bob")
	ev.take()

	m.SetHidden(ctx, "bob", true)
	if got := ev.take(); !slices.Equal(got, []Event{{Subject: "bob"}, {Viewer: "bob"}}) {
		t.Fatalf("hiding events %+v", got)
	}
	// Alice sees that Bob is online but not his last-seen.
	a, _ := m.View(ctx, "alice", []string{"bob"})
	if len(a) != 1 || !a[0].Online || !a[0].Hidden || !a[0].LastSeen.IsZero() {
		t.Fatalf("alice's view of hiding bob = %+v", a)
	}
	// Bob, who hides, cannot see Alice's last-seen either.
	b, _ := m.View(ctx, "bob", []string{"alice"})
	if len(b) != 1 || !b[0].Online || !b[0].Hidden || !b[0].LastSeen.IsZero() {
		t.Fatalf("hiding bob's view of alice = %+v", b)
	}
	m.SetHidden(ctx, "bob", false)
	b, _ = m.View(ctx, "bob", []string{"alice"})
	if b[0].Hidden || b[0].LastSeen.IsZero() {
		t.Fatalf("after unhiding: %+v", b)
	}
	ev.take()
	m.SetHidden(ctx, "bob", false)
	if got := ev.take(); len(got) != 0 {
		t.Fatalf("unchanged setting emitted %+v", got)
	}
}

// The expiry timer runs on its own.
func TestExpiryTimer(t *testing.T) {
	m := NewMemory(Options{OnlineWindow: 50 * time.Millisecond, CheckInterval: 10 * time.Millisecond})
	defer m.Close()
	gone := make(chan Event, 4)
	m.Watch(func(e Event) { gone <- e })
	m.Heartbeat(ctx, "bob")
	<-gone // online
	select {
	case e := <-gone:
		if e.Subject != "bob" {
			t.Fatalf("event %+v", e)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("no offline event")
	}
}
