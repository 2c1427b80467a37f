package sqlite

import (
	"context"
	"database/sql/driver"
	"fmt"
	"sync/atomic"
	"time"

	"github.com/hushchat/hush/server/queue"
)

// Batch bounds. A batch is one transaction and one WAL fsync; larger batches
// amortise the fsync better but make every member wait for the slowest. The
// cost of an op is roughly the rows it writes.
const (
	maxBatchOps  = 1024
	maxBatchCost = 16384
	sweepChunk   = 2000
)

type opKind uint8

const (
	opPut opKind = iota + 1
	opAck
	opSweep
)

// op is one write request handed to the writer goroutine. The submitter owns
// it until it is sent on Store.reqs, the writer until it signals done, then
// the submitter again (unless the submitter gave up waiting, in which case
// nobody touches it any more and the garbage collector takes it).
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
	skip bool // ctx ended before the batch started; not applied

	done chan struct{} // buffered(1)
}

func (o *op) cost() int {
	switch o.kind {
	case opPut:
		return len(o.put.Recipients) + 1
	case opAck:
		return len(o.ids) + 1
	default:
		return o.limit
	}
}

func (o *op) name() string {
	switch o.kind {
	case opPut:
		return "put"
	case opAck:
		return "ack"
	default:
		return "sweep"
	}
}

// stats are the writer's counters (see Stats).
type stats struct {
	commits, rollbacks, puts, acks, sweeps atomic.Uint64
}

// writer applies batches of ops on the single read-write connection. Only
// the writer goroutine uses it.
type writer struct {
	c        *wconn
	maxDepth int64
	stats    *stats
	dest1    []driver.Value
	dest2    []driver.Value
	dest3    []driver.Value
	pids     []int64
	devs     map[queue.Device]int
	unrefs   map[int64]int

	begin, commit, rollback              *wstmt
	savepoint, release, rollbackTo       *wstmt
	idemUpsert, idemGet                  *wstmt
	depthInc, depthDrop, depthDec        *wstmt
	queueInsert, queueDelete             *wstmt
	payloadInsert, payloadDrop, payUnref *wstmt
	sweepQueue, sweepPayloads, sweepIdem *wstmt
}

func newWriter(c *wconn, maxDepth int, st *stats) (*writer, error) {
	w := &writer{
		c:        c,
		maxDepth: int64(maxDepth),
		stats:    st,
		dest1:    make([]driver.Value, 1),
		dest2:    make([]driver.Value, 2),
		dest3:    make([]driver.Value, 3),
		devs:     make(map[queue.Device]int),
		unrefs:   make(map[int64]int),
	}
	for _, p := range []struct {
		s **wstmt
		q string
	}{
		{&w.begin, `BEGIN IMMEDIATE`},
		{&w.commit, `COMMIT`},
		{&w.rollback, `ROLLBACK`},
		{&w.savepoint, `SAVEPOINT op`},
		{&w.release, `RELEASE op`},
		{&w.rollbackTo, `ROLLBACK TO op`},
		// Insert the idempotency record, or take over one older than the
		// window (?6 is the cutoff). No change means a live record: the Put
		// is a retry.
		{&w.idemUpsert, `INSERT INTO idempotency (sender, sender_device, client_id, server_id, server_time)
			VALUES (?1, ?2, ?3, ?4, ?5)
			ON CONFLICT (sender, sender_device, client_id) DO UPDATE
			SET server_id = excluded.server_id, server_time = excluded.server_time
			WHERE idempotency.server_time <= ?6`},
		{&w.idemGet, `SELECT server_id, server_time FROM idempotency
			WHERE sender = ?1 AND sender_device = ?2 AND client_id = ?3`},
		// Count one more message for the device unless it is at the cap
		// (?3): no change means the queue is full.
		{&w.depthInc, `INSERT INTO depth (account, device, n) VALUES (?1, ?2, 1)
			ON CONFLICT (account, device) DO UPDATE SET n = n + 1 WHERE n < ?3`},
		// Removing ?3 messages: drop the row when that empties the queue
		// (the common case: a device acks all it got), else decrement.
		{&w.depthDrop, `DELETE FROM depth WHERE account = ?1 AND device = ?2 AND n <= ?3`},
		{&w.depthDec, `UPDATE depth SET n = n - ?3 WHERE account = ?1 AND device = ?2`},
		{&w.queueInsert, `INSERT INTO queue (account, device, server_id, sender, sender_device, type, payload, payload_id, server_time, expires)
			VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)`},
		{&w.queueDelete, `DELETE FROM queue WHERE account = ?1 AND device = ?2 AND server_id = ?3 RETURNING payload_id`},
		{&w.payloadInsert, `INSERT INTO payloads (id, bytes, refs, expires) VALUES (?1, ?2, ?3, ?4)`},
		{&w.payloadDrop, `DELETE FROM payloads WHERE id = ?1 AND refs <= ?2`},
		{&w.payUnref, `UPDATE payloads SET refs = refs - ?2 WHERE id = ?1`},
		{&w.sweepQueue, `DELETE FROM queue WHERE (account, device, server_id) IN
			(SELECT account, device, server_id FROM queue WHERE expires <= ?1 ORDER BY expires LIMIT ?2)
			RETURNING account, device, payload_id`},
		{&w.sweepPayloads, `DELETE FROM payloads WHERE id IN
			(SELECT id FROM payloads WHERE expires <= ?1 ORDER BY expires LIMIT ?2)`},
		{&w.sweepIdem, `DELETE FROM idempotency WHERE (sender, sender_device, client_id) IN
			(SELECT sender, sender_device, client_id FROM idempotency WHERE server_time <= ?1 ORDER BY server_time LIMIT ?2)`},
	} {
		s, err := c.prepare(p.q)
		if err != nil {
			return nil, err
		}
		*p.s = s
	}
	return w, nil
}

// runBatch applies the batch in one transaction. Each op runs inside its own
// savepoint, so an op that fails on its own (a full queue, a ServerID stored
// twice) is undone alone and the others commit; only a failure of the
// transaction itself (I/O error, disk full, the commit's fsync) fails them
// all, and then nothing of the batch is stored.
func (w *writer) runBatch(batch []*op) {
	live := 0
	for _, o := range batch {
		if err := o.ctx.Err(); err != nil {
			// The caller has stopped waiting; not applying its op keeps
			// the "may or may not be stored" window as small as possible.
			o.err, o.skip = err, true
			continue
		}
		live++
	}
	if live == 0 {
		return
	}
	if _, err := w.begin.exec(); err != nil {
		w.fail(batch, err)
		return
	}
	for _, o := range batch {
		if o.skip {
			continue
		}
		if err := w.apply(o); err != nil {
			_, _ = w.rollback.exec() // fails harmlessly if SQLite already rolled back
			w.stats.rollbacks.Add(1)
			w.fail(batch, err)
			return
		}
	}
	if _, err := w.commit.exec(); err != nil {
		_, _ = w.rollback.exec()
		w.stats.rollbacks.Add(1)
		w.fail(batch, err)
		return
	}
	w.stats.commits.Add(1)
}

// fail gives every applied op of a batch that was rolled back the cause.
func (w *writer) fail(batch []*op, cause error) {
	for _, o := range batch {
		if o.skip {
			continue
		}
		o.res, o.n, o.more = queue.PutResult{}, 0, false
		o.err = wrapErr(o.name(), cause)
	}
}

// apply runs one op in a savepoint. It returns an error only when the
// transaction itself is broken; an error of the op alone is left in o.err.
func (w *writer) apply(o *op) error {
	if _, err := w.savepoint.exec(); err != nil {
		return err
	}
	var err error
	switch o.kind {
	case opPut:
		err = w.put(o)
		w.stats.puts.Add(1)
	case opAck:
		err = w.ack(o)
		w.stats.acks.Add(1)
	case opSweep:
		err = w.sweep(o)
		w.stats.sweeps.Add(1)
	}
	if err != nil {
		// Undo this op only. If SQLite has already rolled the whole
		// transaction back (it does so on some I/O and memory errors),
		// ROLLBACK TO fails and the batch is lost: report the op's cause.
		if _, rerr := w.rollbackTo.exec(); rerr != nil {
			return err
		}
		if _, rerr := w.release.exec(); rerr != nil {
			return err
		}
		o.res, o.n, o.more = queue.PutResult{}, 0, false
		o.err = opError(o, err)
		return nil
	}
	if _, err := w.release.exec(); err != nil {
		return err
	}
	return nil
}

// opError shapes the error of an op that failed on its own.
func opError(o *op, err error) error {
	if _, ok := err.(*queue.QueueFullError); ok {
		return err
	}
	if o.kind == opPut && isConstraint(err) {
		return fmt.Errorf("%w: server id %d is already stored for a recipient (%v)", queue.ErrInvalid, o.put.ServerID, err)
	}
	return wrapErr(o.name(), err)
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
		}, sender, sdev, p.ClientID)
		if err != nil {
			return err
		}
		if !found {
			return fmt.Errorf("idempotency record of %s.%d vanished inside the transaction", sender, sdev)
		}
		return nil
	}

	refs := 0
	for i := range p.Recipients {
		r := &p.Recipients[i]
		acct, dev := r.Device.Account, int64(r.Device.ID)
		n, err := w.depthInc.exec(acct, dev, w.maxDepth)
		if err != nil {
			return err
		}
		if n == 0 {
			return &queue.QueueFullError{Device: r.Device, Limit: int(w.maxDepth)}
		}
		var payload, pid driver.Value
		typ := int64(r.Type)
		if len(r.Payload) > 0 {
			payload = r.Payload
		} else {
			pid, typ = sid, int64(p.SharedType)
			refs++
		}
		if _, err := w.queueInsert.exec(acct, dev, sid, sender, sdev, typ, payload, pid, st, exp); err != nil {
			return err
		}
	}
	if refs > 0 {
		if _, err := w.payloadInsert.exec(sid, p.Shared, int64(refs), exp); err != nil {
			return err
		}
	}
	o.res = queue.PutResult{ServerID: p.ServerID, ServerTime: fromMillis(st)}
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
	if deleted > 0 {
		if err := w.dropDepth(acct, dev, deleted); err != nil {
			return err
		}
	}
	for _, pid := range w.pids {
		if err := w.unref(pid, 1); err != nil {
			return err
		}
	}
	o.n = deleted
	return nil
}

func (w *writer) dropDepth(acct string, dev int64, n int) error {
	gone, err := w.depthDrop.exec(acct, dev, int64(n))
	if err != nil || gone > 0 {
		return err
	}
	_, err = w.depthDec.exec(acct, dev, int64(n))
	return err
}

// unref drops k references to a shared payload and the payload with its
// last one.
func (w *writer) unref(pid int64, k int) error {
	gone, err := w.payloadDrop.exec(pid, int64(k))
	if err != nil || gone > 0 {
		return err
	}
	_, err = w.payUnref.exec(pid, int64(k))
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
		if err := w.dropDepth(d.Account, int64(d.ID), n); err != nil {
			return err
		}
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

func fromMillis(ms int64) time.Time { return time.UnixMilli(ms).UTC() }
