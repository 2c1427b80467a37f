// Package sqlite is the relay's embedded queue store: queue.Store on one
// SQLite file (modernc.org/sqlite, pure Go), for a single-node hush-server.
//
// # Durability
//
// The database runs in WAL mode. A batch holding a Put commits with
// synchronous=FULL: the commit fsyncs the WAL before it returns, so a Put
// that returned nil survives kill -9 and power loss alike. A batch of only
// Acks (and Sweeps) commits with synchronous=NORMAL, without an fsync: it
// survives a crash of the process, and a crash of the machine at worst
// undoes it, which brings the acked messages back for one more delivery
// (queue.Store documents that an ack may be lost this way). The next
// fsync'd commit makes the earlier ones durable too. At moderate rates
// this halves the fsyncs per message.
//
// # Group commit
//
// One fsync costs ~0.1–1 ms, so one transaction per Put would cap the relay
// at a few thousand messages per second. Instead every write (Put, Ack,
// Sweep) is handed to one writer goroutine over a channel. The writer takes
// whatever has queued up while the previous fsync ran — up to 1,024 ops —
// and applies it as one transaction with one fsync; each caller then gets
// its own result. The more concurrent senders, the larger the batches and
// the fewer fsyncs per message. When ops arrive faster than one per
// ~0.3 ms but the batch is still small, the writer first lets the
// goroutines that are ready to run (readers holding Sends) submit theirs —
// a few rounds of yielding, never a sleep — so that they share its commit;
// a lone sender at low load is never held and pays exactly one fsync. Acks are not urgent (the relay
// does not wait for them): a batch of only acks waits up to 5 ms for a Put
// to ride with, or for more acks.
//
// An op that is refused (a recipient queue at its cap, a duplicate) is
// decided before it writes anything. An op that fails half-way on its own (a
// ServerID stored twice) makes the writer roll the batch back and run it
// again without that op, so one bad op never fails the others. A failure of
// the transaction itself (disk full, I/O error, the fsync) fails every op in
// the batch, and none is stored.
// A caller whose context ends while it waits gets ctx.Err(); its op may or
// may not have committed (a Put's retry with the same ClientID is safe). An
// op whose context ended before its batch started is not applied.
//
// The writer uses its connection at the database/sql/driver level with
// statements prepared once: it is the hottest path of the relay and has no
// use for pooling. Reads (Fetch, Depth, Oldest) go through a separate pool
// of read-only connections (also at the driver level), which WAL lets run
// concurrently with the writer, and a third connection copies the WAL into
// the database file in the background (see checkpointLoop), so commits do
// not stall on checkpoints.
//
// What a message costs (see docs/benchmarks.md): the writer's share is about
// two b-tree inserts for a Put (the queue row and the idempotency record,
// whose random client id touches a random page) and one delete for its Ack,
// plus ~1.5 WAL pages and 1/batch of an fsync.
//
// # Schema
//
// queue holds one row per (device, message) keyed by (account, device,
// server_id) — the Cassandra partition and clustering key — with the
// device's own ciphertext inline or, for group sends, a reference to the
// payloads table, where the shared ciphertext is stored once with a
// reference count. idempotency maps (sender, sender device, client id) to
// the original server id. The writer keeps each recently used device's
// message count in memory (counted from the table on first use), so the cap
// check is a map lookup and costs no write. The schema is versioned
// (schema_version) and migrated forward at Open.
//
// Files are created 0600 in a 0700 directory: they hold ciphertext and
// metadata (who writes to whom, and when).
package sqlite

import (
	"context"
	"database/sql/driver"
	"errors"
	"fmt"
	"net/url"
	"os"
	"path/filepath"
	"runtime"
	"sync"
	"sync/atomic"
	"time"

	msqlite "modernc.org/sqlite"

	"github.com/hushchat/hush/server/queue"
)

// Options configures the store; they are the options common to all queue
// backends.
type Options = queue.Options

// Store is the SQLite queue store. It implements queue.Store and
// queue.PayloadCounter.
type Store struct {
	path string
	opts queue.Options

	readers  chan *reader // the read pool; each reader has one owner at a time
	nReaders int          // readers opened (Close collects them all)
	closing  chan struct{}

	wc *dconn
	w  *writer
	cc *dconn // the checkpointer's connection

	ckptKick, ckptStop, ckptDone chan struct{}
	reqs                         chan *op
	stats                        stats

	mu         sync.RWMutex // guards closed against sends on reqs
	closed     bool
	isClosed   atomic.Bool
	writerDone chan struct{}
	closeOnce  sync.Once
	closeErr   error

	ops sync.Pool
}

var (
	_ queue.Store          = (*Store)(nil)
	_ queue.PayloadCounter = (*Store)(nil)
)

// Open opens (creating if needed) the queue database at path and starts its
// writer. The directory is created 0700 if missing, the files 0600.
func Open(path string, opts Options) (*Store, error) {
	abs, err := filepath.Abs(path)
	if err != nil {
		return nil, fmt.Errorf("queue database %s: %w", path, err)
	}
	if err := os.MkdirAll(filepath.Dir(abs), 0o700); err != nil {
		return nil, fmt.Errorf("queue database directory: %w", err)
	}
	// Create the file ourselves so it gets 0600 whatever the umask; SQLite
	// gives the -wal and -shm files the database file's mode.
	f, err := os.OpenFile(abs, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, fmt.Errorf("queue database %s: %w", abs, err)
	}
	fi, err := f.Stat()
	f.Close()
	if err != nil {
		return nil, fmt.Errorf("queue database %s: %w", abs, err)
	}
	if fi.Mode().Perm()&0o077 != 0 {
		if err := os.Chmod(abs, 0o600); err != nil {
			return nil, fmt.Errorf("queue database %s: restrict permissions: %w", abs, err)
		}
	}

	s := &Store{
		path:       abs,
		opts:       opts,
		reqs:       make(chan *op, maxBatchOps),
		writerDone: make(chan struct{}),
		ckptKick:   make(chan struct{}, 1),
		ckptStop:   make(chan struct{}),
		ckptDone:   make(chan struct{}),
		closing:    make(chan struct{}),
	}
	s.ops.New = func() any { return &op{done: make(chan struct{}, 1)} }

	if err := s.open(); err != nil {
		s.closeConns()
		return nil, err
	}
	go s.run()
	go s.checkpointLoop()
	return s, nil
}

// open opens the connections: the writer's first (it sets up WAL and the
// schema), then the checkpointer's and the read pool.
func (s *Store) open() error {
	drv := &msqlite.Driver{} // a private driver: no hooks or functions registered by others
	dc, err := drv.Open(dsn(s.path, writePragmas))
	if err != nil {
		return wrapErr("open "+s.path, err)
	}
	s.wc = &dconn{c: dc}
	// page_size only takes effect on a new, empty database, before WAL mode
	// is set; journal_mode=WAL is persistent once set.
	if err := s.wc.execScript(fmt.Sprintf("PRAGMA page_size = %d; PRAGMA journal_mode = WAL", pageSize)); err != nil {
		return wrapErr("open "+s.path, err)
	}
	if err := migrate(s.wc); err != nil {
		return wrapErr("migrate "+s.path, err)
	}
	if s.w, err = newWriter(s.wc, s.opts.DepthLimit(), &s.stats); err != nil {
		return wrapErr("open "+s.path, err)
	}
	cc, err := drv.Open(dsn(s.path, checkpointPragmas))
	if err != nil {
		return wrapErr("open "+s.path, err)
	}
	s.cc = &dconn{c: cc}

	// Readers run in parallel with the writer and with each other; a few
	// per core keep Fetch from queueing behind a slow one.
	n := max(4, runtime.GOMAXPROCS(0))
	s.readers = make(chan *reader, n)
	for i := 0; i < n; i++ {
		r, err := openReader(drv, s.path)
		if err != nil {
			return wrapErr("open "+s.path, err)
		}
		s.readers <- r
		s.nReaders++
	}
	return nil
}

// reader is one read-only connection of the pool with its statements.
type reader struct {
	c                              *dconn
	fetch, depth, oldest, payloads *dstmt
	dest1                          []driver.Value
	dest3                          []driver.Value
	dest6                          []driver.Value
}

func openReader(drv *msqlite.Driver, path string) (*reader, error) {
	c, err := drv.Open(dsn(path, readPragmas))
	if err != nil {
		return nil, err
	}
	r := &reader{c: &dconn{c: c}, dest1: make([]driver.Value, 1), dest3: make([]driver.Value, 3), dest6: make([]driver.Value, 6)}
	for _, p := range []struct {
		s **dstmt
		q string
	}{
		// Expired messages are skipped here; Sweep deletes them later.
		{&r.fetch, `SELECT q.server_id, q.sender, q.sender_device, q.type, q.server_time, coalesce(q.payload, p.bytes)
			FROM queue AS q LEFT JOIN payloads AS p ON p.id = q.payload_id
			WHERE q.account = ? AND q.device = ? AND q.server_id > ? AND q.expires > ?
			ORDER BY q.server_id LIMIT ?`},
		{&r.depth, `SELECT count(*) FROM queue WHERE account = ? AND device = ?`},
		// The next queue head after (account, device): one seek per device.
		{&r.oldest, `SELECT account, device, server_time FROM queue
			WHERE (account, device) > (?, ?) ORDER BY account, device, server_id LIMIT 1`},
		{&r.payloads, `SELECT count(*) FROM payloads`},
	} {
		if *p.s, err = r.c.prepare(p.q); err != nil {
			r.c.close()
			return nil, err
		}
	}
	return r, nil
}

// reader takes a connection from the read pool, waiting while all are busy.
func (s *Store) reader(ctx context.Context) (*reader, error) {
	if s.isClosed.Load() {
		return nil, queue.ErrClosed
	}
	select {
	case r := <-s.readers:
		return r, nil
	case <-s.closing:
		return nil, queue.ErrClosed
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

func (s *Store) putReader(r *reader) { s.readers <- r }

// closeConns closes whatever connections are open: readers and the
// checkpointer first, so that the writer's connection is the last one and
// SQLite checkpoints the WAL into the database file and removes it.
func (s *Store) closeConns() error {
	var errs []error
	for ; s.nReaders > 0; s.nReaders-- {
		r := <-s.readers // waits for reads in flight
		errs = append(errs, r.c.close())
	}
	if s.cc != nil {
		errs = append(errs, s.cc.close())
	}
	if s.wc != nil {
		errs = append(errs, s.wc.close())
	}
	return errors.Join(errs...)
}

// checkpointLoop copies committed WAL frames into the database file in the
// background, beside the writer, so that commits do not pay for it: SQLite
// would otherwise checkpoint inside the commit that crosses its threshold,
// stalling every sender of that batch for milliseconds. A PASSIVE checkpoint
// never blocks the writer. The writer keeps SQLite's automatic checkpoint,
// at 8,192 pages (32 MiB): by the time the log is that long this loop has
// copied nearly all of it, so the writer's checkpoint is short, and it lets
// the writer start the log from its beginning again (which needs the log
// fully copied when its next transaction starts), keeping the WAL file
// bounded.
func (s *Store) checkpointLoop() {
	defer close(s.ckptDone)
	t := time.NewTimer(0)
	<-t.C
	for {
		select {
		case <-s.ckptStop:
			return
		case <-s.ckptKick:
		}
		// Errors are not fatal here: SQLITE_BUSY means the writer is
		// checkpointing; an I/O error will fail the writer's next commit,
		// which reports it to the callers.
		_ = s.cc.execScript(`PRAGMA wal_checkpoint(PASSIVE)`)
		s.stats.checkpoints.Add(1)
		// Pace: each checkpoint fsyncs the database file once, and pages
		// written again and again (index tails, hot leaves) are copied
		// once per checkpoint.
		t.Reset(checkpointEvery)
		select {
		case <-s.ckptStop:
			return
		case <-t.C:
		}
	}
}

const (
	// pageSize is SQLite's default; rows of a typical message (a few
	// hundred bytes) fit in a page with room to spare.
	pageSize = 4096
	// checkpointEvery paces the background checkpoint.
	checkpointEvery = 25 * time.Millisecond

	// busy_timeout covers another process (a backup, the sqlite3 shell)
	// holding a lock; the relay's own writes never contend.
	writePragmas = "_pragma=busy_timeout(10000)&_pragma=synchronous(FULL)" +
		"&_pragma=foreign_keys(0)&_pragma=temp_store(MEMORY)&_pragma=cache_size(-32768)" +
		"&_pragma=journal_size_limit(67108864)&_pragma=wal_autocheckpoint(8192)"
	checkpointPragmas = "_pragma=busy_timeout(10000)&_pragma=synchronous(FULL)&_pragma=cache_size(-2048)"
	readPragmas       = "_pragma=busy_timeout(10000)&_pragma=query_only(1)&_pragma=cache_size(-16384)"
)

func dsn(path, pragmas string) string {
	u := url.URL{Scheme: "file", Path: path, RawQuery: pragmas}
	return u.String()
}

// Path returns the database file's absolute path.
func (s *Store) Path() string { return s.path }

// run is the writer goroutine: it takes what has queued up (at least one
// op), applies it as one transaction, answers every op, and repeats until
// reqs is closed and drained.
//
// A batch with a Put that is small while ops keep arriving lets the
// goroutines ready to run submit first (see hold and yieldForOps): at
// moderate rates the ops then share one transaction, one set of WAL pages
// and one fsync, instead of paying for them one or two at a time. A batch
// without a Put waits up to maxAckHold, until the next Put arrives to
// commit with.
func (s *Store) run() {
	defer close(s.writerDone)
	batch := make([]*op, 0, maxBatchOps)
	var g groupClock
	var timer *time.Timer
	for {
		o, ok := <-s.reqs
		if !ok {
			return
		}
		start := time.Now()
		batch = append(batch[:0], o)
		cost := o.cost()
		closed := false
	fill:
		for len(batch) < maxBatchOps && cost < maxBatchCost {
			select {
			case o, ok := <-s.reqs:
				if !ok {
					closed = true
					break fill
				}
				batch = append(batch, o)
				cost += o.cost()
			default:
				break fill
			}
		}
		if durable(batch) {
			if !closed && g.hold(start, len(batch), cost) > 0 {
				s.stats.held.Add(1)
				// A close seen while yielding ends the loop at its next
				// receive, after this batch.
				s.yieldForOps(&batch, &cost, start)
			}
		} else if !closed {
			// Acks wait for company: a Put to ride with, or more acks.
			s.stats.held.Add(1)
			if timer == nil {
				timer = time.NewTimer(maxAckHold)
			} else {
				timer.Reset(maxAckHold)
			}
		hold:
			for len(batch) < maxBatchOps && cost < maxBatchCost {
				select {
				case o, ok := <-s.reqs:
					if !ok {
						break hold
					}
					batch = append(batch, o)
					cost += o.cost()
					if o.kind == opPut {
						break hold // the held acks ride with this Put's commit
					}
				case <-timer.C:
					break hold
				}
			}
			timer.Stop()
		}
		g.ran(start, len(batch))
		s.w.runBatch(batch)
		select {
		case s.ckptKick <- struct{}{}:
		default:
		}
		for i, o := range batch {
			o.done <- struct{}{}
			batch[i] = nil
		}
	}
}

// yieldForOps lets the goroutines that are ready to run go first — the
// readers and Sends whose Puts are about to be submitted — and adds what
// they submit to the batch: up to holdYields rounds, while the batch is
// below holdTarget and younger than maxHold. Yielding, unlike a timer,
// never sleeps: with nothing else to run it returns at once, and a timer
// of a fraction of a millisecond would fire a millisecond late on an idle
// process. It reports whether reqs was closed.
func (s *Store) yieldForOps(batch *[]*op, cost *int, start time.Time) bool {
	for k := 0; k < holdYields && len(*batch) < holdTarget && *cost < maxBatchCost && time.Since(start) < maxHold; k++ {
		runtime.Gosched()
		for len(*batch) < maxBatchOps && *cost < maxBatchCost {
			select {
			case o, ok := <-s.reqs:
				if !ok {
					return true
				}
				*batch = append(*batch, o)
				*cost += o.cost()
				continue
			default:
			}
			break
		}
	}
	return false
}

// Holding a batch back.
const (
	// maxHold bounds how long a batch waits for company: a fraction of
	// the fsync it shares, so a lone op is never noticeably slower.
	maxHold = 300 * time.Microsecond
	// holdTarget: a batch this large (in ops) is not held back; its fsync
	// is already shared well.
	holdTarget = 32
	// holdYields bounds the rounds of yielding a held batch waits.
	holdYields = 4
	// maxAckHold bounds how long a batch without a Put (acks, sweeps)
	// waits, for a Put to commit with or for more of its kind: nobody
	// waits for an ack's commit but the acking connection's ack worker,
	// and a commit without fsync is cheap in time but not in CPU and WAL
	// pages — a burst of acks (a group message's 1,023 members) applied a
	// few at a time would write many times the pages.
	maxAckHold = 5 * time.Millisecond
)

// groupClock estimates how fast ops arrive, for hold.
type groupClock struct {
	last time.Time     // start of the previous batch
	gap  time.Duration // moving average of the time between ops
}

// ran records a batch of n ops that started at start.
func (g *groupClock) ran(start time.Time, n int) {
	if !g.last.IsZero() {
		gap := start.Sub(g.last) / time.Duration(n)
		if g.gap == 0 {
			g.gap = gap
		} else {
			g.gap += (gap - g.gap) / 4
		}
	}
	g.last = start
}

// hold returns how long to wait for more ops before running a batch of n
// ops (and cost) that started at start; 0 means run it now. It waits only
// when the batch is small and ops have lately come closer together than
// maxHold, so that more are likely within the wait, and no longer than
// filling the batch to holdTarget should take at that pace.
func (g *groupClock) hold(start time.Time, n, cost int) time.Duration {
	if n >= holdTarget || cost >= maxBatchCost || g.gap <= 0 || g.gap >= maxHold || start.Sub(g.last) > time.Second {
		return 0
	}
	return min(maxHold, g.gap*time.Duration(holdTarget-n))
}

func (s *Store) newOp(ctx context.Context, kind opKind) *op {
	o := s.ops.Get().(*op)
	o.kind, o.ctx = kind, ctx
	return o
}

// release returns an op whose result has been read to the pool.
func (s *Store) release(o *op) {
	done := o.done
	*o = op{done: done}
	s.ops.Put(o)
}

// submit hands o to the writer and waits for its result. On error the op
// must not be reused: the writer may still hold it.
func (s *Store) submit(ctx context.Context, o *op) error {
	s.mu.RLock()
	if s.closed {
		s.mu.RUnlock()
		return queue.ErrClosed
	}
	select {
	case s.reqs <- o:
		s.mu.RUnlock()
	case <-ctx.Done():
		s.mu.RUnlock()
		return ctx.Err()
	}
	select {
	case <-o.done:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// Put implements queue.Store.
func (s *Store) Put(ctx context.Context, p queue.Put) (queue.PutResult, error) {
	if s.isClosed.Load() {
		return queue.PutResult{}, queue.ErrClosed
	}
	if err := p.Validate(); err != nil {
		return queue.PutResult{}, err
	}
	o := s.newOp(ctx, opPut)
	o.put = &p
	o.now = s.opts.Now().UnixMilli()
	if err := s.submit(ctx, o); err != nil {
		return queue.PutResult{}, err
	}
	res, err := o.res, o.err
	s.release(o)
	return res, err
}

// Ack implements queue.Store.
func (s *Store) Ack(ctx context.Context, d queue.Device, serverIDs []uint64) (int, error) {
	if s.isClosed.Load() {
		return 0, queue.ErrClosed
	}
	if err := d.Validate(); err != nil {
		return 0, err
	}
	if len(serverIDs) == 0 {
		return 0, nil
	}
	o := s.newOp(ctx, opAck)
	o.dev, o.ids = d, serverIDs
	if err := s.submit(ctx, o); err != nil {
		return 0, err
	}
	n, err := o.n, o.err
	s.release(o)
	return n, err
}

// Sweep implements queue.Store. It works in chunks of a few thousand rows,
// one transaction each, so a large expiry never stalls the senders for long.
func (s *Store) Sweep(ctx context.Context, now time.Time) (int, error) {
	total := 0
	for {
		if s.isClosed.Load() {
			return total, queue.ErrClosed
		}
		o := s.newOp(ctx, opSweep)
		o.now, o.limit = now.UnixMilli(), sweepChunk
		if err := s.submit(ctx, o); err != nil {
			return total, err
		}
		n, more, err := o.n, o.more, o.err
		s.release(o)
		total += n
		if err != nil || !more {
			return total, err
		}
	}
}

// Fetch implements queue.Store.
func (s *Store) Fetch(ctx context.Context, d queue.Device, afterServerID uint64, limit int) ([]queue.Message, error) {
	if err := queue.ValidateFetch(d, limit); err != nil {
		return nil, err
	}
	if afterServerID >= queue.MaxServerID {
		return nil, nil
	}
	r, err := s.reader(ctx)
	if err != nil {
		return nil, err
	}
	defer s.putReader(r)
	now := s.opts.Now().UnixMilli()
	var out []queue.Message
	var bad error
	err = r.fetch.queryContext(ctx, r.dest6, func(v []driver.Value) error {
		id, ok1 := v[0].(int64)
		sender, ok2 := v[1].(string)
		sdev, ok3 := v[2].(int64)
		typ, ok4 := v[3].(int64)
		st, ok5 := v[4].(int64)
		payload, ok6 := v[5].([]byte) // the driver's own copy: ours to keep
		if !(ok1 && ok2 && ok3 && ok4 && ok5 && ok6) || len(payload) == 0 {
			bad = fmt.Errorf("queue fetch %s: message %v has a malformed row or no payload (database damaged)", d, v[0])
			return bad
		}
		out = append(out, queue.Message{
			ServerID: uint64(id), Sender: sender, SenderDevice: uint32(sdev),
			Type: int32(typ), Payload: payload, ServerTime: fromMillis(st),
		})
		return nil
	}, d.Account, int64(d.ID), int64(afterServerID), now, int64(limit))
	if bad != nil {
		return nil, bad
	}
	if err != nil {
		return nil, s.readErr(ctx, "fetch", err)
	}
	return out, nil
}

// count runs a one-integer query on a reader.
func (s *Store) count(ctx context.Context, op string, q func(*reader) *dstmt, args ...driver.Value) (int64, bool, error) {
	r, err := s.reader(ctx)
	if err != nil {
		return 0, false, err
	}
	defer s.putReader(r)
	var n int64
	valid := false
	err = q(r).queryContext(ctx, r.dest1, func(v []driver.Value) error {
		n, valid = v[0].(int64)
		return nil
	}, args...)
	if err != nil {
		return 0, false, s.readErr(ctx, op, err)
	}
	return n, valid, nil
}

// Depth implements queue.Store.
func (s *Store) Depth(ctx context.Context, d queue.Device) (int, error) {
	if err := d.Validate(); err != nil {
		return 0, err
	}
	n, _, err := s.count(ctx, "depth", func(r *reader) *dstmt { return r.depth }, d.Account, int64(d.ID))
	return int(n), err
}

// Oldest implements queue.Store. It visits the head (lowest ServerID) of
// every non-empty queue, one index seek each — a query the relay makes once
// a minute, instead of a global time index that would cost every Put and
// Ack an extra index write. Within one relay's queues ServerID order is
// time order, so the oldest head is the oldest message.
func (s *Store) Oldest(ctx context.Context) (time.Time, error) {
	r, err := s.reader(ctx)
	if err != nil {
		return time.Time{}, err
	}
	defer s.putReader(r)
	var oldest int64
	found := false
	acct, dev := "", int64(-1) // before every device
	for {
		if err := ctx.Err(); err != nil {
			return time.Time{}, err
		}
		more := false
		// Each seek is short; ctx is checked between them, which spares
		// the driver a watcher goroutine per statement.
		err := r.oldest.query(r.dest3, func(v []driver.Value) error {
			a, ok1 := v[0].(string)
			d, ok2 := v[1].(int64)
			st, ok3 := v[2].(int64)
			if !(ok1 && ok2 && ok3) {
				return fmt.Errorf("queue row holds %T, %T, %T (database damaged)", v[0], v[1], v[2])
			}
			acct, dev, more = a, d, true
			if !found || st < oldest {
				oldest, found = st, true
			}
			return nil
		}, acct, dev)
		if err != nil {
			return time.Time{}, s.readErr(ctx, "oldest", err)
		}
		if !more {
			break
		}
	}
	if !found {
		return time.Time{}, nil
	}
	return fromMillis(oldest), nil
}

// Payloads implements queue.PayloadCounter.
func (s *Store) Payloads(ctx context.Context) (int, error) {
	n, _, err := s.count(ctx, "payloads", func(r *reader) *dstmt { return r.payloads })
	return int(n), err
}

// readErr maps a read failure: a cancelled caller gets ctx.Err(), a read
// racing Close gets ErrClosed.
func (s *Store) readErr(ctx context.Context, op string, err error) error {
	if ctx.Err() != nil {
		return ctx.Err()
	}
	if s.isClosed.Load() {
		return queue.ErrClosed
	}
	return wrapErr(op, err)
}

// Stats are counters of the writer since Open.
type Stats struct {
	// Commits counts committed transactions; each is one fsync of the WAL
	// unless it held no Put (LazyCommits). (Commits-LazyCommits)/Puts is
	// the fsyncs per stored message.
	Commits     uint64
	LazyCommits uint64 // commits of batches without a Put: not fsync'd
	Rollbacks   uint64 // batches rolled back (then retried without a failed op, or failed)
	Retries     uint64 // batches run again without an op that failed alone
	Puts        uint64 // Puts committed, duplicates and refused ones included
	Acks        uint64
	Sweeps      uint64 // sweep chunks
	Checkpoints uint64 // background checkpoints
	Held        uint64 // batches held back for more ops (see run)
}

// Stats returns the writer's counters.
func (s *Store) Stats() Stats {
	return Stats{
		Commits:     s.stats.commits.Load(),
		LazyCommits: s.stats.lazyCommits.Load(),
		Held:        s.stats.held.Load(),
		Rollbacks:   s.stats.rollbacks.Load(),
		Retries:     s.stats.retries.Load(),
		Puts:        s.stats.puts.Load(),
		Acks:        s.stats.acks.Load(),
		Sweeps:      s.stats.sweeps.Load(),
		Checkpoints: s.stats.checkpoints.Load(),
	}
}

// Close stops accepting requests, waits for the writes already submitted to
// commit, and closes the database (SQLite then checkpoints the WAL into the
// main file). Calling it again returns the first result.
func (s *Store) Close() error {
	s.closeOnce.Do(func() {
		s.isClosed.Store(true)
		close(s.closing)
		s.mu.Lock()
		s.closed = true
		close(s.reqs)
		s.mu.Unlock()
		<-s.writerDone
		close(s.ckptStop)
		<-s.ckptDone
		s.closeErr = s.closeConns()
	})
	return s.closeErr
}
