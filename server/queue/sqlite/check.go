package sqlite

import (
	"context"
	"errors"
	"fmt"

	"github.com/hushchat/hush/server/queue"
)

// Check verifies the database: SQLite's own structural check, and the
// store's invariants — every shared payload's reference count equals the
// rows that point at it, every message has a payload, and every queue depth
// the writer keeps in memory equals the device's rows. It reads a consistent
// snapshot and may run while the store is in use; on a large database it
// reads everything, so it is an operator's and a test's tool, not a health
// probe.
func (s *Store) Check(ctx context.Context) error {
	if s.isClosed.Load() {
		return queue.ErrClosed
	}
	conn, err := s.rdb.Conn(ctx)
	if err != nil {
		return s.readErr(ctx, "check", err)
	}
	defer conn.Close()
	// One read transaction, so the counts compare one snapshot.
	tx, err := conn.BeginTx(ctx, nil)
	if err != nil {
		return s.readErr(ctx, "check", err)
	}
	defer tx.Rollback()

	var problems []error
	rows, err := tx.QueryContext(ctx, `PRAGMA quick_check`)
	if err != nil {
		return s.readErr(ctx, "check", err)
	}
	for rows.Next() {
		var msg string
		if err := rows.Scan(&msg); err != nil {
			rows.Close()
			return s.readErr(ctx, "check", err)
		}
		if msg != "ok" {
			problems = append(problems, fmt.Errorf("sqlite: %s", msg))
		}
	}
	if err := rows.Close(); err != nil {
		return s.readErr(ctx, "check", err)
	}

	for _, c := range []struct {
		what, query string
	}{
		{"shared payloads whose reference count differs from their references", `
			SELECT count(*) FROM
				(SELECT payload_id AS id, count(*) AS c FROM queue WHERE payload_id IS NOT NULL GROUP BY payload_id) AS q
				FULL OUTER JOIN payloads AS p USING (id)
			WHERE coalesce(q.c, 0) != coalesce(p.refs, 0)`},
		{"messages without a payload", `
			SELECT count(*) FROM queue WHERE (payload IS NULL) = (payload_id IS NULL)`},
	} {
		var n int64
		if err := tx.QueryRowContext(ctx, c.query).Scan(&n); err != nil {
			return s.readErr(ctx, "check", err)
		}
		if n != 0 {
			problems = append(problems, fmt.Errorf("%d %s", n, c.what))
		}
	}
	// The writer checks its own counts, between two batches.
	o := s.newOp(ctx, opVerify)
	if err := s.submit(ctx, o); err != nil {
		return err
	}
	if o.err != nil {
		problems = append(problems, o.err)
	}
	s.release(o)
	if len(problems) > 0 {
		return fmt.Errorf("queue database %s is inconsistent: %w", s.path, errors.Join(problems...))
	}
	return nil
}
