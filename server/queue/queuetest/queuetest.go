// Package queuetest is the conformance suite every queue.Store backend runs,
// so that the embedded (SQLite) and the distributed (Cassandra) store keep
// exactly the same promises: order, ack-only deletion, per-device isolation,
// idempotency, atomic multi-recipient puts, shared payloads stored once,
// expiry, caps, concurrency and durability across a restart.
//
// A backend runs it from its own tests:
//
//	func TestStore(t *testing.T) {
//		t.Run("sqlite", func(t *testing.T) { queuetest.Run(t, openSQLite) })
//	}
package queuetest

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"sort"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hushchat/hush/server/queue"
)

// Opener opens the backend under test with opts (whose Clock the suite
// controls). The first call for a given t must return a store on fresh,
// empty storage; a later call with the same t, after the previous store was
// closed, must open the same storage again — that is how the suite checks
// durability across a restart. The suite closes every store it opens.
type Opener func(t *testing.T, opts queue.Options) queue.Store

// Clock is a settable clock, safe for concurrent use.
type Clock struct {
	mu  sync.Mutex
	now time.Time
}

// NewClock returns a clock reading start.
func NewClock(start time.Time) *Clock { return &Clock{now: start} }

// Now returns the clock's time.
func (c *Clock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

// Advance moves the clock forward by d.
func (c *Clock) Advance(d time.Duration) {
	c.mu.Lock()
	c.now = c.now.Add(d)
	c.mu.Unlock()
}

// Epoch is where the suite's clocks start: a fixed, millisecond-aligned time.
var epoch = time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)

// TTL is the expiry the suite's puts get unless a test sets one.
const ttl = 30 * 24 * time.Hour

// env is one subtest's store, clock and id source.
type env struct {
	t     *testing.T
	open  Opener
	opts  queue.Options
	clock *Clock
	s     queue.Store
	ctx   context.Context
	next  atomic.Uint64
}

func newEnv(t *testing.T, open Opener, maxDepth int) *env {
	t.Helper()
	e := &env{t: t, open: open, clock: NewClock(epoch), ctx: context.Background()}
	e.opts = queue.Options{MaxDepth: maxDepth, Clock: e.clock.Now}
	// Snowflake-sized ids, increasing.
	e.next.Store(1 << 50)
	e.reopen()
	return e
}

// reopen opens the store (again, after a close) on the same storage.
func (e *env) reopen() {
	e.t.Helper()
	s := e.open(e.t, e.opts)
	if s == nil {
		e.t.Fatal("opener returned a nil store")
	}
	e.s = s
	e.t.Cleanup(func() { _ = s.Close() })
}

func (e *env) id() uint64 { return e.next.Add(1000) }

func dev(account string, id uint32) queue.Device { return queue.Device{Account: account, ID: id} }

func clientID() []byte {
	b := make([]byte, queue.ClientIDSize)
	rand.Read(b)
	return b
}

// put1 builds a 1-1 put of payload from alice.1 to each device, each with
// the given payload (distinct per device: payload + ":" + device).
func (e *env) put1(payload string, to ...queue.Device) queue.Put {
	now := e.clock.Now()
	p := queue.Put{
		ServerID:     e.id(),
		Sender:       "alice",
		SenderDevice: 1,
		ClientID:     clientID(),
		ServerTime:   now,
		ExpiresAt:    now.Add(ttl),
	}
	for _, d := range to {
		p.Recipients = append(p.Recipients, queue.Recipient{Device: d, Type: 2, Payload: []byte(payload + ":" + d.String())})
	}
	return p
}

// putShared builds a group put of one shared payload to every device.
func (e *env) putShared(shared []byte, to ...queue.Device) queue.Put {
	now := e.clock.Now()
	p := queue.Put{
		ServerID:     e.id(),
		Sender:       "alice",
		SenderDevice: 1,
		ClientID:     clientID(),
		ServerTime:   now,
		ExpiresAt:    now.Add(ttl),
		Shared:       shared,
		SharedType:   3,
	}
	for _, d := range to {
		p.Recipients = append(p.Recipients, queue.Recipient{Device: d})
	}
	return p
}

func (e *env) mustPut(p queue.Put) queue.PutResult {
	e.t.Helper()
	r, err := e.s.Put(e.ctx, p)
	if err != nil {
		e.t.Fatalf("Put %d: %v", p.ServerID, err)
	}
	if r.Duplicate {
		e.t.Fatalf("Put %d: unexpectedly a duplicate of %d", p.ServerID, r.ServerID)
	}
	if r.ServerID != p.ServerID {
		e.t.Fatalf("Put %d: result names server id %d", p.ServerID, r.ServerID)
	}
	return r
}

func (e *env) fetchAll(d queue.Device) []queue.Message {
	e.t.Helper()
	ms, err := e.s.Fetch(e.ctx, d, 0, queue.MaxFetch)
	if err != nil {
		e.t.Fatalf("Fetch %s: %v", d, err)
	}
	return ms
}

func (e *env) ids(d queue.Device) []uint64 {
	e.t.Helper()
	var out []uint64
	for _, m := range e.fetchAll(d) {
		out = append(out, m.ServerID)
	}
	return out
}

func (e *env) depth(d queue.Device) int {
	e.t.Helper()
	n, err := e.s.Depth(e.ctx, d)
	if err != nil {
		e.t.Fatalf("Depth %s: %v", d, err)
	}
	return n
}

func (e *env) ack(d queue.Device, ids ...uint64) int {
	e.t.Helper()
	n, err := e.s.Ack(e.ctx, d, ids)
	if err != nil {
		e.t.Fatalf("Ack %s %v: %v", d, ids, err)
	}
	return n
}

func (e *env) payloads() int {
	e.t.Helper()
	pc, ok := e.s.(queue.PayloadCounter)
	if !ok {
		e.t.Fatalf("%T does not implement queue.PayloadCounter", e.s)
	}
	n, err := pc.Payloads(e.ctx)
	if err != nil {
		e.t.Fatalf("Payloads: %v", err)
	}
	return n
}

func (e *env) wantIDs(d queue.Device, want ...uint64) {
	e.t.Helper()
	got := e.ids(d)
	if fmt.Sprint(got) != fmt.Sprint(want) && !(len(got) == 0 && len(want) == 0) {
		e.t.Fatalf("queue of %s holds %v, want %v", d, got, want)
	}
	if n := e.depth(d); n != len(want) {
		e.t.Fatalf("Depth(%s) = %d, want %d", d, n, len(want))
	}
}

// Run runs the conformance suite against the backend open returns.
func Run(t *testing.T, open Opener) {
	tests := []struct {
		name string
		fn   func(t *testing.T, open Opener)
	}{
		{"PutFetchOrder", testPutFetchOrder},
		{"FetchPagination", testFetchPagination},
		{"AckDeletesOnlyNamedIDs", testAckDeletesOnlyNamed},
		{"DeviceCannotAckAnothersMessage", testDeviceIsolation},
		{"IdempotentRetryReturnsOriginal", testIdempotentRetry},
		{"ConcurrentRetriesStoreOnce", testConcurrentRetries},
		{"MultiRecipientAtomicOnQueueFull", testAtomicMultiRecipient},
		{"SharedPayloadStoredOnce1024", testShared1024},
		{"SharedPayloadDeletedAfterLastAck", testSharedDeletedAfterLastAck},
		{"TTLExpiryHidesAndSweepRemoves", testTTL},
		{"IdempotencyRecordsExpire", testIdempotencyExpires},
		{"QueueCapError", testQueueCap},
		{"ConcurrentPuts", testConcurrentPuts},
		{"ConcurrentPutsAndAcks", testConcurrentPutsAndAcks},
		{"ReopenKeepsEverything", testReopen},
		{"CloseThenUse", testCloseThenUse},
		{"InvalidPutsRefused", testInvalid},
		{"Oldest", testOldest},
		{"CancelledPutRetryIsSafe", testCancelled},
		{"ServerTimeMillisecondPrecision", testMillis},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) { tc.fn(t, open) })
	}
}

func testPutFetchOrder(t *testing.T, open Opener) {
	e := newEnv(t, open, 0)
	bob := dev("bob", 1)
	// Put out of id order: the queue is ordered by ServerID, not arrival.
	ids := []uint64{e.id(), e.id(), e.id()}
	for _, i := range []int{2, 0, 1} {
		p := e.put1(fmt.Sprintf("m%d", i), bob)
		p.ServerID = ids[i]
		p.SenderDevice = uint32(i + 1)
		p.Recipients[0].Type = int32(i + 1)
		e.mustPut(p)
		e.clock.Advance(time.Second)
	}
	ms := e.fetchAll(bob)
	if len(ms) != 3 {
		t.Fatalf("fetched %d messages, want 3", len(ms))
	}
	for i, m := range ms {
		if m.ServerID != ids[i] {
			t.Fatalf("message %d has id %d, want %d", i, m.ServerID, ids[i])
		}
		if m.Sender != "alice" || m.SenderDevice != uint32(i+1) || m.Type != int32(i+1) {
			t.Fatalf("message %d: sender %s.%d type %d, want alice.%d type %d", i, m.Sender, m.SenderDevice, m.Type, i+1, i+1)
		}
		if want := fmt.Sprintf("m%d:bob.1", i); string(m.Payload) != want {
			t.Fatalf("message %d payload %q, want %q", i, m.Payload, want)
		}
	}
	// Arrival order was m2, m0, m1, one second apart.
	if !ms[2].ServerTime.Equal(epoch) || !ms[0].ServerTime.Equal(epoch.Add(time.Second)) || !ms[1].ServerTime.Equal(epoch.Add(2*time.Second)) {
		t.Fatalf("server times %v %v %v do not match the puts", ms[0].ServerTime, ms[1].ServerTime, ms[2].ServerTime)
	}
	// Fetching does not consume: messages stay until acked.
	e.wantIDs(bob, ids...)
	// Other devices see nothing.
	e.wantIDs(dev("bob", 2))
	e.wantIDs(dev("carol", 1))
}

func testFetchPagination(t *testing.T, open Opener) {
	e := newEnv(t, open, 0)
	bob := dev("bob", 1)
	var ids []uint64
	for i := 0; i < 10; i++ {
		ids = append(ids, e.mustPut(e.put1("x", bob)).ServerID)
	}
	var got []uint64
	after := uint64(0)
	pages := 0
	for {
		ms, err := e.s.Fetch(e.ctx, bob, after, 3)
		if err != nil {
			t.Fatal(err)
		}
		if len(ms) > 3 {
			t.Fatalf("page of %d messages exceeds the limit 3", len(ms))
		}
		if len(ms) == 0 {
			break
		}
		pages++
		for _, m := range ms {
			got = append(got, m.ServerID)
		}
		after = ms[len(ms)-1].ServerID
	}
	if fmt.Sprint(got) != fmt.Sprint(ids) || pages != 4 {
		t.Fatalf("paged %v in %d pages, want %v in 4", got, pages, ids)
	}
	// afterServerID is exclusive and need not be a stored id.
	ms, err := e.s.Fetch(e.ctx, bob, ids[4]+1, 100)
	if err != nil || len(ms) != 5 || ms[0].ServerID != ids[5] {
		t.Fatalf("Fetch after %d = %d messages (%v), want 5 from %d", ids[4]+1, len(ms), err, ids[5])
	}
	for _, limit := range []int{0, -1, queue.MaxFetch + 1} {
		if _, err := e.s.Fetch(e.ctx, bob, 0, limit); !errors.Is(err, queue.ErrInvalid) {
			t.Errorf("Fetch with limit %d: err %v, want ErrInvalid", limit, err)
		}
	}
}

func testAckDeletesOnlyNamed(t *testing.T, open Opener) {
	e := newEnv(t, open, 0)
	bob := dev("bob", 1)
	var ids []uint64
	for i := 0; i < 5; i++ {
		ids = append(ids, e.mustPut(e.put1("x", bob)).ServerID)
	}
	if n := e.ack(bob, ids[1], ids[3]); n != 2 {
		t.Fatalf("Ack of 2 stored ids deleted %d", n)
	}
	e.wantIDs(bob, ids[0], ids[2], ids[4])
	// Acking again, or acking ids never stored, is not an error.
	if n := e.ack(bob, ids[1], 12345, ids[1]); n != 0 {
		t.Fatalf("Ack of gone ids deleted %d", n)
	}
	// Duplicates inside one Ack count once.
	if n := e.ack(bob, ids[0], ids[0]); n != 1 {
		t.Fatalf("Ack of one id twice deleted %d, want 1", n)
	}
	if n := e.ack(bob); n != 0 {
		t.Fatalf("empty Ack deleted %d", n)
	}
	e.wantIDs(bob, ids[2], ids[4])
	if n := e.ack(bob, ids[2], ids[4]); n != 2 {
		t.Fatalf("Ack deleted %d, want 2", n)
	}
	e.wantIDs(bob)
}

func testDeviceIsolation(t *testing.T, open Opener) {
	e := newEnv(t, open, 0)
	b1, b2, mallory := dev("bob", 1), dev("bob", 2), dev("mallory", 1)
	both := e.mustPut(e.put1("both", b1, b2)).ServerID
	only2 := e.mustPut(e.put1("only2", b2)).ServerID
	group := e.mustPut(e.putShared([]byte("group"), b1, b2)).ServerID

	// bob.1 names bob.2's message: nothing happens.
	if n := e.ack(b1, only2); n != 0 {
		t.Fatalf("bob.1 deleted %d of bob.2's messages", n)
	}
	// Another account names everything: nothing happens.
	if n := e.ack(mallory, both, only2, group); n != 0 {
		t.Fatalf("mallory deleted %d of bob's messages", n)
	}
	e.wantIDs(b2, both, only2, group)
	// bob.1 acks the ids it shares with bob.2: only its own copies go.
	if n := e.ack(b1, both, group, only2); n != 2 {
		t.Fatalf("bob.1 acked %d, want 2", n)
	}
	e.wantIDs(b1)
	e.wantIDs(b2, both, only2, group)
	ms := e.fetchAll(b2)
	if string(ms[0].Payload) != "both:bob.2" || string(ms[2].Payload) != "group" {
		t.Fatalf("bob.2's payloads changed: %q, %q", ms[0].Payload, ms[2].Payload)
	}
	if n := e.payloads(); n != 1 {
		t.Fatalf("shared payload count %d after one of two references acked, want 1", n)
	}
}

func testIdempotentRetry(t *testing.T, open Opener) {
	e := newEnv(t, open, 0)
	bob := dev("bob", 1)
	p := e.put1("hello", bob)
	orig := e.mustPut(p)

	e.clock.Advance(time.Minute)
	retry := p
	retry.ServerID = e.id() // the relay assigns a fresh id to every Send
	retry.ServerTime = e.clock.Now()
	retry.Recipients = []queue.Recipient{{Device: bob, Type: 2, Payload: []byte("changed")}}
	r, err := e.s.Put(e.ctx, retry)
	if err != nil {
		t.Fatal(err)
	}
	if !r.Duplicate || r.ServerID != p.ServerID || !r.ServerTime.Equal(orig.ServerTime) || !r.ServerTime.Equal(epoch) {
		t.Fatalf("retry result %+v, want duplicate of %d at %v", r, p.ServerID, epoch)
	}
	e.wantIDs(bob, p.ServerID)
	if got := e.fetchAll(bob)[0].Payload; string(got) != "hello:bob.1" {
		t.Fatalf("stored payload %q after retry, want the original", got)
	}

	// The key is (sender, sender device, client id): the same client id from
	// another device or account is a different message.
	other := p
	other.ServerID, other.SenderDevice = e.id(), 2
	e.mustPut(other)
	other2 := p
	other2.ServerID, other2.Sender = e.id(), "carol"
	e.mustPut(other2)
	e.wantIDs(bob, p.ServerID, other.ServerID, other2.ServerID)

	// Still a duplicate after the original was acked: the record outlives
	// the message.
	e.ack(bob, p.ServerID)
	retry.ServerID = e.id()
	r, err = e.s.Put(e.ctx, retry)
	if err != nil || !r.Duplicate || r.ServerID != p.ServerID {
		t.Fatalf("retry after ack: %+v, %v; want duplicate of %d", r, err, p.ServerID)
	}
	e.wantIDs(bob, other.ServerID, other2.ServerID)
}

func testConcurrentRetries(t *testing.T, open Opener) {
	e := newEnv(t, open, 0)
	bob := dev("bob", 1)
	p := e.put1("once", bob, dev("bob", 2))
	const n = 16
	results := make([]queue.PutResult, n)
	ids := make([]uint64, n)
	var wg sync.WaitGroup
	for i := 0; i < n; i++ {
		ids[i] = e.id()
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			q := p
			q.ServerID = ids[i]
			r, err := e.s.Put(e.ctx, q)
			if err != nil {
				t.Errorf("Put %d: %v", i, err)
			}
			results[i] = r
		}(i)
	}
	wg.Wait()
	winners := 0
	var winner uint64
	for i, r := range results {
		if !r.Duplicate {
			winners++
			winner = ids[i]
			if r.ServerID != ids[i] {
				t.Fatalf("accepted put %d reports id %d", ids[i], r.ServerID)
			}
		}
	}
	if winners != 1 {
		t.Fatalf("%d of %d concurrent retries were stored, want exactly 1", winners, n)
	}
	for _, r := range results {
		if r.ServerID != winner {
			t.Fatalf("a retry names %d, the stored one is %d", r.ServerID, winner)
		}
	}
	e.wantIDs(bob, winner)
	e.wantIDs(dev("bob", 2), winner)
}

func testAtomicMultiRecipient(t *testing.T, open Opener) {
	e := newEnv(t, open, 3)
	b1, b2, carol, dave := dev("bob", 1), dev("bob", 2), dev("carol", 1), dev("dave", 7)
	var carolIDs []uint64
	for i := 0; i < 3; i++ {
		carolIDs = append(carolIDs, e.mustPut(e.put1("fill", carol)).ServerID)
	}
	before := e.payloads()

	for _, p := range []queue.Put{
		e.put1("1-1", b1, b2, carol, dave),
		e.putShared([]byte("group"), b1, b2, carol, dave),
	} {
		_, err := e.s.Put(e.ctx, p)
		var qf *queue.QueueFullError
		if !errors.As(err, &qf) {
			t.Fatalf("Put to a full queue: err %v, want *QueueFullError", err)
		}
		if qf.Device != carol || qf.Limit != 3 {
			t.Fatalf("QueueFullError names %s limit %d, want carol.1 limit 3", qf.Device, qf.Limit)
		}
		if queue.IsRetryable(err) {
			t.Fatalf("a full queue is reported as a storage failure: %v", err)
		}
		// Nothing stored for anyone, including the recipients before carol.
		e.wantIDs(b1)
		e.wantIDs(b2)
		e.wantIDs(dave)
		e.wantIDs(carol, carolIDs...)
		if n := e.payloads(); n != before {
			t.Fatalf("refused group put left %d shared payloads, had %d", n, before)
		}
		// A refused put leaves no idempotency record: its retry, once
		// carol has room, is stored.
		e.ack(carol, carolIDs[0])
		r := e.mustPut(p)
		e.wantIDs(b1, r.ServerID)
		e.wantIDs(dave, r.ServerID)
		e.ack(b1, r.ServerID)
		e.ack(b2, r.ServerID)
		e.ack(dave, r.ServerID)
		e.ack(carol, r.ServerID)
		carolIDs = append(carolIDs[1:], e.mustPut(e.put1("fill", carol)).ServerID)
	}
}

func testShared1024(t *testing.T, open Opener) {
	e := newEnv(t, open, 0)
	shared := bytes.Repeat([]byte("S"), 4096)
	var to []queue.Device
	for i := 0; i < 1024; i++ {
		to = append(to, dev(fmt.Sprintf("m%04d", i), uint32(1+i%3)))
	}
	p := e.putShared(shared, to...)
	// Three members also get a per-device payload (e.g. a resent message):
	// they must get theirs, not the shared one.
	for _, i := range []int{0, 511, 1023} {
		p.Recipients[i].Payload = []byte("own")
		p.Recipients[i].Type = 1
	}
	e.mustPut(p)
	if n := e.payloads(); n != 1 {
		t.Fatalf("a 1,024-recipient group put stored %d shared payloads, want 1", n)
	}
	// Every member fetches and acks, eight at a time, except member 1022,
	// the last one holding a reference to the shared payload.
	var wg sync.WaitGroup
	work := make(chan int)
	for w := 0; w < 8; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range work {
				d := to[i]
				ms, err := e.s.Fetch(e.ctx, d, 0, 10)
				if err != nil || len(ms) != 1 || ms[0].ServerID != p.ServerID {
					t.Errorf("member %s fetched %d messages (%v)", d, len(ms), err)
					continue
				}
				own := i == 0 || i == 511 || i == 1023
				switch {
				case own && (string(ms[0].Payload) != "own" || ms[0].Type != 1):
					t.Errorf("member %s got %d bytes type %d, want its own payload type 1", d, len(ms[0].Payload), ms[0].Type)
				case !own && (!bytes.Equal(ms[0].Payload, shared) || ms[0].Type != 3):
					t.Errorf("member %s got %d bytes type %d, want the shared payload type 3", d, len(ms[0].Payload), ms[0].Type)
				}
				if i == 1022 {
					continue
				}
				if n, err := e.s.Ack(e.ctx, d, []uint64{p.ServerID}); err != nil || n != 1 {
					t.Errorf("member %s ack deleted %d (%v)", d, n, err)
				}
			}
		}()
	}
	for i := range to {
		work <- i
	}
	close(work)
	wg.Wait()
	if t.Failed() {
		return
	}
	if n := e.payloads(); n != 1 {
		t.Fatalf("%d shared payloads while one reference is left, want 1", n)
	}
	if n := e.ack(to[1022], p.ServerID); n != 1 {
		t.Fatalf("last member's ack deleted %d", n)
	}
	if n := e.payloads(); n != 0 {
		t.Fatalf("%d shared payloads left after the last reference was acked", n)
	}
	for _, d := range to[1020:] {
		e.wantIDs(d)
	}
}

func testSharedDeletedAfterLastAck(t *testing.T, open Opener) {
	e := newEnv(t, open, 0)
	a, b, c := dev("bob", 1), dev("carol", 1), dev("dave", 1)
	p1 := e.mustPut(e.putShared([]byte("one"), a, b, c)).ServerID
	p2 := e.mustPut(e.putShared([]byte("two"), a, b)).ServerID
	if n := e.payloads(); n != 2 {
		t.Fatalf("%d shared payloads, want 2", n)
	}
	e.ack(a, p1, p2)
	e.ack(b, p1)
	if n := e.payloads(); n != 2 {
		t.Fatalf("%d shared payloads while both still have a reference, want 2", n)
	}
	if ms := e.fetchAll(c); len(ms) != 1 || string(ms[0].Payload) != "one" {
		t.Fatalf("the last holder of a shared payload fetched %v", ms)
	}
	e.ack(c, p1)
	if n := e.payloads(); n != 1 {
		t.Fatalf("%d shared payloads after p1's last ack, want 1", n)
	}
	e.ack(b, p2)
	if n := e.payloads(); n != 0 {
		t.Fatalf("%d shared payloads after every ack, want 0", n)
	}
}

func testTTL(t *testing.T, open Opener) {
	e := newEnv(t, open, 0)
	bob, carol := dev("bob", 1), dev("carol", 1)
	short := e.put1("short", bob)
	short.ExpiresAt = e.clock.Now().Add(time.Hour)
	e.mustPut(short)
	group := e.putShared([]byte("short group"), bob, carol)
	group.ExpiresAt = e.clock.Now().Add(time.Hour)
	e.mustPut(group)
	long := e.mustPut(e.put1("long", bob)).ServerID

	e.clock.Advance(time.Hour - time.Millisecond)
	e.wantIDs(bob, short.ServerID, group.ServerID, long)
	if n, err := e.s.Sweep(e.ctx, e.clock.Now()); err != nil || n != 0 {
		t.Fatalf("Sweep before expiry removed %d (%v)", n, err)
	}
	e.wantIDs(bob, short.ServerID, group.ServerID, long)

	// Expired: hidden from Fetch at once.
	e.clock.Advance(time.Millisecond)
	if got := e.ids(bob); fmt.Sprint(got) != fmt.Sprint([]uint64{long}) {
		t.Fatalf("after expiry bob fetches %v, want only %d", got, long)
	}
	if got := e.ids(carol); len(got) != 0 {
		t.Fatalf("after expiry carol fetches %v, want nothing", got)
	}
	// Sweep removes them, their shared payload, and nothing else. (A
	// backend with native expiry may have removed some already, so the
	// count is at most the three expired messages.)
	n, err := e.s.Sweep(e.ctx, e.clock.Now())
	if err != nil || n < 0 || n > 3 {
		t.Fatalf("Sweep removed %d (%v), want at most 3", n, err)
	}
	e.wantIDs(bob, long)
	e.wantIDs(carol)
	if n := e.payloads(); n != 0 {
		t.Fatalf("%d shared payloads after their expiry was swept", n)
	}
	if n := e.ack(bob, short.ServerID, group.ServerID); n != 0 {
		t.Fatalf("acking swept messages deleted %d", n)
	}
	if n := e.ack(bob, long); n != 1 {
		t.Fatalf("ack of the unexpired message deleted %d", n)
	}
}

func testIdempotencyExpires(t *testing.T, open Opener) {
	e := newEnv(t, open, 0)
	bob := dev("bob", 1)

	// Within the window: a duplicate.
	p := e.put1("a", bob)
	e.mustPut(p)
	e.clock.Advance(queue.IdempotencyWindow - time.Second)
	q := p
	q.ServerID, q.ServerTime = e.id(), e.clock.Now()
	q.ExpiresAt = q.ServerTime.Add(ttl)
	if r, err := e.s.Put(e.ctx, q); err != nil || !r.Duplicate {
		t.Fatalf("retry just inside the window: %+v %v, want duplicate", r, err)
	}
	// After the window, even before any sweep: a new message.
	e.clock.Advance(2 * time.Second)
	q.ServerID, q.ServerTime = e.id(), e.clock.Now()
	r := e.mustPut(q)
	e.wantIDs(bob, p.ServerID, r.ServerID)
	// And the new put opened a new window.
	q2 := q
	q2.ServerID = e.id()
	if r2, err := e.s.Put(e.ctx, q2); err != nil || !r2.Duplicate || r2.ServerID != r.ServerID {
		t.Fatalf("retry of the re-sent put: %+v %v, want duplicate of %d", r2, err, r.ServerID)
	}

	// A record swept after the window is gone too.
	s := e.put1("b", bob)
	e.mustPut(s)
	e.clock.Advance(queue.IdempotencyWindow + time.Second)
	if _, err := e.s.Sweep(e.ctx, e.clock.Now()); err != nil {
		t.Fatal(err)
	}
	s2 := s
	s2.ServerID, s2.ServerTime = e.id(), e.clock.Now()
	s2.ExpiresAt = s2.ServerTime.Add(ttl)
	e.mustPut(s2)
	e.wantIDs(bob, p.ServerID, r.ServerID, s.ServerID, s2.ServerID)
}

func testQueueCap(t *testing.T, open Opener) {
	e := newEnv(t, open, 5)
	bob := dev("bob", 2)
	var ids []uint64
	var first queue.Put
	for i := 0; i < 5; i++ {
		p := e.put1("x", bob)
		if i == 0 {
			first = p
		}
		ids = append(ids, e.mustPut(p).ServerID)
	}
	_, err := e.s.Put(e.ctx, e.put1("over", bob))
	var qf *queue.QueueFullError
	if !errors.As(err, &qf) {
		t.Fatalf("6th put into a cap-5 queue: %v, want *QueueFullError", err)
	}
	if want := "queue of bob.2 is full (limit 5 messages)"; err.Error() != want {
		t.Fatalf("error %q, want %q", err.Error(), want)
	}
	if qf.Device != bob || qf.Limit != 5 {
		t.Fatalf("QueueFullError %+v", qf)
	}
	e.wantIDs(bob, ids...)
	// A retry of an accepted put is still answered while the queue is full.
	retry := first
	retry.ServerID = e.id()
	if r, err := e.s.Put(e.ctx, retry); err != nil || !r.Duplicate || r.ServerID != first.ServerID {
		t.Fatalf("retry into a full queue: %+v %v, want duplicate of %d", r, err, first.ServerID)
	}
	// Other devices are unaffected by bob.2's cap.
	e.mustPut(e.put1("fine", dev("bob", 1)))
	// Acking makes room for exactly one more.
	e.ack(bob, ids[0])
	ids = append(ids[1:], e.mustPut(e.put1("x", bob)).ServerID)
	if _, err := e.s.Put(e.ctx, e.put1("over", bob)); !errors.As(err, &qf) {
		t.Fatalf("put into a refilled queue: %v, want *QueueFullError", err)
	}
	e.wantIDs(bob, ids...)
}

func testConcurrentPuts(t *testing.T, open Opener) {
	e := newEnv(t, open, 0)
	const workers, each = 32, 25
	devs := []queue.Device{dev("bob", 1), dev("bob", 2), dev("carol", 1), dev("dave", 1)}
	type stored struct {
		id uint64
		to []queue.Device
	}
	results := make([][]stored, workers)
	var wg sync.WaitGroup
	for w := 0; w < workers; w++ {
		wg.Add(1)
		go func(w int) {
			defer wg.Done()
			for i := 0; i < each; i++ {
				to := []queue.Device{devs[(w+i)%len(devs)]}
				var p queue.Put
				switch i % 3 {
				case 0:
					p = e.put1(fmt.Sprintf("w%d-%d", w, i), to...)
				case 1:
					to = append(to, devs[(w+i+1)%len(devs)])
					p = e.put1(fmt.Sprintf("w%d-%d", w, i), to...)
				default:
					to = append(to, devs[(w+i+1)%len(devs)], devs[(w+i+2)%len(devs)])
					p = e.putShared([]byte(fmt.Sprintf("w%d-%d", w, i)), to...)
				}
				r, err := e.s.Put(e.ctx, p)
				if err != nil {
					t.Errorf("worker %d put %d: %v", w, i, err)
					return
				}
				if r.Duplicate || r.ServerID != p.ServerID {
					t.Errorf("worker %d put %d: result %+v is not its own", w, i, r)
					return
				}
				results[w] = append(results[w], stored{p.ServerID, to})
			}
		}(w)
	}
	wg.Wait()
	if t.Failed() {
		return
	}
	want := map[queue.Device][]uint64{}
	for _, rs := range results {
		for _, s := range rs {
			for _, d := range s.to {
				want[d] = append(want[d], s.id)
			}
		}
	}
	// Each worker sends to 1, 2, 3 devices in turn.
	wantTotal := 0
	for i := 0; i < each; i++ {
		wantTotal += workers * (i%3 + 1)
	}
	total := 0
	for _, d := range devs {
		w := want[d]
		sort.Slice(w, func(i, j int) bool { return w[i] < w[j] })
		total += len(w)
		e.wantIDs(d, w...)
	}
	if total != wantTotal {
		t.Fatalf("%d messages stored, want %d", total, wantTotal)
	}
}

func testConcurrentPutsAndAcks(t *testing.T, open Opener) {
	e := newEnv(t, open, 0)
	const devices, each = 8, 40
	var wg sync.WaitGroup
	for i := 0; i < devices; i++ {
		d := dev(fmt.Sprintf("u%d", i), 1)
		wg.Add(2)
		ids := make(chan uint64, each)
		go func() { // sender
			defer wg.Done()
			defer close(ids)
			for j := 0; j < each; j++ {
				p := e.put1("m", d)
				if _, err := e.s.Put(e.ctx, p); err != nil {
					t.Errorf("put: %v", err)
					return
				}
				ids <- p.ServerID
			}
		}()
		go func() { // receiver: acks every other message as it arrives
			defer wg.Done()
			j := 0
			for id := range ids {
				if j%2 == 0 {
					if n, err := e.s.Ack(e.ctx, d, []uint64{id}); err != nil || n != 1 {
						t.Errorf("ack %d of %s: %d, %v", id, d, n, err)
					}
				}
				j++
			}
		}()
	}
	wg.Wait()
	for i := 0; i < devices; i++ {
		d := dev(fmt.Sprintf("u%d", i), 1)
		if n := e.depth(d); n != each/2 {
			t.Fatalf("Depth(%s) = %d, want %d", d, n, each/2)
		}
		if n := len(e.fetchAll(d)); n != each/2 {
			t.Fatalf("%s holds %d messages, want %d", d, n, each/2)
		}
	}
}

func testReopen(t *testing.T, open Opener) {
	e := newEnv(t, open, 0)
	bob, carol := dev("bob", 1), dev("carol", 3)
	p1 := e.put1("one", bob, carol)
	e.mustPut(p1)
	g := e.mustPut(e.putShared([]byte("group"), bob, carol)).ServerID
	p3 := e.mustPut(e.put1("three", bob)).ServerID
	e.ack(carol, p1.ServerID)
	before := map[queue.Device][]queue.Message{bob: e.fetchAll(bob), carol: e.fetchAll(carol)}

	if err := e.s.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	e.reopen()

	for d, want := range before {
		got := e.fetchAll(d)
		if len(got) != len(want) {
			t.Fatalf("after reopen %s holds %d messages, want %d", d, len(got), len(want))
		}
		for i := range got {
			g, w := got[i], want[i]
			if g.ServerID != w.ServerID || g.Sender != w.Sender || g.SenderDevice != w.SenderDevice ||
				g.Type != w.Type || !bytes.Equal(g.Payload, w.Payload) || !g.ServerTime.Equal(w.ServerTime) {
				t.Fatalf("after reopen %s message %d = %+v, want %+v", d, i, g, w)
			}
		}
	}
	e.wantIDs(bob, p1.ServerID, g, p3)
	e.wantIDs(carol, g)
	if n := e.payloads(); n != 1 {
		t.Fatalf("%d shared payloads after reopen, want 1", n)
	}
	// Idempotency records survive too.
	retry := p1
	retry.ServerID = e.id()
	if r, err := e.s.Put(e.ctx, retry); err != nil || !r.Duplicate || r.ServerID != p1.ServerID {
		t.Fatalf("retry after reopen: %+v %v, want duplicate of %d", r, err, p1.ServerID)
	}
	// And the store keeps working.
	e.ack(bob, p1.ServerID, g, p3)
	e.ack(carol, g)
	e.wantIDs(bob)
	if n := e.payloads(); n != 0 {
		t.Fatalf("%d shared payloads after every ack, want 0", n)
	}
}

func testCloseThenUse(t *testing.T, open Opener) {
	e := newEnv(t, open, 0)
	bob := dev("bob", 1)
	id := e.mustPut(e.put1("x", bob)).ServerID
	if err := e.s.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	check := func(what string, err error) {
		t.Helper()
		if !errors.Is(err, queue.ErrClosed) {
			t.Errorf("%s after Close: %v, want ErrClosed", what, err)
		}
		if !queue.IsRetryable(err) {
			t.Errorf("%s after Close: %v is not retryable", what, err)
		}
	}
	_, err := e.s.Put(e.ctx, e.put1("y", bob))
	check("Put", err)
	_, err = e.s.Fetch(e.ctx, bob, 0, 10)
	check("Fetch", err)
	_, err = e.s.Ack(e.ctx, bob, []uint64{id})
	check("Ack", err)
	_, err = e.s.Depth(e.ctx, bob)
	check("Depth", err)
	_, err = e.s.Oldest(e.ctx)
	check("Oldest", err)
	_, err = e.s.Sweep(e.ctx, e.clock.Now())
	check("Sweep", err)
	if pc, ok := e.s.(queue.PayloadCounter); ok {
		_, err = pc.Payloads(e.ctx)
		check("Payloads", err)
	}
	if err := e.s.Close(); err != nil {
		t.Errorf("second Close: %v", err)
	}
	// The message acked after Close was not deleted.
	e.reopen()
	e.wantIDs(bob, id)
}

func testInvalid(t *testing.T, open Opener) {
	e := newEnv(t, open, 0)
	bob := dev("bob", 1)
	many := make([]queue.Recipient, queue.MaxRecipients+1)
	for i := range many {
		many[i] = queue.Recipient{Device: dev(fmt.Sprintf("m%d", i), 1), Payload: []byte("x")}
	}
	cases := map[string]func(p *queue.Put){
		"zero server id":         func(p *queue.Put) { p.ServerID = 0 },
		"server id above int64":  func(p *queue.Put) { p.ServerID = 1 << 63 },
		"short client id":        func(p *queue.Put) { p.ClientID = p.ClientID[:15] },
		"no client id":           func(p *queue.Put) { p.ClientID = nil },
		"no sender":              func(p *queue.Put) { p.Sender = "" },
		"no recipients":          func(p *queue.Put) { p.Recipients = nil },
		"too many recipients":    func(p *queue.Put) { p.Recipients = many },
		"duplicate recipient":    func(p *queue.Put) { p.Recipients = append(p.Recipients, p.Recipients[0]) },
		"recipient without body": func(p *queue.Put) { p.Recipients[0].Payload = nil },
		"empty account":          func(p *queue.Put) { p.Recipients[0].Device.Account = "" },
		"oversized payload":      func(p *queue.Put) { p.Recipients[0].Payload = make([]byte, queue.MaxPayloadSize+1) },
		"oversized shared":       func(p *queue.Put) { p.Shared = make([]byte, queue.MaxPayloadSize+1) },
		"expiry not after time":  func(p *queue.Put) { p.ExpiresAt = p.ServerTime },
		"no server time":         func(p *queue.Put) { p.ServerTime = time.Time{} },
	}
	for name, mutate := range cases {
		p := e.put1("x", bob)
		mutate(&p)
		_, err := e.s.Put(e.ctx, p)
		if !errors.Is(err, queue.ErrInvalid) {
			t.Errorf("%s: err %v, want ErrInvalid", name, err)
		}
		if queue.IsRetryable(err) {
			t.Errorf("%s: invalid put reported retryable", name)
		}
	}
	e.wantIDs(bob)
	// The largest valid put is accepted.
	p := e.put1("x", bob)
	p.Recipients[0].Payload = make([]byte, queue.MaxPayloadSize)
	e.mustPut(p)
	if ms := e.fetchAll(bob); len(ms) != 1 || len(ms[0].Payload) != queue.MaxPayloadSize {
		t.Fatalf("max-size payload not stored whole")
	}
	if _, err := e.s.Fetch(e.ctx, dev("", 1), 0, 1); !errors.Is(err, queue.ErrInvalid) {
		t.Errorf("Fetch without account: %v, want ErrInvalid", err)
	}
}

func testOldest(t *testing.T, open Opener) {
	e := newEnv(t, open, 0)
	old, err := e.s.Oldest(e.ctx)
	if err != nil || !old.IsZero() {
		t.Fatalf("Oldest of an empty store = %v, %v; want zero", old, err)
	}
	first := e.mustPut(e.put1("a", dev("bob", 1))).ServerID
	e.clock.Advance(time.Minute)
	e.mustPut(e.put1("b", dev("carol", 1)))
	e.clock.Advance(time.Minute)
	e.mustPut(e.putShared([]byte("c"), dev("bob", 1), dev("dave", 1)))
	if old, err := e.s.Oldest(e.ctx); err != nil || !old.Equal(epoch) {
		t.Fatalf("Oldest = %v, %v; want %v", old, err, epoch)
	}
	e.ack(dev("bob", 1), first)
	if old, err := e.s.Oldest(e.ctx); err != nil || !old.Equal(epoch.Add(time.Minute)) {
		t.Fatalf("Oldest after acking the oldest = %v, %v; want %v", old, err, epoch.Add(time.Minute))
	}
}

func testCancelled(t *testing.T, open Opener) {
	e := newEnv(t, open, 0)
	bob := dev("bob", 1)
	p := e.put1("x", bob)
	ctx, cancel := context.WithCancel(e.ctx)
	cancel()
	if _, err := e.s.Put(ctx, p); !errors.Is(err, context.Canceled) {
		t.Fatalf("Put with a cancelled context: %v, want context.Canceled", err)
	}
	// Whether or not it was stored, the retry leaves exactly one message.
	retry := p
	retry.ServerID = e.id()
	r, err := e.s.Put(e.ctx, retry)
	if err != nil {
		t.Fatal(err)
	}
	if r.Duplicate && r.ServerID != p.ServerID || !r.Duplicate && r.ServerID != retry.ServerID {
		t.Fatalf("retry result %+v", r)
	}
	e.wantIDs(bob, r.ServerID)
	if _, err := e.s.Fetch(ctx, bob, 0, 10); !errors.Is(err, context.Canceled) {
		t.Fatalf("Fetch with a cancelled context: %v, want context.Canceled", err)
	}
}

func testMillis(t *testing.T, open Opener) {
	e := newEnv(t, open, 0)
	bob := dev("bob", 1)
	p := e.put1("x", bob)
	p.ServerTime = epoch.Add(1234567891 * time.Nanosecond) // 1.234567891 s
	p.ExpiresAt = p.ServerTime.Add(ttl)
	r := e.mustPut(p)
	want := epoch.Add(1234 * time.Millisecond)
	if !r.ServerTime.Equal(want) {
		t.Fatalf("PutResult.ServerTime = %v, want %v", r.ServerTime, want)
	}
	if ms := e.fetchAll(bob); len(ms) != 1 || !ms[0].ServerTime.Equal(want) {
		t.Fatalf("fetched ServerTime %v, want %v", ms, want)
	}
}
