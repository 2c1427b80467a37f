package sqlite

import (
	"context"
	"database/sql/driver"
	"errors"
	"fmt"
	"io"

	msqlite "modernc.org/sqlite"
	sqlite3 "modernc.org/sqlite/lib"

	"github.com/hushchat/hush/server/queue"
)

// dconn is the writer's connection, used at the database/sql/driver level:
// the writer goroutine owns it alone, so database/sql's pooling, locking and
// per-call allocations would be pure overhead on the hottest path of the
// relay. It is not safe for concurrent use.
type dconn struct {
	c     driver.Conn
	args  []driver.NamedValue
	stmts []driver.Stmt
}

// dstmt is a statement prepared once on its connection and reused.
type dstmt struct {
	c   *dconn
	sql string
	s   driver.Stmt
}

func (c *dconn) prepare(query string) (*dstmt, error) {
	s, err := c.c.(driver.ConnPrepareContext).PrepareContext(context.Background(), query)
	if err != nil {
		return nil, fmt.Errorf("prepare %q: %w", query, err)
	}
	c.stmts = append(c.stmts, s)
	return &dstmt{c: c, sql: query, s: s}, nil
}

func (c *dconn) bind(args []driver.Value) []driver.NamedValue {
	c.args = c.args[:0]
	for i, v := range args {
		c.args = append(c.args, driver.NamedValue{Ordinal: i + 1, Value: v})
	}
	return c.args
}

// exec runs the statement and returns the number of rows it changed. The
// writer passes no cancellable context: a batch, once started, runs to its
// commit or rollback, and the driver would otherwise start a watcher
// goroutine per statement.
func (s *dstmt) exec(args ...driver.Value) (int64, error) {
	r, err := s.s.(driver.StmtExecContext).ExecContext(context.Background(), s.c.bind(args))
	if err != nil {
		return 0, err
	}
	return r.RowsAffected()
}

// query runs the statement and calls row for each result row; dest is
// reused between rows.
func (s *dstmt) query(dest []driver.Value, row func([]driver.Value) error, args ...driver.Value) error {
	return s.queryContext(context.Background(), dest, row, args...)
}

// queryContext is query for a caller whose ctx may end the statement.
func (s *dstmt) queryContext(ctx context.Context, dest []driver.Value, row func([]driver.Value) error, args ...driver.Value) error {
	rows, err := s.s.(driver.StmtQueryContext).QueryContext(ctx, s.c.bind(args))
	if err != nil {
		return err
	}
	for {
		err = rows.Next(dest)
		if err == io.EOF {
			break
		}
		if err != nil {
			rows.Close()
			return err
		}
		if err = row(dest); err != nil {
			rows.Close()
			return err
		}
	}
	return rows.Close()
}

// execScript runs SQL that may hold several statements (schema, pragmas).
func (c *dconn) execScript(query string) error {
	_, err := c.c.(driver.ExecerContext).ExecContext(context.Background(), query, nil)
	return err
}

// queryOnce prepares, runs and finalizes a statement (for rare queries).
func (c *dconn) queryOnce(ctx context.Context, query string, dest []driver.Value, row func([]driver.Value) error, args ...driver.Value) error {
	st, err := c.c.(driver.ConnPrepareContext).PrepareContext(ctx, query)
	if err != nil {
		return err
	}
	s := &dstmt{c: c, sql: query, s: st}
	err = s.queryContext(ctx, dest, row, args...)
	return errors.Join(err, st.Close())
}

func (c *dconn) close() error {
	var errs []error
	for _, s := range c.stmts {
		errs = append(errs, s.Close())
	}
	c.stmts = nil
	errs = append(errs, c.c.Close())
	return errors.Join(errs...)
}

// sqliteCode returns the primary SQLite result code of err, or 0.
func sqliteCode(err error) int {
	var e *msqlite.Error
	if errors.As(err, &e) {
		return e.Code() & 0xff
	}
	return 0
}

// isConstraint reports a constraint violation (a ServerID stored twice).
func isConstraint(err error) bool { return sqliteCode(err) == sqlite3.SQLITE_CONSTRAINT }

// wrapErr gives a storage error its context and marks the transient ones
// (locked by another process, disk full or failing, out of memory, file
// system gone read-only) as queue.ErrUnavailable, so the relay answers
// CODE_UNAVAILABLE and the client retries. Corruption and misuse stay
// permanent: retrying cannot fix them.
func wrapErr(op string, err error) error {
	if err == nil {
		return nil
	}
	switch sqliteCode(err) {
	case sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED, sqlite3.SQLITE_NOMEM,
		sqlite3.SQLITE_IOERR, sqlite3.SQLITE_FULL, sqlite3.SQLITE_CANTOPEN,
		sqlite3.SQLITE_PROTOCOL, sqlite3.SQLITE_READONLY:
		return queue.Unavailable(op, err)
	}
	return fmt.Errorf("queue %s: %w", op, err)
}
