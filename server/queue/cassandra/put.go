package cassandra

import (
	"context"
	"errors"
	"fmt"
	"math"
	"sync"
	"time"

	"github.com/gocql/gocql"

	"github.com/hushchat/hush/server/queue"
)

// maxTTL is Cassandra's largest TTL (20 years).
const maxTTL = 20 * 365 * 24 * 60 * 60

// payloadGrace keeps shared payloads and commit records a minute longer
// than the messages that need them, so a message never outlives them.
const payloadGrace = 60

// expiryShards spreads one hour of the expiry index over this many
// partitions, so no single partition takes every Put of the cluster. It is
// part of the data layout: changing it needs a schema version.
const expiryShards = 16

// fanout bounds the requests one operation keeps in flight (cap checks of
// a group send, staged rows, sweep reads).
const fanout = 32

var errInProgress = errors.New("an earlier attempt of this message is still being stored; retry later")

const (
	stmtInsertMsg = `INSERT INTO queue_messages (account, device, server_id, sender, sender_device, type, payload, shared, pending, server_time, expires_at)
		VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) USING TTL ?`
	stmtInsertPayload = `INSERT INTO queue_payloads (server_id, payload) VALUES (?, ?) USING TTL ?`
	stmtInsertRef     = `INSERT INTO queue_payloads (server_id, account, device) VALUES (?, ?, ?) USING TTL ?`
	stmtInsertDone    = `INSERT INTO queue_done (sender, sender_device, client_id, server_id, server_time) VALUES (?, ?, ?, ?, ?) USING TTL ?`
	stmtInsertCommit  = `INSERT INTO queue_commits (server_id) VALUES (?) USING TTL ?`
	stmtInsertExpiry  = `INSERT INTO queue_expiry (bucket, shard, expires_at, server_id, accounts, devices, shared) VALUES (?, ?, ?, ?, ?, ?, ?) USING TTL ?`

	claimCols       = `server_id, server_time, expires_at, write_ts, owner, accepted_at, leased_at`
	stmtInsertClaim = `INSERT INTO queue_claims (sender, sender_device, client_id, ` + claimCols + `)
		VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?) IF NOT EXISTS USING TTL ?`
	stmtUpdateClaim = `UPDATE queue_claims USING TTL ? SET server_id = ?, server_time = ?, expires_at = ?, write_ts = ?, owner = ?, accepted_at = ?, leased_at = ?
		WHERE sender = ? AND sender_device = ? AND client_id = ? IF owner = ?`
	stmtReadClaim    = `SELECT ` + claimCols + ` FROM queue_claims WHERE sender = ? AND sender_device = ? AND client_id = ?`
	stmtReleaseClaim = `DELETE FROM queue_claims WHERE sender = ? AND sender_device = ? AND client_id = ? IF owner = ?`
	stmtReadDone     = `SELECT server_id FROM queue_done WHERE sender = ? AND sender_device = ? AND client_id = ?`
	stmtCountQueue   = `SELECT server_id, pending FROM queue_messages WHERE account = ? AND device = ?`
	stmtCountRows    = `SELECT COUNT(*) FROM queue_messages WHERE account = ? AND device = ?`
)

// identity is what a Put is stored under. The first attempt of a message
// picks it; a retry that takes over a dead attempt reuses it, so that both
// attempts write the same rows with the same timestamp.
type identity struct {
	serverID   int64
	serverTime time.Time // millisecond precision
	expiresAt  time.Time // millisecond precision
	writeTS    int64     // Cassandra write timestamp of every row, µs
}

type idemKey struct {
	sender       string
	senderDevice int32
	clientID     []byte
}

// claimRow is a row of queue_claims.
type claimRow struct {
	id         identity
	owner      gocql.UUID
	acceptedAt time.Time
	leasedAt   time.Time
}

// claimed is the outcome of claim: either a duplicate of a stored message,
// or ownership of the claim (fresh: this attempt's own identity; a
// take-over: the dead attempt's).
type claimed struct {
	id    identity
	owner gocql.UUID
	dup   bool
	fresh bool
}

func millis(t time.Time) time.Time { return time.UnixMilli(t.UnixMilli()).UTC() }

// ttlUntil returns a TTL in seconds that keeps a row until at least t.
// Cassandra counts a TTL from the current second rounded down, so a row
// can die up to a second before now+ttl: one second more than the ceiling
// makes sure it never dies before the store considers it expired. At least
// 1: a TTL of 0 would mean "forever".
func ttlUntil(t, now time.Time) int {
	d := t.Sub(now)
	if d <= 0 {
		return 1
	}
	return int(min(math.Ceil(d.Seconds())+1, maxTTL))
}

// Put implements queue.Store. See the package doc for the protocol: claim,
// cap check, then one logged batch (or the staged path for large Puts).
func (s *Store) Put(ctx context.Context, p queue.Put) (queue.PutResult, error) {
	if err := p.Validate(); err != nil {
		return queue.PutResult{}, err
	}
	if err := s.enter("put"); err != nil {
		return queue.PutResult{}, err
	}
	defer s.leave()
	if err := ctx.Err(); err != nil {
		return queue.PutResult{}, fmt.Errorf("queue put: %w", err)
	}
	now := s.now()
	if p.ExpiresAt.Sub(now) > maxTTL*time.Second {
		return queue.PutResult{}, fmt.Errorf("%w: expiry %v is more than 20 years ahead (Cassandra's largest TTL)", queue.ErrInvalid, p.ExpiresAt)
	}
	k := idemKey{p.Sender, int32(p.SenderDevice), p.ClientID}
	mine := identity{
		serverID:   int64(p.ServerID),
		serverTime: millis(p.ServerTime),
		expiresAt:  millis(p.ExpiresAt),
		writeTS:    s.writeTS(),
	}
	// The cap check does not depend on the claim: run both at once, and
	// drop the count if the claim finds a duplicate (which must be
	// answered even when a queue is full) or takes over a dead attempt
	// (which already passed its check, and whose rows may be counted).
	type capResult struct {
		full *queue.QueueFullError
		err  error
	}
	cctx, stopCount := context.WithCancel(ctx)
	defer stopCount()
	caps := make(chan capResult, 1)
	go func() {
		full, err := s.checkCaps(cctx, &p)
		caps <- capResult{full, err}
	}()
	c, err := s.claim(ctx, k, mine)
	if err != nil || !c.fresh {
		stopCount()
		<-caps
	}
	if err != nil {
		return queue.PutResult{}, s.fail(ctx, "put", err)
	}
	if c.dup {
		return queue.PutResult{ServerID: uint64(c.id.serverID), Duplicate: true, ServerTime: c.id.serverTime}, nil
	}
	if c.fresh {
		cr := <-caps
		if cr.err != nil || cr.full != nil {
			s.release(ctx, k, c.owner)
			if cr.err != nil {
				return queue.PutResult{}, s.fail(ctx, "put", cr.err)
			}
			return queue.PutResult{}, cr.full
		}
	}
	if err := ctx.Err(); err != nil {
		if c.fresh {
			s.release(ctx, k, c.owner)
		}
		return queue.PutResult{}, fmt.Errorf("queue put: %w", err)
	}
	mayHaveLanded, err := s.write(ctx, &p, k, c.id)
	if err != nil {
		// Only the first owner may give the claim back, and only when
		// nothing can become visible later: then the retry is a fresh
		// attempt. Otherwise the claim stays; a retry waits for the
		// outcome or takes the claim over and finishes the job under the
		// same identity.
		if c.fresh && !mayHaveLanded {
			s.release(ctx, k, c.owner)
		}
		return queue.PutResult{}, s.fail(ctx, "put", err)
	}
	return queue.PutResult{ServerID: uint64(c.id.serverID), Duplicate: !c.fresh, ServerTime: c.id.serverTime}, nil
}

// claim takes the idempotency claim of k for mine, or finds the message it
// duplicates, or takes over a claim whose writer is gone.
func (s *Store) claim(ctx context.Context, k idemKey, mine identity) (claimed, error) {
	owner, err := gocql.RandomUUID()
	if err != nil {
		return claimed{}, fmt.Errorf("claim owner id: %w", err)
	}
	giveUp := time.Now().Add(s.cfg.ClaimTimeout)
	backoff := 2 * time.Millisecond
	for {
		now := s.now()
		ex, applied, err := s.insertClaim(ctx, k, mine, owner, now)
		if err != nil {
			return claimed{}, fmt.Errorf("claim client id: %w", err)
		}
		if applied || ex.owner == owner {
			return claimed{id: mine, owner: owner, fresh: true}, nil
		}
		for ex != nil {
			now = s.now()
			if !now.Before(ex.acceptedAt.Add(queue.IdempotencyWindow)) {
				// Remembered longer than the window (Cassandra's TTL has
				// not caught up with the store clock): a new message.
				ok, err := s.casClaim(ctx, k, ex.owner, mine, owner, now, now, queue.IdempotencyWindow)
				if err != nil {
					return claimed{}, err
				}
				if ok {
					return claimed{id: mine, owner: owner, fresh: true}, nil
				}
			} else {
				done, err := s.readDone(ctx, k)
				if err != nil {
					return claimed{}, err
				}
				if done == ex.id.serverID {
					return claimed{id: ex.id, dup: true}, nil
				}
				if !now.Before(ex.leasedAt.Add(s.cfg.ClaimTimeout)) {
					left := ex.acceptedAt.Add(queue.IdempotencyWindow).Sub(now)
					ok, err := s.casClaim(ctx, k, ex.owner, ex.id, owner, ex.acceptedAt, now, left)
					if err != nil {
						return claimed{}, err
					}
					if ok {
						s.log.Warn("queue: took over a stalled put", "server_id", ex.id.serverID)
						return claimed{id: ex.id, owner: owner}, nil
					}
				} else {
					// Another attempt is writing: wait for its outcome.
					if time.Now().After(giveUp) {
						return claimed{}, queue.Unavailable("put", errInProgress)
					}
					if err := s.sleep(ctx, backoff); err != nil {
						return claimed{}, err
					}
					backoff = min(2*backoff, 100*time.Millisecond)
				}
			}
			if ex, err = s.readClaim(ctx, k); err != nil {
				return claimed{}, err
			}
		}
		// The claim was given back (a refused or failed attempt): try to
		// take it afresh.
	}
}

func (s *Store) sleep(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	case <-s.closing:
		return fmt.Errorf("queue put: %w", queue.ErrClosed)
	}
}

func claimTTL(left time.Duration) int {
	return int(max(left, 0)/time.Second) + payloadGrace
}

func (s *Store) insertClaim(ctx context.Context, k idemKey, id identity, owner gocql.UUID, now time.Time) (*claimRow, bool, error) {
	m := map[string]any{}
	applied, err := s.lwt(ctx, stmtInsertClaim, k.sender, k.senderDevice, k.clientID,
		id.serverID, id.serverTime, id.expiresAt, id.writeTS, owner, now, now, claimTTL(queue.IdempotencyWindow)).MapScanCAS(m)
	if err != nil {
		return nil, false, err
	}
	if applied {
		return nil, true, nil
	}
	ex, err := claimFromMap(m)
	if err != nil {
		return nil, false, err
	}
	return ex, false, nil
}

// casClaim replaces the claim held by prev with id, owned by owner.
func (s *Store) casClaim(ctx context.Context, k idemKey, prev gocql.UUID, id identity, owner gocql.UUID, accepted, leased time.Time, left time.Duration) (bool, error) {
	applied, err := s.lwt(ctx, stmtUpdateClaim, claimTTL(left), id.serverID, id.serverTime, id.expiresAt, id.writeTS,
		owner, accepted, leased, k.sender, k.senderDevice, k.clientID, prev).MapScanCAS(map[string]any{})
	if err != nil {
		return false, fmt.Errorf("update claim: %w", err)
	}
	if applied {
		return true, nil
	}
	// Not applied: someone else changed it — or our own earlier attempt of
	// this very statement did, and timed out. The owner id tells.
	cur, err := s.readClaim(ctx, k)
	if err != nil {
		return false, err
	}
	return cur != nil && cur.owner == owner, nil
}

func (s *Store) readClaim(ctx context.Context, k idemKey) (*claimRow, error) {
	var c claimRow
	err := s.serialRead(ctx, stmtReadClaim, k.sender, k.senderDevice, k.clientID).
		Scan(&c.id.serverID, &c.id.serverTime, &c.id.expiresAt, &c.id.writeTS, &c.owner, &c.acceptedAt, &c.leasedAt)
	if errors.Is(err, gocql.ErrNotFound) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("read claim: %w", err)
	}
	c.id.serverTime, c.id.expiresAt = c.id.serverTime.UTC(), c.id.expiresAt.UTC()
	return &c, nil
}

func claimFromMap(m map[string]any) (*claimRow, error) {
	var c claimRow
	var ok [7]bool
	c.id.serverID, ok[0] = m["server_id"].(int64)
	c.id.serverTime, ok[1] = m["server_time"].(time.Time)
	c.id.expiresAt, ok[2] = m["expires_at"].(time.Time)
	c.id.writeTS, ok[3] = m["write_ts"].(int64)
	c.owner, ok[4] = m["owner"].(gocql.UUID)
	c.acceptedAt, ok[5] = m["accepted_at"].(time.Time)
	c.leasedAt, ok[6] = m["leased_at"].(time.Time)
	for _, b := range ok {
		if !b {
			return nil, fmt.Errorf("claim row has unexpected columns %v", m)
		}
	}
	c.id.serverTime, c.id.expiresAt = c.id.serverTime.UTC(), c.id.expiresAt.UTC()
	return &c, nil
}

func (s *Store) readDone(ctx context.Context, k idemKey) (int64, error) {
	var id int64
	err := s.query(ctx, stmtReadDone, k.sender, k.senderDevice, k.clientID).Scan(&id)
	if errors.Is(err, gocql.ErrNotFound) {
		return 0, nil
	}
	if err != nil {
		return 0, fmt.Errorf("read idempotency record: %w", err)
	}
	return id, nil
}

// release gives a claim back, so the retry of a refused or failed Put is a
// fresh attempt. It runs even when ctx has ended. A failed release leaves a
// pending claim, which a retry takes over after ClaimTimeout.
func (s *Store) release(ctx context.Context, k idemKey, owner gocql.UUID) {
	rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), s.cfg.Timeout)
	defer cancel()
	if _, err := s.lwt(rctx, stmtReleaseClaim, k.sender, k.senderDevice, k.clientID, owner).MapScanCAS(map[string]any{}); err != nil {
		s.log.Warn("queue: could not release an idempotency claim; a retry will take it over", "err", err)
	}
}

// checkCaps counts every recipient's queue and returns a *QueueFullError
// for the first full one in recipient order. The count is a server-side
// COUNT(*) of the partition, which the cap itself keeps small; only a
// queue that looks full is recounted exactly (staged rows of uncommitted
// Puts do not count).
func (s *Store) checkCaps(ctx context.Context, p *queue.Put) (*queue.QueueFullError, error) {
	limit := s.opts.DepthLimit()
	full := make([]bool, len(p.Recipients))
	err := parallel(ctx, len(p.Recipients), fanout, func(ctx context.Context, i int) error {
		d := p.Recipients[i].Device
		var n int64
		if err := s.query(ctx, stmtCountRows, d.Account, int32(d.ID)).Scan(&n); err != nil {
			return err
		}
		if n >= int64(limit) {
			exact, err := s.count(ctx, d, limit)
			if err != nil {
				return err
			}
			full[i] = exact >= limit
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("check queue caps: %w", err)
	}
	for i, f := range full {
		if f {
			return &queue.QueueFullError{Device: p.Recipients[i].Device, Limit: limit}, nil
		}
	}
	return nil, nil
}

// count returns the number of visible messages (expired ones included
// until swept) in d's queue, stopping at limit. It reads only the
// clustering keys; rows of a staged Put count once it is committed.
func (s *Store) count(ctx context.Context, d queue.Device, limit int) (int, error) {
	iter := s.query(ctx, stmtCountQueue, d.Account, int32(d.ID)).PageSize(min(limit, 5000)).Iter()
	var (
		n       int
		id      int64
		pending bool
		staged  []int64
	)
	for n < limit && iter.Scan(&id, &pending) {
		if pending {
			staged = append(staged, id)
		} else {
			n++
		}
	}
	if err := iter.Close(); err != nil {
		return 0, err
	}
	for _, id := range staged {
		if n >= limit {
			break
		}
		ok, err := s.committed(ctx, id)
		if err != nil {
			return 0, err
		}
		if ok {
			n++
		}
	}
	return n, nil
}

func (s *Store) committed(ctx context.Context, serverID int64) (bool, error) {
	var id int64
	err := s.query(ctx, `SELECT server_id FROM queue_commits WHERE server_id = ?`, serverID).Scan(&id)
	if errors.Is(err, gocql.ErrNotFound) {
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("read commit record: %w", err)
	}
	return true, nil
}

// Size estimates of what a statement adds to a batch, as Cassandra counts
// it for batch_size_fail_threshold (cell values plus per-cell metadata),
// rounded up.
const (
	cellOverhead = 24
	rowOverhead  = 64
)

func msgSize(p *queue.Put, r *queue.Recipient) int {
	return rowOverhead + 11*cellOverhead + 2*len(r.Device.Account) + len(p.Sender) + len(r.Payload) + 64
}

// batchSize estimates the single logged batch of p.
func (s *Store) batchSize(p *queue.Put) int {
	n := rowOverhead + 5*cellOverhead + len(p.Sender) + len(p.ClientID) + 32 // done
	n += rowOverhead + 7*cellOverhead + 64                                   // expiry index row
	for i := range p.Recipients {
		r := &p.Recipients[i]
		n += msgSize(p, r) + len(r.Device.Account) + 8 // its share of the expiry row's lists
		if len(r.Payload) == 0 {
			n += rowOverhead + 3*cellOverhead + len(r.Device.Account) // its reference
		}
	}
	if p.SharedRefs() > 0 {
		n += rowOverhead + 2*cellOverhead + len(p.Shared)
	}
	return n
}

// write stores p under id. mayHaveLanded reports, on error, whether the
// messages can have become (or can still become) visible.
func (s *Store) write(ctx context.Context, p *queue.Put, k idemKey, id identity) (mayHaveLanded bool, err error) {
	now := s.now()
	ttl := ttlUntil(id.expiresAt, now)
	// The index row may die a little early (floor): it only has to live
	// while the store clock says the messages have not expired yet.
	idxTTL := max(1, int(id.expiresAt.Sub(now)/time.Second))
	idxTTL = min(idxTTL, maxTTL)
	keepTTL := min(ttl+payloadGrace, maxTTL)
	doneTTL := claimTTL(queue.IdempotencyWindow)
	shared := p.SharedRefs() > 0

	accounts := make([]string, len(p.Recipients))
	devices := make([]int32, len(p.Recipients))
	for i := range p.Recipients {
		accounts[i] = p.Recipients[i].Device.Account
		devices[i] = int32(p.Recipients[i].Device.ID)
	}
	expiryArgs := []any{id.expiresAt.UnixMilli() / time.Hour.Milliseconds(), int32(id.serverID % expiryShards),
		id.expiresAt, id.serverID, accounts, devices, shared, idxTTL}
	msgArgs := func(r *queue.Recipient, pending bool) []any {
		// Unset, not null: a null would write a tombstone cell.
		var typ, payload, isShared any = r.Type, r.Payload, gocql.UnsetValue
		if len(r.Payload) == 0 {
			typ, payload, isShared = p.SharedType, gocql.UnsetValue, true
		}
		var pend any = gocql.UnsetValue
		if pending {
			pend = true
		}
		return []any{r.Device.Account, int32(r.Device.ID), id.serverID, p.Sender, int32(p.SenderDevice), typ,
			payload, isShared, pend, id.serverTime, id.expiresAt, ttl}
	}
	doneArgs := []any{k.sender, k.senderDevice, k.clientID, id.serverID, id.serverTime, doneTTL}

	if s.batchSize(p) <= s.cfg.MaxBatchBytes {
		// One logged batch: the batchlog makes every row land or none,
		// and the done record is among them.
		b := s.batch(ctx, gocql.LoggedBatch, id.writeTS)
		for i := range p.Recipients {
			add(b, stmtInsertMsg, msgArgs(&p.Recipients[i], false)...)
		}
		if shared {
			add(b, stmtInsertPayload, id.serverID, p.Shared, keepTTL)
			for i := range p.Recipients {
				if r := &p.Recipients[i]; len(r.Payload) == 0 {
					add(b, stmtInsertRef, id.serverID, r.Device.Account, int32(r.Device.ID), keepTTL)
				}
			}
		}
		add(b, stmtInsertExpiry, expiryArgs...)
		add(b, stmtInsertDone, doneArgs...)
		if err := s.s.ExecuteBatch(b); err != nil {
			return !definitelyNotApplied(err), fmt.Errorf("write batch of %d recipients: %w", len(p.Recipients), err)
		}
		return false, nil
	}

	// Staged: too large for one batch. Everything is written invisible
	// first — the index row and the shared payload (single partitions,
	// exempt from the batch size limit), then the rows marked pending —
	// and one small logged batch of commit record + done record makes the
	// whole Put visible at once.
	err = parallel(ctx, 2, fanout, func(ctx context.Context, i int) error {
		if i == 0 {
			return s.query(ctx, stmtInsertExpiry, expiryArgs...).WithTimestamp(id.writeTS).Exec()
		}
		if !shared {
			return nil
		}
		b := s.batch(ctx, gocql.UnloggedBatch, id.writeTS)
		add(b, stmtInsertPayload, id.serverID, p.Shared, keepTTL)
		for i := range p.Recipients {
			if r := &p.Recipients[i]; len(r.Payload) == 0 {
				add(b, stmtInsertRef, id.serverID, r.Device.Account, int32(r.Device.ID), keepTTL)
			}
		}
		return s.s.ExecuteBatch(b)
	})
	if err == nil {
		err = parallel(ctx, len(p.Recipients), fanout, func(ctx context.Context, i int) error {
			return s.query(ctx, stmtInsertMsg, msgArgs(&p.Recipients[i], true)...).WithTimestamp(id.writeTS).Exec()
		})
	}
	if err != nil {
		// Nothing is visible without the commit record.
		return false, fmt.Errorf("stage %d recipients: %w", len(p.Recipients), err)
	}
	b := s.batch(ctx, gocql.LoggedBatch, id.writeTS)
	add(b, stmtInsertCommit, id.serverID, keepTTL)
	add(b, stmtInsertDone, doneArgs...)
	if err := s.s.ExecuteBatch(b); err != nil {
		return !definitelyNotApplied(err), fmt.Errorf("commit %d recipients: %w", len(p.Recipients), err)
	}
	return false, nil
}

// parallel runs fn(0..n-1) with at most limit in flight and returns the
// first error; the others are cancelled.
func parallel(ctx context.Context, n, limit int, fn func(ctx context.Context, i int) error) error {
	if n == 1 {
		return fn(ctx, 0)
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var (
		wg    sync.WaitGroup
		once  sync.Once
		first error
		sem   = make(chan struct{}, limit)
	)
loop:
	for i := range n {
		select {
		case sem <- struct{}{}:
		case <-ctx.Done():
			break loop
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			if err := fn(ctx, i); err != nil {
				once.Do(func() { first = err; cancel() })
			}
		}()
	}
	wg.Wait()
	if first != nil {
		return first
	}
	return ctx.Err()
}
