package cassandra

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync/atomic"
	"time"

	"github.com/gocql/gocql"

	"github.com/hushchat/hush/server/queue"
)

const (
	stmtAckRead       = `SELECT server_id, shared FROM queue_messages WHERE account = ? AND device = ? AND server_id IN ?`
	stmtAckDelete     = `DELETE FROM queue_messages WHERE account = ? AND device = ? AND server_id IN ?`
	stmtDeleteRef     = `DELETE FROM queue_payloads WHERE server_id = ? AND account = ? AND device = ?`
	stmtFirstRef      = `SELECT account FROM queue_payloads WHERE server_id = ? LIMIT 1`
	stmtDeletePayload = `DELETE FROM queue_payloads WHERE server_id = ?`
	stmtReadMark      = `SELECT watermark FROM queue_sweep WHERE id = 0`
	stmtWriteMark     = `INSERT INTO queue_sweep (id, watermark) VALUES (0, ?)`
	stmtExpiryScan    = `SELECT server_id, accounts, devices, shared FROM queue_expiry
		WHERE bucket = ? AND shard = ? AND expires_at > ? AND expires_at <= ?`
	stmtExpiresAt = `SELECT expires_at FROM queue_messages WHERE account = ? AND device = ? AND server_id = ?`
	stmtDeleteMsg = `DELETE FROM queue_messages WHERE account = ? AND device = ? AND server_id = ?`
)

// inChunk bounds the values of one IN restriction.
const inChunk = 100

// Ack implements queue.Store. It reads which of the ids are in the device's
// own partition (ids of other devices cannot be named: the partition key is
// the device), deletes those with one single-partition statement per
// chunk, then drops the device's references to shared payloads and each
// payload whose last reference went.
//
// Two acks of the same id racing each other may both count it: deleted is
// exact for one acker per device, as the relay has.
func (s *Store) Ack(ctx context.Context, d queue.Device, serverIDs []uint64) (int, error) {
	if err := d.Validate(); err != nil {
		return 0, err
	}
	if err := s.enter("ack"); err != nil {
		return 0, err
	}
	defer s.leave()
	if err := ctx.Err(); err != nil {
		return 0, fmt.Errorf("queue ack: %w", err)
	}
	ids := make([]int64, 0, len(serverIDs))
	for _, id := range serverIDs {
		if id != 0 && id <= queue.MaxServerID {
			ids = append(ids, int64(id))
		}
	}
	slices.Sort(ids)
	ids = slices.Compact(ids)
	var found, shared []int64
	for c := range slices.Chunk(ids, inChunk) {
		iter := s.query(ctx, stmtAckRead, d.Account, int32(d.ID), c).Iter()
		var id int64
		var sh bool
		for iter.Scan(&id, &sh) {
			found = append(found, id)
			if sh {
				shared = append(shared, id)
			}
		}
		if err := iter.Close(); err != nil {
			return 0, s.fail(ctx, "ack", err)
		}
	}
	if len(found) == 0 {
		return 0, nil
	}
	ts := s.writeTS()
	for c := range slices.Chunk(found, inChunk) {
		if err := s.query(ctx, stmtAckDelete, d.Account, int32(d.ID), c).WithTimestamp(ts).Exec(); err != nil {
			return 0, s.fail(ctx, "ack", err)
		}
	}
	// References go after the messages: a crash in between leaves a
	// payload nobody can fetch until its TTL, never a message whose
	// payload is gone.
	err := parallel(ctx, len(shared), fanout, func(ctx context.Context, i int) error {
		if err := s.query(ctx, stmtDeleteRef, shared[i], d.Account, int32(d.ID)).WithTimestamp(ts).Exec(); err != nil {
			return err
		}
		return s.dropIfUnreferenced(ctx, shared[i])
	})
	if err != nil {
		return 0, s.fail(ctx, "ack", err)
	}
	return len(found), nil
}

// dropIfUnreferenced deletes a shared payload none of whose references is
// left. References are only ever written with the payload, so once none is
// left none can come back, and racing acks at worst both delete.
func (s *Store) dropIfUnreferenced(ctx context.Context, serverID int64) error {
	var account *string
	err := s.query(ctx, stmtFirstRef, serverID).Scan(&account)
	if errors.Is(err, gocql.ErrNotFound) {
		return nil // already gone
	}
	if err != nil {
		return fmt.Errorf("read payload references: %w", err)
	}
	if account != nil {
		return nil // a reference is left
	}
	// Only the static payload is left.
	return s.query(ctx, stmtDeletePayload, serverID).WithTimestamp(s.writeTS()).Exec()
}

// Sweep implements queue.Store. Cassandra's TTL removes expired rows on its
// own, by the time their expiry passes on the wall clock. Sweep removes
// what the store clock says has expired but the TTL has not yet caught up
// with (a store clock ahead of the clock the TTL was computed with): it
// reads the expiry index from the watermark to now, deletes those Puts'
// remaining messages and shared payloads, and moves the watermark.
// Idempotency records need no sweeping: Put ignores records older than the
// window and TTL drops them.
func (s *Store) Sweep(ctx context.Context, now time.Time) (int, error) {
	if err := s.enter("sweep"); err != nil {
		return 0, err
	}
	defer s.leave()
	if err := ctx.Err(); err != nil {
		return 0, fmt.Errorf("queue sweep: %w", err)
	}
	now = millis(now)
	var mark time.Time
	err := s.query(ctx, stmtReadMark).Scan(&mark)
	if errors.Is(err, gocql.ErrNotFound) {
		mark = now // no watermark: nothing was indexed before Open wrote one
		err = nil
	}
	if err != nil {
		return 0, s.fail(ctx, "sweep", err)
	}
	if !now.After(mark) {
		return 0, nil
	}
	hour := time.Hour.Milliseconds()
	first, last := mark.UnixMilli()/hour, now.UnixMilli()/hour
	var removed atomic.Int64
	for b := first; b <= last; b++ {
		err := parallel(ctx, expiryShards, 4, func(ctx context.Context, shard int) error {
			n, err := s.sweepPartition(ctx, b, int32(shard), mark, now)
			removed.Add(int64(n))
			return err
		})
		if err != nil {
			return int(removed.Load()), s.fail(ctx, "sweep", err)
		}
	}
	if err := s.query(ctx, stmtWriteMark, now).WithTimestamp(s.writeTS()).Exec(); err != nil {
		return int(removed.Load()), s.fail(ctx, "sweep", err)
	}
	return int(removed.Load()), nil
}

// sweepPartition handles one partition of the expiry index: the Puts that
// expired in (mark, now].
func (s *Store) sweepPartition(ctx context.Context, bucket int64, shard int32, mark, now time.Time) (int, error) {
	type put struct {
		id       int64
		accounts []string
		devices  []int32
		shared   bool
	}
	var puts []put
	iter := s.query(ctx, stmtExpiryScan, bucket, shard, mark, now).PageSize(500).Iter()
	var p put
	for iter.Scan(&p.id, &p.accounts, &p.devices, &p.shared) {
		puts = append(puts, p)
		p = put{}
	}
	if err := iter.Close(); err != nil {
		return 0, fmt.Errorf("read expiry index: %w", err)
	}
	removed := 0
	for _, p := range puts {
		if len(p.accounts) != len(p.devices) {
			return removed, fmt.Errorf("expiry index row %d: %d accounts, %d devices", p.id, len(p.accounts), len(p.devices))
		}
		var n atomic.Int64
		err := parallel(ctx, len(p.accounts), fanout, func(ctx context.Context, i int) error {
			var exp time.Time
			err := s.query(ctx, stmtExpiresAt, p.accounts[i], p.devices[i], p.id).Scan(&exp)
			if errors.Is(err, gocql.ErrNotFound) {
				return nil // acked, or already dropped by its TTL
			}
			if err != nil {
				return err
			}
			if now.Before(exp) {
				return nil // cannot happen: the index row carries the same expiry
			}
			if err := s.query(ctx, stmtDeleteMsg, p.accounts[i], p.devices[i], p.id).WithTimestamp(s.writeTS()).Exec(); err != nil {
				return err
			}
			n.Add(1)
			return nil
		})
		removed += int(n.Load())
		if err != nil {
			return removed, err
		}
		if p.shared {
			if err := s.query(ctx, stmtDeletePayload, p.id).WithTimestamp(s.writeTS()).Exec(); err != nil {
				return removed, err
			}
		}
	}
	return removed, nil
}
