package sqlite

import (
	"context"
	"database/sql/driver"
	"errors"
	"fmt"
)

// Check verifies the database: SQLite's own structural check, and the
// store's invariants — every shared payload's reference count equals the
// rows that point at it, every message has a payload, and every queue depth
// the writer keeps in memory equals the device's rows. It reads a consistent
// snapshot and may run while the store is in use; on a large database it
// reads everything, so it is an operator's and a test's tool, not a health
// probe.
func (s *Store) Check(ctx context.Context) error {
	r, err := s.reader(ctx)
	if err != nil {
		return err
	}
	defer s.putReader(r)
	// One read transaction, so the counts compare one snapshot.
	if err := r.c.execScript(`BEGIN`); err != nil {
		return s.readErr(ctx, "check", err)
	}
	defer r.c.execScript(`ROLLBACK`)

	var problems []error
	dest := make([]driver.Value, 1)
	err = r.c.queryOnce(ctx, `PRAGMA quick_check`, dest, func(v []driver.Value) error {
		if msg, _ := v[0].(string); msg != "ok" {
			problems = append(problems, fmt.Errorf("sqlite: %v", v[0]))
		}
		return nil
	})
	if err != nil {
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
		err := r.c.queryOnce(ctx, c.query, dest, func(v []driver.Value) error {
			n, _ = v[0].(int64)
			return nil
		})
		if err != nil {
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
