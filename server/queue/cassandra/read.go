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

const (
	stmtFetch = `SELECT server_id, sender, sender_device, type, payload, shared, pending, server_time, expires_at
		FROM queue_messages WHERE account = ? AND device = ? AND server_id > ? LIMIT ?`
	stmtReadPayload = `SELECT payload FROM queue_payloads WHERE server_id = ? LIMIT 1`
	stmtHeads       = `SELECT account, device, server_id, server_time, pending FROM queue_messages PER PARTITION LIMIT 1`
	stmtQueueTimes  = `SELECT server_id, server_time, pending FROM queue_messages WHERE account = ? AND device = ?`
	stmtPayloadIDs  = `SELECT DISTINCT server_id FROM queue_payloads`
)

// row is one scanned queue_messages row.
type row struct {
	msg     queue.Message
	shared  bool
	pending bool
	expires time.Time
}

// Fetch implements queue.Store: a slice of the device's partition after
// afterServerID, skipping expired rows and rows of uncommitted staged Puts;
// shared payloads are read once per message from queue_payloads.
func (s *Store) Fetch(ctx context.Context, d queue.Device, afterServerID uint64, limit int) ([]queue.Message, error) {
	if err := queue.ValidateFetch(d, limit); err != nil {
		return nil, err
	}
	if err := s.enter("fetch"); err != nil {
		return nil, err
	}
	defer s.leave()
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("queue fetch: %w", err)
	}
	if afterServerID >= queue.MaxServerID {
		return nil, nil
	}
	now := s.now()
	after := int64(afterServerID)
	var out []queue.Message
	for len(out) < limit {
		want := limit - len(out)
		rows, last, scanned, err := s.fetchRows(ctx, d, after, want, now)
		if err != nil {
			return nil, s.fail(ctx, "fetch", err)
		}
		msgs, err := s.resolve(ctx, rows)
		if err != nil {
			return nil, s.fail(ctx, "fetch", err)
		}
		out = append(out, msgs...)
		if scanned < want {
			break // the partition has nothing more
		}
		after = last
	}
	return out, nil
}

// fetchRows reads up to want rows after `after` and keeps the unexpired
// ones; last is the id of the last row read, scanned how many were read.
func (s *Store) fetchRows(ctx context.Context, d queue.Device, after int64, want int, now time.Time) (rows []row, last int64, scanned int, err error) {
	// Pages of at most 64 rows: a row can hold a 128 KiB payload, and one
	// response frame must stay far below the protocol's frame limit.
	iter := s.query(ctx, stmtFetch, d.Account, int32(d.ID), after, want).PageSize(min(want, 64)).Iter()
	var (
		r          row
		id         int64
		senderDev  int32
		shared     bool
		pending    bool
		serverTime time.Time
		expires    time.Time
		payload    []byte
	)
	for iter.Scan(&id, &r.msg.Sender, &senderDev, &r.msg.Type, &payload, &shared, &pending, &serverTime, &expires) {
		scanned++
		last = id
		if !now.Before(expires) {
			continue // expired: hidden from now on, removed by TTL or Sweep
		}
		r.msg.ServerID = uint64(id)
		r.msg.SenderDevice = uint32(senderDev)
		r.msg.ServerTime = serverTime.UTC()
		r.msg.Payload = payload
		r.shared, r.pending, r.expires = shared, pending, expires
		rows = append(rows, r)
		r = row{}
		payload = nil
	}
	if err := iter.Close(); err != nil {
		return nil, 0, 0, err
	}
	return rows, last, scanned, nil
}

// resolve drops rows of uncommitted staged Puts and fills in shared
// payloads, reading what it needs in parallel.
func (s *Store) resolve(ctx context.Context, rows []row) ([]queue.Message, error) {
	keep := make([]bool, len(rows))
	var todo []int
	for i := range rows {
		if rows[i].pending || rows[i].shared {
			todo = append(todo, i)
		} else {
			keep[i] = true
		}
	}
	if len(todo) > 0 {
		var mu sync.Mutex
		err := parallel(ctx, len(todo), fanout, func(ctx context.Context, j int) error {
			r := &rows[todo[j]]
			if r.pending {
				ok, err := s.committed(ctx, int64(r.msg.ServerID))
				if err != nil || !ok {
					return err
				}
			}
			if r.shared {
				var payload []byte
				err := s.query(ctx, stmtReadPayload, int64(r.msg.ServerID)).Scan(&payload)
				if errors.Is(err, gocql.ErrNotFound) || err == nil && len(payload) == 0 {
					// Cannot happen while the message lives (the payload
					// is written first and expires later); never hand out
					// an empty message if it does.
					s.log.Warn("queue: shared payload missing; message skipped", "server_id", r.msg.ServerID)
					return nil
				}
				if err != nil {
					return fmt.Errorf("read shared payload: %w", err)
				}
				r.msg.Payload = payload
			}
			mu.Lock()
			keep[todo[j]] = true
			mu.Unlock()
			return nil
		})
		if err != nil {
			return nil, err
		}
	}
	out := make([]queue.Message, 0, len(rows))
	for i := range rows {
		if keep[i] {
			out = append(out, rows[i].msg)
		}
	}
	return out, nil
}

// Depth implements queue.Store by counting the partition's clustering keys.
func (s *Store) Depth(ctx context.Context, d queue.Device) (int, error) {
	if err := d.Validate(); err != nil {
		return 0, err
	}
	if err := s.enter("depth"); err != nil {
		return 0, err
	}
	defer s.leave()
	if err := ctx.Err(); err != nil {
		return 0, fmt.Errorf("queue depth: %w", err)
	}
	n, err := s.count(ctx, d, math.MaxInt)
	if err != nil {
		return 0, s.fail(ctx, "depth", err)
	}
	return n, nil
}

// Oldest implements queue.Store: the oldest ServerTime among the first
// message of every device queue (a scan of one row per non-empty
// partition, PER PARTITION LIMIT 1). Server ids and server times come from
// the same relay clock, so a queue's first message is its oldest; across
// relays whose clocks disagree the answer is off by at most the skew.
func (s *Store) Oldest(ctx context.Context) (time.Time, error) {
	if err := s.enter("oldest"); err != nil {
		return time.Time{}, err
	}
	defer s.leave()
	if err := ctx.Err(); err != nil {
		return time.Time{}, fmt.Errorf("queue oldest: %w", err)
	}
	var (
		oldest  time.Time
		account string
		device  int32
		id      int64
		t       time.Time
		pending bool
		staged  []queue.Device
	)
	older := func(t time.Time) {
		if oldest.IsZero() || t.Before(oldest) {
			oldest = t
		}
	}
	iter := s.query(ctx, stmtHeads).PageSize(1000).Iter()
	for iter.Scan(&account, &device, &id, &t, &pending) {
		if pending {
			staged = append(staged, queue.Device{Account: account, ID: uint32(device)})
			continue
		}
		older(t)
	}
	if err := iter.Close(); err != nil {
		return time.Time{}, s.fail(ctx, "oldest", err)
	}
	// Queues headed by a staged row: their first committed message.
	for _, d := range staged {
		iter := s.query(ctx, stmtQueueTimes, d.Account, int32(d.ID)).PageSize(100).Iter()
		for iter.Scan(&id, &t, &pending) {
			if pending {
				ok, err := s.committed(ctx, id)
				if err != nil {
					iter.Close()
					return time.Time{}, s.fail(ctx, "oldest", err)
				}
				if !ok {
					continue
				}
			}
			older(t)
			break
		}
		if err := iter.Close(); err != nil {
			return time.Time{}, s.fail(ctx, "oldest", err)
		}
	}
	if oldest.IsZero() {
		return time.Time{}, nil
	}
	return oldest.UTC(), nil
}

// Payloads implements queue.PayloadCounter by listing the partitions of
// queue_payloads — a full scan of that table's partition keys, for tests and
// operators, not for a hot path.
func (s *Store) Payloads(ctx context.Context) (int, error) {
	if err := s.enter("payloads"); err != nil {
		return 0, err
	}
	defer s.leave()
	if err := ctx.Err(); err != nil {
		return 0, fmt.Errorf("queue payloads: %w", err)
	}
	iter := s.query(ctx, stmtPayloadIDs).PageSize(1000).Iter()
	n := 0
	var id int64
	for iter.Scan(&id) {
		n++
	}
	if err := iter.Close(); err != nil {
		return 0, s.fail(ctx, "payloads", err)
	}
	return n, nil
}
