package sqlite

import (
	"context"
	"database/sql/driver"
	"errors"
	"fmt"
	"sort"
	"strings"
	"sync/atomic"
	"time"

	sqlite3 "modernc.org/sqlite/lib"

	"github.com/hushchat/hush/server/queue"
)

// Batch bounds. A batch is one transaction and one WAL fsync; larger batches
// amortise the fsync and the pages it writes better but make every member
// wait for the slowest. The cost of an op is roughly the rows it writes.
const (
	maxBatchOps  = 1024
	maxBatchCost = 16384
	sweepChunk   = 2000
	// maxCachedDepths bounds the writer's memory of per-device counts;
	// beyond it, counts are forgotten and recounted when next needed.
	maxCachedDepths = 1 << 16
)

type opKind uint8

const (
	opPut opKind = iota + 1
	opAck
	opSweep
	opVerify
)

// op is one request handed to the writer goroutine. The submitter owns it
// until it is sent on Store.reqs, the writer until it signals done, then the
// submitter again (unless the submitter gave up waiting, in which case nobody
// touches it any more and the garbage collector takes it).
type op struct {
	kind  opKind
	ctx   context.Context
	now   int64 // unix ms: the clock at submission (Put), the sweep time (Sweep)
	put   *queue.Put
	dev   queue.Device
	ids   []uint64
	limit int

	// Results, written by the writer before done is signalled.
	res  queue.PutResult
	n    int  // Ack: messages deleted; Sweep: messages removed
	more bool // Sweep: a chunk was full, call again
	err  error
	skip bool // not applied: ctx ended before its batch, or it failed alone

	done chan struct{} // buffered(1)
}

func (o *op) cost() int {
	switch o.kind {
	case opPut:
		return len(o.put.Recipients) + 1
	case opAck:
		return len(o.ids) + 1
	case opSweep:
		return o.limit
	default:
		return maxBatchCost
	}
}

func (o *op) name() string {
	switch o.kind {
	case opPut:
		return "put"
	case opAck:
		return "ack"
	case opSweep:
		return "sweep"
	default:
		return "check"
	}
}

// stats are the writer's counters (see Stats).
type stats struct {
	commits, lazyCommits, rollbacks, retries, puts, acks, sweeps, checkpoints, held atomic.Uint64
}

// writer applies batches of ops on the single read-write connection. Only
// the writer goroutine uses it.
//
// Per-device queue depths live in memory: depth holds the committed count of
// recently used devices, counted from the queue table the first time a
// device is needed; batch holds the counts as the current transaction
// changes them and becomes depth when it commits. This keeps the cap check
// of a Put to a lookup, and checking every recipient's cap before anything
// is written means a refused Put never has to be undone.
type writer struct {
	c        *dconn
	maxDepth int
	stats    *stats
	dest1    []driver.Value
	dest2    []driver.Value
	dest3    []driver.Value
	pids     []int64
	devs     map[queue.Device]int
	unrefs   map[int64]int
	depth    map[queue.Device]int // committed counts
	batch    map[queue.Device]int // counts inside the open transaction

	begin, commit, rollback              *dstmt
	lazy                                 bool // synchronous=NORMAL is set
	idemUpsert, idemGet, idemDelete      *dstmt
	queueInsert, queueDelete, queueCount *dstmt
	payloadInsert, payloadDrop, payUnref *dstmt
	sweepQueue, sweepPayloads, sweepIdem *dstmt
}

func newWriter(c *dconn, maxDepth int, st *stats) (*writer, error) {
	w := &writer{
		c:        c,
		maxDepth: maxDepth,
		stats:    st,
		dest1:    make([]driver.Value, 1),
		dest2:    make([]driver.Value, 2),
		dest3:    make([]driver.Value, 3),
		devs:     make(map[queue.Device]int),
		unrefs:   make(map[int64]int),
		depth:    make(map[queue.Device]int),
		batch:    make(map[queue.Device]int),
	}
	// Anonymous "?" parameters: the driver binds them by position without
	// looking up a name per parameter.
	for _, p := range []struct {
		s **dstmt
		q string
	}{
		{&w.begin, `BEGIN IMMEDIATE`},
		{&w.commit, `COMMIT`},
		{&w.rollback, `ROLLBACK`},
		// Insert the idempotency record, or take over one older than the
		// window (the last parameter is the cutoff). No change means a live
		// record: the Put is a retry.
		{&w.idemUpsert, `INSERT INTO idempotency (sender, sender_device, client_id, server_id, server_time)
			VALUES (?, ?, ?, ?, ?)
			ON CONFLICT (sender, sender_device, client_id) DO UPDATE
			SET server_id = excluded.server_id, server_time = excluded.server_time
			WHERE idempotency.server_time <= ?`},
		{&w.idemGet, `SELECT server_id, server_time FROM idempotency
			WHERE sender = ? AND sender_device = ? AND client_id = ?`},
		{&w.idemDelete, `DELETE FROM idempotency WHERE sender = ? AND sender_device = ? AND client_id = ?`},
		{&w.queueInsert, `INSERT INTO queue (account, device, server_id, sender, sender_device, type, payload, payload_id, server_time, expires)
			VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)`},
		{&w.queueDelete, `DELETE FROM queue WHERE account = ? AND device = ? AND server_id = ? RETURNING payload_id`},
		{&w.queueCount, `SELECT count(*) FROM queue WHERE account = ? AND device = ?`},
		{&w.payloadInsert, `INSERT INTO payloads (id, bytes, refs, expires) VALUES (?, ?, ?, ?)`},
		// Dropping k references: delete the payload when they are its
		// last, else decrement.
		{&w.payloadDrop, `DELETE FROM payloads WHERE id = ? AND refs <= ?`},
		{&w.payUnref, `UPDATE payloads SET refs = refs - ? WHERE id = ?`},
		{&w.sweepQueue, `DELETE FROM queue WHERE (account, device, server_id) IN
			(SELECT account, device, server_id FROM queue WHERE expires <= ? ORDER BY expires LIMIT ?)
			RETURNING account, device, payload_id`},
		{&w.sweepPayloads, `DELETE FROM payloads WHERE id IN
			(SELECT id FROM payloads WHERE expires <= ? ORDER BY expires LIMIT ?)`},
		{&w.sweepIdem, `DELETE FROM idempotency WHERE (sender, sender_device, client_id) IN
			(SELECT sender, sender_device, client_id FROM idempotency WHERE server_time <= ? ORDER BY server_time LIMIT ?)`},
	} {
		s, err := c.prepare(p.q)
		if err != nil {
			return nil, err
		}
		*p.s = s
	}
	return w, nil
}

// runBatch applies the batch in one transaction with one commit.
//
// An op that is refused (full queue, duplicate) is decided before it writes
// anything, so it needs no undo. An op that fails unexpectedly half-way (a
// ServerID stored twice: a relay bug) leaves the transaction dirty: the
// batch is rolled back and run again without it, so that one bad op never
// fails the others. A failure of the storage itself (I/O error, disk full,
// the commit's fsync) fails every op of the batch, and none is stored.
func (w *writer) runBatch(batch []*op) {
	for _, o := range batch {
		if err := o.ctx.Err(); err != nil {
			// The caller has stopped waiting; not applying its op keeps
			// the "may or may not be stored" window as small as possible.
			o.err, o.skip = err, true
		}
	}
	for {
		bad, err := w.try(batch)
		if err == nil {
			w.stats.commits.Add(1)
			if w.lazy {
				w.stats.lazyCommits.Add(1)
			}
			w.keepDepths()
			for _, o := range batch {
				if o.skip {
					continue
				}
				switch o.kind {
				case opPut:
					w.stats.puts.Add(1)
				case opAck:
					w.stats.acks.Add(1)
				case opSweep:
					w.stats.sweeps.Add(1)
				}
			}
			return
		}
		_, _ = w.rollback.exec() // fails harmlessly if SQLite already rolled back
		clear(w.batch)
		w.stats.rollbacks.Add(1)
		if bad == nil || storageFailure(err) {
			w.fail(batch, err)
			return
		}
		bad.err, bad.skip = opError(bad, err), true
		w.stats.retries.Add(1)
	}
}

// try runs one attempt of the batch. On error it names the op that failed,
// if one did, and leaves the transaction open for the caller to roll back.
func (w *writer) try(batch []*op) (*op, error) {
	live := false
	for _, o := range batch {
		if !o.skip {
			live = true
			break
		}
	}
	if !live {
		return nil, nil
	}
	if err := w.setSync(durable(batch)); err != nil {
		return nil, err
	}
	if _, err := w.begin.exec(); err != nil {
		return nil, err
	}
	for _, o := range batch {
		if o.skip {
			continue
		}
		o.res, o.n, o.more, o.err = queue.PutResult{}, 0, false, nil
		var err error
		switch o.kind {
		case opPut:
			err = w.put(o)
		case opAck:
			err = w.ack(o)
		case opSweep:
			err = w.sweep(o)
		case opVerify:
			o.err = w.verify()
		}
		if err != nil {
			return o, err
		}
	}
	_, err := w.commit.exec()
	return nil, err
}

// durable reports whether the batch must be fsync'd when it commits: only
// a Put's SendAck promises that it survives power loss. An Ack (or a Sweep)
// committed without fsync survives a crash of the process — the WAL frames
// are in the operating system's cache — and at worst, after a crash of the
// machine, is undone: the message is delivered again and the client, which
// remembers the server ids it processed, only acks it again. The next
// fsync'd commit makes every earlier one durable too (the WAL is one file,
// written in order).
func durable(batch []*op) bool {
	for _, o := range batch {
		if !o.skip && o.kind == opPut {
			return true
		}
	}
	return false
}

// setSync switches the connection's synchronous setting when the kind of
// batch changes; outside a transaction the switch costs no I/O. SQLite
// applies this pragma while compiling it, so it cannot be a prepared
// statement run again.
func (w *writer) setSync(full bool) error {
	if w.lazy != full {
		return nil
	}
	q := `PRAGMA synchronous = FULL`
	if !full {
		q = `PRAGMA synchronous = NORMAL`
	}
	if err := w.c.execScript(q); err != nil {
		return err
	}
	w.lazy = !full
	return nil
}

// fail gives every op of a batch that could not be stored the cause.
func (w *writer) fail(batch []*op, cause error) {
	for _, o := range batch {
		if o.skip {
			continue
		}
		o.res, o.n, o.more = queue.PutResult{}, 0, false
		o.err = wrapErr(o.name(), cause)
	}
}

// storageFailure reports errors of the database or the disk, as opposed to
// errors of one op's data.
func storageFailure(err error) bool {
	switch sqliteCode(err) {
	case sqlite3.SQLITE_CONSTRAINT, sqlite3.SQLITE_TOOBIG, sqlite3.SQLITE_MISMATCH, sqlite3.SQLITE_RANGE:
		return false
	case 0:
		return false // not from SQLite: an op's own check
	}
	return true
}

// opError shapes the error of an op that failed alone.
func opError(o *op, err error) error {
	if o.kind == opPut && isConstraint(err) {
		return fmt.Errorf("%w: server id %d is already stored for a recipient (%v)", queue.ErrInvalid, o.put.ServerID, err)
	}
	return wrapErr(o.name(), err)
}

// count returns d's queue depth as the open transaction sees it.
func (w *writer) count(d queue.Device) (int, error) {
	if n, ok := w.batch[d]; ok {
		return n, nil
	}
	if n, ok := w.depth[d]; ok {
		w.batch[d] = n
		return n, nil
	}
	var n int64
	err := w.queueCount.query(w.dest1, func(v []driver.Value) error {
		n, _ = v[0].(int64)
		return nil
	}, d.Account, int64(d.ID))
	if err != nil {
		return 0, err
	}
	w.batch[d] = int(n)
	return int(n), nil
}

// adjust changes d's count by delta if it is known; an unknown count is
// recounted from the table when it is next needed.
func (w *writer) adjust(d queue.Device, delta int) {
	if n, ok := w.batch[d]; ok {
		w.batch[d] = n + delta
	} else if n, ok := w.depth[d]; ok {
		w.batch[d] = n + delta
	}
}

// keepDepths makes the committed transaction's counts the known ones.
func (w *writer) keepDepths() {
	for d, n := range w.batch {
		w.depth[d] = n
	}
	clear(w.batch)
	for d := range w.depth {
		if len(w.depth) <= maxCachedDepths {
			break
		}
		delete(w.depth, d) // map order is random: a random victim
	}
}

func (w *writer) put(o *op) error {
	p := o.put
	sid := int64(p.ServerID)
	st, exp := p.ServerTime.UnixMilli(), p.ExpiresAt.UnixMilli()
	sender, sdev := p.Sender, int64(p.SenderDevice)

	cutoff := o.now - queue.IdempotencyWindow.Milliseconds()
	n, err := w.idemUpsert.exec(sender, sdev, p.ClientID, sid, st, cutoff)
	if err != nil {
		return err
	}
	if n == 0 {
		return w.duplicate(o)
	}

	// Every cap is checked before a message is written.
	for i := range p.Recipients {
		d := p.Recipients[i].Device
		c, err := w.count(d)
		if err != nil {
			return err
		}
		if c >= w.maxDepth {
			// Refused: take back the idempotency record, so that a retry
			// once there is room is a fresh attempt.
			if _, err := w.idemDelete.exec(sender, sdev, p.ClientID); err != nil {
				return err
			}
			o.err = &queue.QueueFullError{Device: d, Limit: w.maxDepth}
			return nil
		}
	}

	refs := 0
	for i := range p.Recipients {
		r := &p.Recipients[i]
		var payload, pid driver.Value
		typ := int64(r.Type)
		if len(r.Payload) > 0 {
			payload = r.Payload
		} else {
			pid, typ = sid, int64(p.SharedType)
			refs++
		}
		if _, err := w.queueInsert.exec(r.Device.Account, int64(r.Device.ID), sid, sender, sdev, typ, payload, pid, st, exp); err != nil {
			return err
		}
	}
	if refs > 0 {
		if _, err := w.payloadInsert.exec(sid, p.Shared, int64(refs), exp); err != nil {
			return err
		}
	}
	for i := range p.Recipients {
		w.batch[p.Recipients[i].Device]++ // count() put every recipient in batch
	}
	o.res = queue.PutResult{ServerID: p.ServerID, ServerTime: fromMillis(st)}
	return nil
}

// duplicate answers a Put whose idempotency record is live.
func (w *writer) duplicate(o *op) error {
	p := o.put
	found := false
	err := w.idemGet.query(w.dest2, func(d []driver.Value) error {
		id, ok1 := d[0].(int64)
		t, ok2 := d[1].(int64)
		if !ok1 || !ok2 {
			return fmt.Errorf("idempotency record holds %T, %T (database damaged)", d[0], d[1])
		}
		o.res = queue.PutResult{ServerID: uint64(id), Duplicate: true, ServerTime: fromMillis(t)}
		found = true
		return nil
	}, p.Sender, int64(p.SenderDevice), p.ClientID)
	if err != nil {
		return err
	}
	if !found {
		return fmt.Errorf("idempotency record of %s.%d vanished inside the transaction", p.Sender, p.SenderDevice)
	}
	return nil
}

func (w *writer) ack(o *op) error {
	acct, dev := o.dev.Account, int64(o.dev.ID)
	deleted := 0
	w.pids = w.pids[:0]
	row := func(d []driver.Value) error {
		deleted++
		if pid, ok := d[0].(int64); ok {
			w.pids = append(w.pids, pid)
		}
		return nil
	}
	for _, id := range o.ids {
		if id == 0 || id > queue.MaxServerID {
			continue // cannot be stored, so cannot be deleted
		}
		if err := w.queueDelete.query(w.dest1, row, acct, dev, int64(id)); err != nil {
			return err
		}
	}
	w.adjust(o.dev, -deleted)
	for _, pid := range w.pids {
		if err := w.unref(pid, 1); err != nil {
			return err
		}
	}
	o.n = deleted
	return nil
}

// unref drops k references to a shared payload, and the payload with its
// last one.
func (w *writer) unref(pid int64, k int) error {
	gone, err := w.payloadDrop.exec(pid, int64(k))
	if err != nil || gone > 0 {
		return err
	}
	_, err = w.payUnref.exec(int64(k), pid)
	return err
}

// sweep removes up to o.limit expired messages, then (once no expired
// message is left, so no reference can dangle) expired payloads and old
// idempotency records.
func (w *writer) sweep(o *op) error {
	clear(w.devs)
	clear(w.unrefs)
	var bad error
	err := w.sweepQueue.query(w.dest3, func(d []driver.Value) error {
		acct, ok1 := d[0].(string)
		dev, ok2 := d[1].(int64)
		if !ok1 || !ok2 {
			bad = fmt.Errorf("queue row holds account %T, device %T (database damaged)", d[0], d[1])
			return nil
		}
		w.devs[queue.Device{Account: acct, ID: uint32(dev)}]++
		if pid, ok := d[2].(int64); ok {
			w.unrefs[pid]++
		}
		return nil
	}, o.now, int64(o.limit))
	if err != nil {
		return err
	}
	if bad != nil {
		return bad
	}
	removed := 0
	for d, n := range w.devs {
		removed += n
		w.adjust(d, -n)
	}
	for pid, k := range w.unrefs {
		if err := w.unref(pid, k); err != nil {
			return err
		}
	}
	o.n = removed
	if removed == o.limit {
		o.more = true
		return nil
	}
	np, err := w.sweepPayloads.exec(o.now, int64(o.limit))
	if err != nil {
		return err
	}
	ni, err := w.sweepIdem.exec(o.now-queue.IdempotencyWindow.Milliseconds(), int64(o.limit))
	if err != nil {
		return err
	}
	o.more = np == int64(o.limit) || ni == int64(o.limit)
	return nil
}

// verify compares every count the writer relies on with the queue table,
// as the open transaction sees both (a verify may share its batch with
// writes).
func (w *writer) verify() error {
	var bad []string
	check := func(d queue.Device, want int) error {
		var n int64
		err := w.queueCount.query(w.dest1, func(v []driver.Value) error {
			n, _ = v[0].(int64)
			return nil
		}, d.Account, int64(d.ID))
		if err != nil {
			return err
		}
		if int(n) != want {
			bad = append(bad, fmt.Sprintf("%s: %d queued, writer counts %d", d, n, want))
		}
		return nil
	}
	for d, want := range w.batch {
		if err := check(d, want); err != nil {
			return err
		}
	}
	for d, want := range w.depth {
		if _, ok := w.batch[d]; ok {
			continue
		}
		if err := check(d, want); err != nil {
			return err
		}
	}
	if len(bad) > 0 {
		sort.Strings(bad)
		return errors.New("depth counts differ from the queue: " + strings.Join(bad, "; "))
	}
	return nil
}

func fromMillis(ms int64) time.Time { return time.UnixMilli(ms).UTC() }
