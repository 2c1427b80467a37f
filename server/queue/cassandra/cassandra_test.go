package cassandra

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/gocql/gocql"

	"github.com/hushchat/hush/internal/testenv"
	"github.com/hushchat/hush/server/queue"
	"github.com/hushchat/hush/server/queue/queuetest"
)

// Cassandra-specific behaviour, beyond the conformance suite. The subtests
// share one keyspace (tables are created once) and use account names of
// their own.

var nextID atomic.Uint64

func init() { nextID.Store(1 << 50) }

func newID() uint64 { return nextID.Add(1) }

func newClientID() []byte {
	b := make([]byte, queue.ClientIDSize)
	rand.Read(b)
	return b
}

// prefix returns a random prefix for a subtest's account names.
func prefix(t *testing.T) string {
	var b [3]byte
	rand.Read(b[:])
	return fmt.Sprintf("a%x", b)
}

func open(t *testing.T, c testenv.Cassandra, cfg Config) *Store {
	t.Helper()
	cfg.Hosts, cfg.Port, cfg.Keyspace = c.Hosts, c.Port, c.Keyspace
	ctx, cancel := context.WithTimeout(context.Background(), suiteTimeout)
	defer cancel()
	s, err := Open(ctx, cfg)
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

func put1(now time.Time, sender string, payload []byte, to ...queue.Device) queue.Put {
	p := queue.Put{
		ServerID: newID(), Sender: sender, SenderDevice: 1, ClientID: newClientID(),
		ServerTime: now, ExpiresAt: now.Add(30 * 24 * time.Hour),
	}
	for _, d := range to {
		p.Recipients = append(p.Recipients, queue.Recipient{Device: d, Type: 1, Payload: payload})
	}
	return p
}

func putShared(now time.Time, sender string, shared []byte, to ...queue.Device) queue.Put {
	p := put1(now, sender, nil, to...)
	p.Shared, p.SharedType = shared, 3
	for i := range p.Recipients {
		p.Recipients[i].Type = 0
	}
	return p
}

func mustFetch(t *testing.T, s *Store, d queue.Device) []queue.Message {
	t.Helper()
	ms, err := s.Fetch(context.Background(), d, 0, queue.MaxFetch)
	if err != nil {
		t.Fatalf("Fetch %s: %v", d, err)
	}
	return ms
}

func mustDepth(t *testing.T, s *Store, d queue.Device) int {
	t.Helper()
	n, err := s.Depth(context.Background(), d)
	if err != nil {
		t.Fatalf("Depth %s: %v", d, err)
	}
	return n
}

func TestCassandra(t *testing.T) {
	c := testenv.NeedCassandra(t)
	open(t, c, Config{}) // create the tables once
	for _, tc := range []struct {
		name string
		fn   func(t *testing.T, c testenv.Cassandra)
	}{
		{"ConcurrentRetriesAcrossRelaysStoreOnce", testRetriesAcrossRelays},
		{"TTLAppliedOnEveryTable", testTTLApplied},
		{"NativeExpiryWithoutSweep", testNativeExpiry},
		{"StagedRowsInvisibleUntilCommit", testStagedInvisible},
		{"StalledPutTakenOverByRetry", testTakeOver},
		{"FailedBatchReleasesClaim", testFailedBatchReleases},
		{"BatchSizeEstimateStaysUnderThreshold", testBatchEstimate},
		{"LargestPuts", testLargestPuts},
		{"ClosedSessionIsRetryable", testClosedSession},
		{"UnreachableClusterIsRetryable", testUnreachable},
		{"ErrorMapping", testErrorMapping},
	} {
		t.Run(tc.name, func(t *testing.T) { tc.fn(t, c) })
	}
}

// Many relays (stores with sessions of their own) get the same message
// from many goroutines at once: the LWT claim lets exactly one store it.
func testRetriesAcrossRelays(t *testing.T, c testenv.Cassandra) {
	const relays, workers = 4, 48
	var stores []*Store
	for range relays {
		stores = append(stores, open(t, c, Config{}))
	}
	pre := prefix(t)
	b1, b2 := queue.Device{Account: pre + "bob", ID: 1}, queue.Device{Account: pre + "bob", ID: 2}
	p := put1(time.Now(), pre+"alice", []byte("once"), b1, b2)
	type result struct {
		id  uint64
		r   queue.PutResult
		err error
	}
	results := make([]result, workers)
	start := make(chan struct{})
	var wg sync.WaitGroup
	for i := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			q := p
			q.ServerID = newID()
			<-start
			r, err := stores[i%relays].Put(context.Background(), q)
			results[i] = result{q.ServerID, r, err}
		}()
	}
	close(start)
	wg.Wait()
	var winner uint64
	winners := 0
	for _, r := range results {
		if r.err != nil {
			t.Fatalf("Put: %v", r.err)
		}
		if !r.r.Duplicate {
			winners++
			winner = r.id
		}
	}
	if winners != 1 {
		t.Fatalf("%d of %d concurrent retries were stored, want 1", winners, workers)
	}
	for _, r := range results {
		if r.r.ServerID != winner {
			t.Fatalf("a retry reports %d, the stored one is %d", r.r.ServerID, winner)
		}
	}
	for _, d := range []queue.Device{b1, b2} {
		ms := mustFetch(t, stores[0], d)
		if len(ms) != 1 || ms[0].ServerID != winner {
			t.Fatalf("%s holds %v, want exactly %d", d, ms, winner)
		}
	}
}

// Every row is written with a TTL derived from the Put's expiry (or the
// idempotency window), read back with CQL's TTL().
func testTTLApplied(t *testing.T, c testenv.Cassandra) {
	s := open(t, c, Config{})
	pre := prefix(t)
	ctx := context.Background()
	now := time.Now()
	bob, carol := queue.Device{Account: pre + "bob", ID: 1}, queue.Device{Account: pre + "carol", ID: 1}
	p := putShared(now, pre+"alice", []byte("group"), bob, carol)
	p.Recipients[1].Payload, p.Recipients[1].Type = []byte("own"), 1
	p.ExpiresAt = now.Add(time.Hour)
	if _, err := s.Put(ctx, p); err != nil {
		t.Fatal(err)
	}
	inRange := func(what string, got, lo, hi int) {
		t.Helper()
		if got < lo || got > hi {
			t.Errorf("TTL of %s = %d s, want %d..%d", what, got, lo, hi)
		}
	}
	hour := int(time.Hour / time.Second)
	day := int(queue.IdempotencyWindow / time.Second)
	var ttl, ttl2 int
	if err := s.s.Query(`SELECT TTL(payload), TTL(server_time) FROM queue_messages WHERE account = ? AND device = ? AND server_id = ?`,
		carol.Account, int32(carol.ID), int64(p.ServerID)).Scan(&ttl, &ttl2); err != nil {
		t.Fatal(err)
	}
	inRange("own payload", ttl, hour-30, hour+1)
	inRange("message row", ttl2, hour-30, hour+1)
	if err := s.s.Query(`SELECT TTL(server_time) FROM queue_messages WHERE account = ? AND device = ? AND server_id = ?`,
		bob.Account, int32(bob.ID), int64(p.ServerID)).Scan(&ttl); err != nil {
		t.Fatal(err)
	}
	inRange("shared reference message", ttl, hour-30, hour+1)
	if err := s.s.Query(`SELECT TTL(payload) FROM queue_payloads WHERE server_id = ? LIMIT 1`, int64(p.ServerID)).Scan(&ttl); err != nil {
		t.Fatal(err)
	}
	inRange("shared payload (outlives its messages)", ttl, hour+payloadGrace-30, hour+payloadGrace+1)
	if err := s.s.Query(`SELECT TTL(server_id) FROM queue_claims WHERE sender = ? AND sender_device = 1 AND client_id = ?`, p.Sender, p.ClientID).Scan(&ttl); err != nil {
		t.Fatal(err)
	}
	inRange("idempotency claim", ttl, day+payloadGrace-30, day+payloadGrace)
	if err := s.s.Query(`SELECT TTL(server_id) FROM queue_done WHERE sender = ? AND sender_device = 1 AND client_id = ?`, p.Sender, p.ClientID).Scan(&ttl); err != nil {
		t.Fatal(err)
	}
	inRange("idempotency record", ttl, day+payloadGrace-30, day+payloadGrace)
	exp := millis(p.ExpiresAt)
	if err := s.s.Query(`SELECT TTL(shared) FROM queue_expiry WHERE bucket = ? AND shard = ? AND expires_at = ? AND server_id = ?`,
		exp.UnixMilli()/time.Hour.Milliseconds(), int32(int64(p.ServerID)%expiryShards), exp, int64(p.ServerID)).Scan(&ttl); err != nil {
		t.Fatal(err)
	}
	inRange("expiry index row", ttl, hour-30, hour)
}

// With the wall clock as the store clock, Cassandra itself drops expired
// messages: no Sweep needed.
func testNativeExpiry(t *testing.T, c testenv.Cassandra) {
	s := open(t, c, Config{})
	pre := prefix(t)
	ctx := context.Background()
	bob := queue.Device{Account: pre + "bob", ID: 1}
	now := time.Now()
	p := put1(now, pre+"alice", []byte("short"), bob)
	p.ExpiresAt = now.Add(2 * time.Second)
	g := putShared(now, pre+"alice", []byte("short group"), bob)
	g.ExpiresAt = now.Add(2 * time.Second)
	for _, q := range []queue.Put{p, g} {
		if _, err := s.Put(ctx, q); err != nil {
			t.Fatal(err)
		}
	}
	// Cassandra must not drop them before their expiry (it counts TTLs
	// from the current second rounded down). Checked only if the check
	// itself finished before the expiry on a slow machine.
	time.Sleep(time.Until(p.ExpiresAt.Add(-300 * time.Millisecond)))
	n := mustDepth(t, s, bob)
	ms := mustFetch(t, s, bob)
	if time.Now().Before(p.ExpiresAt) && (n != 2 || len(ms) != 2) {
		t.Fatalf("Depth %d, %d fetched just before expiry, want 2", n, len(ms))
	}
	deadline := time.Now().Add(30 * time.Second)
	for mustDepth(t, s, bob) != 0 {
		if time.Now().After(deadline) {
			t.Fatalf("messages still stored 30 s after their 2 s TTL")
		}
		time.Sleep(250 * time.Millisecond)
	}
	if ms := mustFetch(t, s, bob); len(ms) != 0 {
		t.Fatalf("fetched %d messages after expiry", len(ms))
	}
}

// Rows of a staged Put stay invisible to every reader until the commit
// record exists: what a relay that died half-way through leaves behind.
func testStagedInvisible(t *testing.T, c testenv.Cassandra) {
	s := open(t, c, Config{})
	pre := prefix(t)
	ctx := context.Background()
	bob := queue.Device{Account: pre + "bob", ID: 1}
	// Older than anything else in the keyspace, so Oldest would report it
	// if it counted it.
	old := time.Date(2001, 1, 1, 0, 0, 0, 0, time.UTC)
	id := int64(newID())
	if err := s.s.Query(stmtInsertMsg, bob.Account, int32(bob.ID), id, pre+"alice", int32(1), int32(1), []byte("staged"),
		false, true, old, time.Now().Add(time.Hour), 3600).Exec(); err != nil {
		t.Fatal(err)
	}
	if ms := mustFetch(t, s, bob); len(ms) != 0 {
		t.Fatalf("uncommitted staged row fetched: %v", ms)
	}
	if n := mustDepth(t, s, bob); n != 0 {
		t.Fatalf("uncommitted staged row counted: Depth %d", n)
	}
	if o, err := s.Oldest(ctx); err != nil || o.Equal(old) {
		t.Fatalf("Oldest = %v, %v: counts an uncommitted staged row", o, err)
	}
	if err := s.s.Query(stmtInsertCommit, id, 3600).Exec(); err != nil {
		t.Fatal(err)
	}
	ms := mustFetch(t, s, bob)
	if len(ms) != 1 || ms[0].ServerID != uint64(id) || string(ms[0].Payload) != "staged" {
		t.Fatalf("committed staged row: fetched %v", ms)
	}
	if n := mustDepth(t, s, bob); n != 1 {
		t.Fatalf("committed staged row: Depth %d, want 1", n)
	}
	if o, err := s.Oldest(ctx); err != nil || !o.Equal(old) {
		t.Fatalf("Oldest = %v, %v; want the committed staged row's %v", o, err, old)
	}
	if n, err := s.Ack(ctx, bob, []uint64{uint64(id)}); err != nil || n != 1 {
		t.Fatalf("Ack of the staged row: %d, %v", n, err)
	}
}

// A relay that claimed a message and died before writing it leaves a
// pending claim: a retry waits (and answers retryable) while the claim may
// still be live, then takes it over and stores the message under the
// original identity — once.
func testTakeOver(t *testing.T, c testenv.Cassandra) {
	clock := queuetest.NewClock(time.Now())
	s := open(t, c, Config{ClaimTimeout: time.Second, Options: queue.Options{Clock: clock.Now}})
	pre := prefix(t)
	ctx := context.Background()
	bob := queue.Device{Account: pre + "bob", ID: 1}
	p := put1(clock.Now(), pre+"alice", []byte("hello"), bob)

	// The dead relay's claim, exactly as Put writes it.
	owner, _ := gocql.RandomUUID()
	orig := identity{serverID: int64(p.ServerID), serverTime: millis(p.ServerTime), expiresAt: millis(p.ExpiresAt), writeTS: s.writeTS()}
	if err := s.s.Query(stmtInsertClaim, p.Sender, int32(p.SenderDevice), p.ClientID, orig.serverID, orig.serverTime,
		orig.expiresAt, orig.writeTS, owner, clock.Now(), clock.Now(), 3600).Exec(); err != nil {
		t.Fatal(err)
	}

	retry := p
	retry.ServerID = newID()
	retry.ServerTime = clock.Now().Add(time.Second)
	// The caller's deadline ends the wait with ctx.Err().
	short, cancel := context.WithTimeout(ctx, 100*time.Millisecond)
	_, err := s.Put(short, retry)
	cancel()
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("retry with a short deadline while the claim is live: %v, want context.DeadlineExceeded", err)
	}
	// Without one, the wait ends after ClaimTimeout, retryable.
	_, err = s.Put(ctx, retry)
	if !queue.IsRetryable(err) {
		t.Fatalf("retry while the claim is live: %v, want a retryable error", err)
	}
	if ms := mustFetch(t, s, bob); len(ms) != 0 {
		t.Fatalf("messages stored while the claim was live: %v", ms)
	}

	clock.Advance(time.Second)
	r, err := s.Put(ctx, retry)
	if err != nil {
		t.Fatalf("retry after the claim went stale: %v", err)
	}
	if !r.Duplicate || r.ServerID != p.ServerID || !r.ServerTime.Equal(orig.serverTime) {
		t.Fatalf("take-over result %+v, want duplicate of %d at %v", r, p.ServerID, orig.serverTime)
	}
	ms := mustFetch(t, s, bob)
	if len(ms) != 1 || ms[0].ServerID != p.ServerID || string(ms[0].Payload) != "hello" {
		t.Fatalf("after take-over bob holds %v, want %d once", ms, p.ServerID)
	}
	// And it is done: a further retry is a plain duplicate, nothing new.
	retry.ServerID = newID()
	r, err = s.Put(ctx, retry)
	if err != nil || !r.Duplicate || r.ServerID != p.ServerID {
		t.Fatalf("retry after take-over: %+v %v", r, err)
	}
	if n := mustDepth(t, s, bob); n != 1 {
		t.Fatalf("Depth %d, want 1", n)
	}
}

// A batch the cluster refuses stores nothing and gives the claim back, so
// the retry is a fresh message. The refusal comes from Cassandra's own
// batch_size_fail_threshold, forced by a store allowed to build oversized
// batches.
func testFailedBatchReleases(t *testing.T, c testenv.Cassandra) {
	bad := open(t, c, Config{MaxBatchBytes: 1 << 30})
	good := open(t, c, Config{})
	pre := prefix(t)
	ctx := context.Background()
	var to []queue.Device
	for i := range 8 {
		to = append(to, queue.Device{Account: fmt.Sprintf("%sm%d", pre, i), ID: 1})
	}
	p := put1(time.Now(), pre+"alice", bytes.Repeat([]byte("x"), 16<<10), to...) // 128 KiB in one batch
	_, err := bad.Put(ctx, p)
	if err == nil {
		t.Fatal("a 128 KiB multi-partition batch was accepted; is batch_size_fail_threshold at its default (50 KiB)?")
	}
	if queue.IsRetryable(err) {
		t.Errorf("a refused batch is reported retryable: %v", err)
	}
	for _, d := range to {
		if n := mustDepth(t, good, d); n != 0 {
			t.Fatalf("refused put left %d messages for %s", n, d)
		}
	}
	retry := p
	retry.ServerID = newID()
	r, err := good.Put(ctx, retry)
	if err != nil || r.Duplicate || r.ServerID != retry.ServerID {
		t.Fatalf("retry after a refused batch: %+v %v, want a fresh put", r, err)
	}
	for _, d := range to {
		if ms := mustFetch(t, good, d); len(ms) != 1 || len(ms[0].Payload) != 16<<10 {
			t.Fatalf("%s holds %d messages after the retry", d, len(ms))
		}
	}
}

// Puts the estimate places just inside MaxBatchBytes go as one batch, and
// Cassandra, at its default batch_size_fail_threshold, accepts them: the
// estimate is never below the real size.
func testBatchEstimate(t *testing.T, c testenv.Cassandra) {
	s := open(t, c, Config{})
	pre := prefix(t)
	ctx := context.Background()
	budget := s.cfg.MaxBatchBytes
	shapes := map[string]func(n int) queue.Put{
		"many small 1-1": func(n int) queue.Put {
			var to []queue.Device
			for i := range n {
				to = append(to, queue.Device{Account: fmt.Sprintf("%s%032d", pre, i)[:32], ID: uint32(i%127 + 1)})
			}
			return put1(time.Now(), pre+"alice", make([]byte, 200), to...)
		},
		"group references": func(n int) queue.Put {
			var to []queue.Device
			for i := range n {
				to = append(to, queue.Device{Account: fmt.Sprintf("%sg%d", pre, i), ID: 1})
			}
			return putShared(time.Now(), pre+"alice", make([]byte, 4096), to...)
		},
		"few large": func(n int) queue.Put {
			var to []queue.Device
			for i := range 3 {
				to = append(to, queue.Device{Account: fmt.Sprintf("%sl%d", pre, i), ID: 1})
			}
			return put1(time.Now(), pre+"alice", make([]byte, n*64), to...)
		},
	}
	for name, shape := range shapes {
		n := 1
		for s.batchSize(ptr(shape(n+1))) <= budget {
			n++
		}
		p := shape(n)
		size := s.batchSize(&p)
		if size > budget || size < budget*9/10 {
			t.Fatalf("%s: could not build a put just under the budget (%d of %d)", name, size, budget)
		}
		if _, err := s.Put(ctx, p); err != nil {
			t.Errorf("%s: single-batch put estimated at %d bytes refused: %v", name, size, err)
		}
	}
}

func ptr[T any](v T) *T { return &v }

// The largest Puts the contract allows are stored whole (staged path):
// three max-size payloads, and a max-size group payload to MaxRecipients.
func testLargestPuts(t *testing.T, c testenv.Cassandra) {
	s := open(t, c, Config{})
	pre := prefix(t)
	ctx := context.Background()
	big := make([]byte, queue.MaxPayloadSize)
	rand.Read(big)
	var three []queue.Device
	for i := range 3 {
		three = append(three, queue.Device{Account: fmt.Sprintf("%sbig%d", pre, i), ID: 1})
	}
	p := put1(time.Now(), pre+"alice", big, three...)
	if _, err := s.Put(ctx, p); err != nil {
		t.Fatal(err)
	}
	for _, d := range three {
		if ms := mustFetch(t, s, d); len(ms) != 1 || !bytes.Equal(ms[0].Payload, big) {
			t.Fatalf("%s: max-size payload not stored whole", d)
		}
	}
	// Many of them in one Fetch: read page by page, returned whole.
	many := queue.Device{Account: pre + "many", ID: 1}
	for range 24 {
		if _, err := s.Put(ctx, put1(time.Now(), pre+"alice", big, many)); err != nil {
			t.Fatal(err)
		}
	}
	if ms := mustFetch(t, s, many); len(ms) != 24 || !bytes.Equal(ms[23].Payload, big) {
		t.Fatalf("fetched %d max-size messages in one call, want 24 whole", len(ms))
	}
	var all []queue.Device
	for i := range queue.MaxRecipients {
		all = append(all, queue.Device{Account: fmt.Sprintf("%sm%d", pre, i/4), ID: uint32(i%4 + 1)})
	}
	g := putShared(time.Now(), pre+"alice", big, all...)
	if _, err := s.Put(ctx, g); err != nil {
		t.Fatal(err)
	}
	for _, i := range []int{0, 1, 2047, queue.MaxRecipients - 1} {
		ms := mustFetch(t, s, all[i])
		if len(ms) != 1 || ms[0].ServerID != g.ServerID || !bytes.Equal(ms[0].Payload, big) {
			t.Fatalf("member %s: group payload not delivered whole", all[i])
		}
	}
	var refs int
	if err := s.s.Query(`SELECT COUNT(*) FROM queue_payloads WHERE server_id = ?`, int64(g.ServerID)).Scan(&refs); err != nil {
		t.Fatal(err)
	}
	if refs != queue.MaxRecipients {
		t.Fatalf("%d references to the group payload, want %d", refs, queue.MaxRecipients)
	}
}

// A session that is gone yields retryable errors from every method, never
// a panic.
func testClosedSession(t *testing.T, c testenv.Cassandra) {
	sess, err := c.Cluster().CreateSession()
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	s, err := New(ctx, sess, Config{Timeout: 2 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	pre := prefix(t)
	bob := queue.Device{Account: pre + "bob", ID: 1}
	sess.Close()
	checkAllRetryable(t, s, bob, pre)
}

func checkAllRetryable(t *testing.T, s *Store, bob queue.Device, pre string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	check := func(what string, err error) {
		t.Helper()
		if !queue.IsRetryable(err) {
			t.Errorf("%s: %v, want a retryable error", what, err)
		}
	}
	_, err := s.Put(ctx, put1(time.Now(), pre+"alice", []byte("x"), bob))
	check("Put", err)
	_, err = s.Put(ctx, putShared(time.Now(), pre+"alice", make([]byte, 64<<10), bob, queue.Device{Account: pre + "carol", ID: 1}))
	check("staged Put", err)
	_, err = s.Fetch(ctx, bob, 0, 10)
	check("Fetch", err)
	_, err = s.Ack(ctx, bob, []uint64{1})
	check("Ack", err)
	_, err = s.Depth(ctx, bob)
	check("Depth", err)
	_, err = s.Oldest(ctx)
	check("Oldest", err)
	_, err = s.Sweep(ctx, time.Now())
	check("Sweep", err)
	_, err = s.Payloads(ctx)
	check("Payloads", err)
}

// The only path to the cluster goes down (a TCP proxy standing in for the
// node): every method fails retryably; when it comes back the same message
// is stored exactly once on retry.
func testUnreachable(t *testing.T, c testenv.Cassandra) {
	px := startProxy(t, fmt.Sprintf("%s:%d", c.Hosts[0], c.Port))
	host, port, _ := net.SplitHostPort(px.addr)
	cc := c.Cluster()
	cc.Hosts = []string{host}
	fmt.Sscan(port, &cc.Port)
	cc.DisableInitialHostLookup = true
	cc.Timeout = 2 * time.Second
	cc.ConnectTimeout = 2 * time.Second
	cc.ReconnectInterval = 200 * time.Millisecond
	cc.Logger = driverLogger(nil)
	sess, err := cc.CreateSession()
	if err != nil {
		t.Fatal(err)
	}
	defer sess.Close()
	ctx := context.Background()
	s, err := New(ctx, sess, Config{Timeout: 2 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	pre := prefix(t)
	bob := queue.Device{Account: pre + "bob", ID: 1}
	if _, err := s.Put(ctx, put1(time.Now(), pre+"alice", []byte("before"), bob)); err != nil {
		t.Fatal(err)
	}

	px.stop()
	checkAllRetryable(t, s, bob, pre)
	p := put1(time.Now(), pre+"alice", []byte("during"), bob)
	if _, err := s.Put(ctx, p); !queue.IsRetryable(err) {
		t.Fatalf("Put while down: %v, want retryable", err)
	}

	px.start(t)
	deadline := time.Now().Add(time.Minute)
	var r queue.PutResult
	for {
		retry := p
		retry.ServerID = newID()
		r, err = s.Put(ctx, retry)
		if err == nil {
			break
		}
		if !queue.IsRetryable(err) || time.Now().After(deadline) {
			t.Fatalf("Put after the cluster came back: %v", err)
		}
		time.Sleep(200 * time.Millisecond)
	}
	ms := mustFetch(t, s, bob)
	if len(ms) != 2 || string(ms[0].Payload) != "before" || string(ms[1].Payload) != "during" || ms[1].ServerID != r.ServerID {
		t.Fatalf("after recovery bob holds %v, want before and during once", ms)
	}
}

// proxy forwards TCP connections to a target and can be stopped (closing
// every connection) and started again on the same address.
type proxy struct {
	addr, target string
	mu           sync.Mutex
	ln           net.Listener
	conns        map[net.Conn]struct{}
}

func startProxy(t *testing.T, target string) *proxy {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	px := &proxy{addr: ln.Addr().String(), target: target, conns: map[net.Conn]struct{}{}}
	px.serve(ln)
	t.Cleanup(px.stop)
	return px
}

func (px *proxy) start(t *testing.T) {
	var ln net.Listener
	var err error
	for range 50 { // the port was just freed; it may take a moment
		if ln, err = net.Listen("tcp", px.addr); err == nil {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	if err != nil {
		t.Fatal(err)
	}
	px.serve(ln)
}

func (px *proxy) serve(ln net.Listener) {
	px.mu.Lock()
	px.ln = ln
	px.mu.Unlock()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			u, err := net.Dial("tcp", px.target)
			if err != nil {
				c.Close()
				continue
			}
			px.mu.Lock()
			px.conns[c], px.conns[u] = struct{}{}, struct{}{}
			px.mu.Unlock()
			go func() { io.Copy(u, c); u.Close() }()
			go func() { io.Copy(c, u); c.Close() }()
		}
	}()
}

func (px *proxy) stop() {
	px.mu.Lock()
	defer px.mu.Unlock()
	if px.ln != nil {
		px.ln.Close()
		px.ln = nil
	}
	for c := range px.conns {
		c.Close()
	}
	clear(px.conns)
}

// Driver errors map onto the queue package's: cluster trouble retryable,
// a rejected request not, the caller's context as itself.
func testErrorMapping(t *testing.T, c testenv.Cassandra) {
	s := open(t, c, Config{})
	ctx := context.Background()
	bad := s.s.Query(`SELEC nothing FROM queue_messages`).WithContext(ctx).Exec()
	if bad == nil {
		t.Fatal("a malformed statement was accepted")
	}
	if err := s.fail(ctx, "test", bad); err == nil || queue.IsRetryable(err) {
		t.Errorf("syntax error %v mapped to %v, want a non-retryable error", bad, err)
	}
	if !definitelyNotApplied(bad) {
		t.Errorf("a rejected statement is not known as never applied")
	}
	for _, err := range []error{
		&gocql.RequestErrUnavailable{}, &gocql.RequestErrWriteTimeout{}, &gocql.RequestErrReadTimeout{},
		gocql.ErrNoConnections, gocql.ErrSessionClosed, gocql.ErrTimeoutNoResponse, gocql.ErrConnectionClosed,
		fmt.Errorf("wrapped: %w", &net.OpError{Op: "read", Err: errors.New("connection reset")}),
	} {
		if got := s.fail(ctx, "test", err); !queue.IsRetryable(got) {
			t.Errorf("%T %v mapped to %v, want retryable", err, err, got)
		}
	}
	for err, want := range map[error]bool{
		&gocql.RequestErrUnavailable{}: true, gocql.ErrNoConnections: true,
		&gocql.RequestErrWriteTimeout{}: false, gocql.ErrTimeoutNoResponse: false, gocql.ErrConnectionClosed: false,
	} {
		if got := definitelyNotApplied(err); got != want {
			t.Errorf("definitelyNotApplied(%T) = %v, want %v", err, got, want)
		}
	}
	cctx, cancel := context.WithCancel(ctx)
	cancel()
	if err := s.fail(cctx, "test", context.Canceled); !errors.Is(err, context.Canceled) || queue.IsRetryable(err) {
		t.Errorf("cancelled context mapped to %v, want context.Canceled", err)
	}
}

func TestOpenValidates(t *testing.T) {
	for _, cfg := range []Config{
		{},
		{Hosts: []string{"127.0.0.1"}},
		{Hosts: []string{"127.0.0.1"}, Keyspace: "Bad-Name"},
		{Hosts: []string{"127.0.0.1"}, Keyspace: "x; DROP KEYSPACE y"},
	} {
		if _, err := Open(context.Background(), cfg); err == nil {
			t.Errorf("Open(%+v) accepted", cfg)
		}
	}
}

// The CQL that Schema prints (for docs/deploy.md) creates exactly the
// tables the store needs: a store opened on a keyspace set up by hand from
// it finds the schema current and works.
func TestSchemaByHand(t *testing.T) {
	c := testenv.NeedCassandra(t)
	sess := c.Session(t)
	ctx, cancel := context.WithTimeout(context.Background(), suiteTimeout)
	defer cancel()
	for _, stmt := range strings.Split(Schema(), ";\n") {
		if stmt = strings.TrimSpace(stmt); stmt == "" {
			continue
		}
		if err := sess.Query(stmt).WithContext(ctx).Exec(); err != nil {
			t.Fatalf("%s: %v", stmt, err)
		}
	}
	s, err := New(ctx, sess, Config{})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	var v int
	if err := sess.Query(`SELECT version FROM queue_schema_version WHERE id = 0`).Scan(&v); err != nil || v != SchemaVersion {
		t.Fatalf("schema version %d (%v), want %d", v, err, SchemaVersion)
	}
	bob := queue.Device{Account: "bob", ID: 1}
	if _, err := s.Put(ctx, putShared(time.Now(), "alice", []byte("g"), bob)); err != nil {
		t.Fatal(err)
	}
	if ms := mustFetch(t, s, bob); len(ms) != 1 || string(ms[0].Payload) != "g" {
		t.Fatalf("fetched %v", ms)
	}
}
