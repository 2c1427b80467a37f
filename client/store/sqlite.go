package store

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"net/url"
	"os"
	"sync"
	"time"

	_ "modernc.org/sqlite" // database/sql driver "sqlite"
)

// DB is the SQLite implementation of Store.
type DB struct {
	w  *sql.DB // exactly one connection: the writer
	r  *sql.DB // read-only pool
	ws *stmtCache
	rs *stmtCache
}

// stmtCache keeps prepared statements by query text. The driver prepares
// every statement anew otherwise, and parsing SQL was the largest single
// cost of a send or a receive.
//
// The writer has one connection, held by a transaction while it runs, so a
// statement first seen inside a transaction cannot be prepared there (that
// would wait for the connection forever): it runs unprepared and is
// prepared once the transaction ended (preparePending).
type stmtCache struct {
	pool    *sql.DB
	mu      sync.Mutex
	m       map[string]*sql.Stmt
	pending map[string]bool
	closed  bool
}

func newStmtCache(pool *sql.DB) *stmtCache {
	return &stmtCache{pool: pool, m: map[string]*sql.Stmt{}, pending: map[string]bool{}}
}

func (c *stmtCache) get(ctx context.Context, query string, inTx bool) (*sql.Stmt, error) {
	c.mu.Lock()
	if c.closed {
		// A caller racing Close (a UI command still in flight) gets the
		// pool's own "database is closed" from the plain call.
		c.mu.Unlock()
		return nil, errCacheClosed
	}
	st, ok := c.m[query]
	if !ok && inTx {
		c.pending[query] = true
	}
	c.mu.Unlock()
	if ok {
		return st, nil
	}
	if inTx {
		return nil, errNotPrepared
	}
	st, err := c.pool.PrepareContext(ctx, query)
	if err != nil {
		return nil, err
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed {
		st.Close()
		return nil, errCacheClosed
	}
	if old, ok := c.m[query]; ok {
		st.Close()
		return old, nil
	}
	c.m[query] = st
	return st, nil
}

var (
	errNotPrepared = errors.New("statement not prepared yet")
	errCacheClosed = errors.New("statement cache closed")
)

// preparePending prepares the statements first seen inside transactions.
func (c *stmtCache) preparePending(ctx context.Context) {
	c.mu.Lock()
	var qs []string
	for q := range c.pending {
		qs = append(qs, q)
	}
	clear(c.pending)
	c.mu.Unlock()
	for _, q := range qs {
		c.get(ctx, q, false) // an error just leaves it unprepared
	}
}

func (c *stmtCache) close() {
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, st := range c.m {
		st.Close()
	}
	c.m = nil
	c.closed = true
}

// cached is a querier that runs each query on a cached prepared
// statement, inside tx when it is set.
type cached struct {
	tx *sql.Tx
	c  *stmtCache
	st *txState // set for writes in a transaction: counts them
}

// stmt returns the prepared statement for query and the context to run
// it with. In a transaction (or a snapshot) that context cannot be
// cancelled: ctx is checked here, before each statement, instead. With a
// context that can be cancelled, the driver starts a goroutine and
// installs a progress handler for every statement so that it can
// interrupt it; for the short statements of a transaction that cost more
// than the statement itself. A cancelled ctx still ends the transaction
// (database/sql rolls it back, and every later statement fails), only a
// statement already running finishes first.
func (q cached) stmt(ctx context.Context, query string) (*sql.Stmt, context.Context, bool) {
	if q.st != nil {
		q.st.writes++
	}
	if q.tx != nil {
		if ctx.Err() != nil {
			return nil, ctx, false // the plain call below reports the error
		}
		ctx = context.Background()
	}
	st, err := q.c.get(ctx, query, q.tx != nil)
	if err != nil {
		return nil, ctx, false // the plain call below reports the error
	}
	if q.tx != nil {
		return q.tx.StmtContext(ctx, st), ctx, true
	}
	return st, ctx, true
}

func (q cached) plain() querier {
	if q.tx != nil {
		return q.tx
	}
	return q.c.pool
}

func (q cached) ExecContext(ctx context.Context, query string, args ...any) (sql.Result, error) {
	st, ctx, ok := q.stmt(ctx, query)
	if ok {
		return st.ExecContext(ctx, args...)
	}
	return q.plain().ExecContext(ctx, query, args...)
}

func (q cached) QueryRowContext(ctx context.Context, query string, args ...any) *sql.Row {
	st, ctx, ok := q.stmt(ctx, query)
	if ok {
		return st.QueryRowContext(ctx, args...)
	}
	return q.plain().QueryRowContext(ctx, query, args...)
}

func (q cached) QueryContext(ctx context.Context, query string, args ...any) (*sql.Rows, error) {
	st, ctx, ok := q.stmt(ctx, query)
	if ok {
		return st.QueryContext(ctx, args...)
	}
	return q.plain().QueryContext(ctx, query, args...)
}

// Open opens (creating if needed, with mode 0600) the profile database at
// path and migrates its schema forward.
func Open(ctx context.Context, path string) (*DB, error) {
	return open(ctx, path, schema)
}

func open(ctx context.Context, path string, steps []string) (*DB, error) {
	// Create the file ourselves so it never exists with a wider mode;
	// SQLite gives its -wal and -shm files the database file's mode.
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, fmt.Errorf("open profile database: %w", err)
	}
	f.Close()
	if err := os.Chmod(path, 0o600); err != nil {
		return nil, fmt.Errorf("open profile database: %w", err)
	}
	dsn := func(extra string) string {
		return "file:" + (&url.URL{Path: path}).EscapedPath() +
			"?_pragma=busy_timeout(10000)&_pragma=foreign_keys(1)&_pragma=synchronous(NORMAL)" + extra
	}
	w, err := sql.Open("sqlite", dsn("&_pragma=journal_mode(WAL)&_txlock=immediate"))
	if err != nil {
		return nil, fmt.Errorf("open profile database: %w", err)
	}
	w.SetMaxOpenConns(1)
	w.SetConnMaxIdleTime(0)
	w.SetConnMaxLifetime(0)
	db := &DB{w: w, ws: newStmtCache(w)}
	if err := db.migrate(ctx, steps); err != nil {
		w.Close()
		return nil, fmt.Errorf("open profile database: %w", err)
	}
	r, err := sql.Open("sqlite", dsn("&_pragma=query_only(1)"))
	if err != nil {
		w.Close()
		return nil, fmt.Errorf("open profile database: %w", err)
	}
	r.SetMaxOpenConns(4)
	r.SetMaxIdleConns(4)
	db.r, db.rs = r, newStmtCache(r)
	if err := r.PingContext(ctx); err != nil {
		db.Close()
		return nil, fmt.Errorf("open profile database: %w", err)
	}
	return db, nil
}

// SchemaVersion is the schema version this package writes.
func SchemaVersion() int { return len(schema) }

func (db *DB) migrate(ctx context.Context, steps []string) error {
	tx, err := db.w.BeginTx(ctx, nil)
	if err != nil {
		return fmt.Errorf("begin migration: %w", err)
	}
	defer tx.Rollback()
	var v int
	if err := tx.QueryRowContext(ctx, "PRAGMA user_version").Scan(&v); err != nil {
		return fmt.Errorf("read schema version: %w", err)
	}
	if v > len(steps) {
		return fmt.Errorf("%w: schema version %d, this binary knows %d", ErrSchemaTooNew, v, len(steps))
	}
	for i := v; i < len(steps); i++ {
		if _, err := tx.ExecContext(ctx, steps[i]); err != nil {
			return fmt.Errorf("migrate schema to version %d: %w", i+1, err)
		}
	}
	if _, err := tx.ExecContext(ctx, fmt.Sprintf("PRAGMA user_version = %d", len(steps))); err != nil {
		return fmt.Errorf("record schema version: %w", err)
	}
	if err := tx.Commit(); err != nil {
		return fmt.Errorf("commit migration: %w", err)
	}
	return nil
}

// Version returns the database's schema version.
func (db *DB) Version(ctx context.Context) (int, error) {
	var v int
	if err := db.r.QueryRowContext(ctx, "PRAGMA user_version").Scan(&v); err != nil {
		return 0, fmt.Errorf("read schema version: %w", err)
	}
	return v, nil
}

// Close closes the database.
func (db *DB) Close() error {
	var err error
	if db.r != nil {
		db.rs.close()
		err = db.r.Close()
	}
	db.ws.close()
	return errors.Join(err, db.w.Close())
}

type txKey struct{}

// txState is one write transaction, carried in the context of Atomic's fn.
type txState struct {
	db *DB
	tx *sql.Tx
	// writes counts the statements run through wq in this transaction
	// (every statement that may change a row goes through wq). A nested
	// Atomic compares it before and after to tell whether its fn changed
	// anything.
	writes int
	// savepoints makes each nested Atomic a SAVEPOINT. Off by default: see
	// Atomic.
	savepoints bool
	// tainted: a nested Atomic failed after it had written, and no
	// savepoint can undo exactly those writes. The transaction must not
	// commit as it is.
	tainted bool
	depth   int
}

// nested runs fn inside the transaction of an enclosing Atomic.
func (st *txState) nested(ctx context.Context, fn func(ctx context.Context) error) error {
	if st.savepoints {
		return st.savepoint(ctx, fn)
	}
	before := st.writes
	if err := fn(ctx); err != nil {
		if st.writes != before {
			st.tainted = true
		}
		return err
	}
	return nil
}

func (st *txState) savepoint(ctx context.Context, fn func(ctx context.Context) error) (err error) {
	st.depth++
	name := fmt.Sprintf("sp%d", st.depth)
	defer func() { st.depth-- }()
	q := cached{tx: st.tx, c: st.db.ws}
	if _, err := q.ExecContext(ctx, "SAVEPOINT "+name); err != nil {
		return fmt.Errorf("savepoint: %w", err)
	}
	rollback := func() {
		// Errors here leave the outer transaction to fail at commit.
		q.ExecContext(context.WithoutCancel(ctx), "ROLLBACK TO "+name)
		q.ExecContext(context.WithoutCancel(ctx), "RELEASE "+name)
	}
	defer func() {
		if r := recover(); r != nil {
			rollback()
			panic(r)
		}
	}()
	if err := fn(ctx); err != nil {
		rollback()
		return err
	}
	if _, err := q.ExecContext(ctx, "RELEASE "+name); err != nil {
		return fmt.Errorf("release savepoint: %w", err)
	}
	return nil
}

// Atomic implements crypto.Store: fn's writes through ctx commit together,
// or not at all when fn returns an error (or panics). A call inside
// another Atomic of the same DB joins its transaction: when the inner fn
// fails, exactly its own writes are undone and the outer transaction goes
// on. That is what lets the client run a decryption that may fail (and
// must then change nothing) inside the transaction that records the
// envelope as processed.
//
// How the inner writes are undone: a SAVEPOINT per nested call would cost
// three statements for every crypto operation, almost always for nothing
// (an inner call succeeds, or fails before it wrote anything, or its
// caller fails the whole transaction anyway). So a nested call runs
// without one, and the transaction counts its writes. An inner call that
// fails without having written has nothing to undo. One that fails after
// writing taints the transaction; if the outer fn then still returns nil,
// Atomic rolls everything back and runs fn once more, this time with a
// savepoint around every nested call, which undoes exactly the failed
// call's writes. fn may therefore run twice; its first run's writes are
// then gone, so it must not act outside the database before it returns
// (the client collects its events and wake-ups and releases them after
// Atomic returned).
func (db *DB) Atomic(ctx context.Context, fn func(ctx context.Context) error) (err error) {
	if st, ok := ctx.Value(txKey{}).(*txState); ok && st.db == db {
		return st.nested(ctx, fn)
	}
	retry, err := db.atomic(ctx, fn, false)
	if retry {
		_, err = db.atomic(ctx, fn, true)
	}
	return err
}

// errTainted ends a run of fn whose transaction cannot commit.
var errTainted = errors.New("a nested transaction failed after writing")

// atomic runs fn in one transaction; retry reports a tainted run, rolled
// back, that must run again with savepoints.
func (db *DB) atomic(ctx context.Context, fn func(ctx context.Context) error, savepoints bool) (retry bool, err error) {
	tx, err := db.w.BeginTx(ctx, nil)
	if err != nil {
		return false, fmt.Errorf("begin transaction: %w", err)
	}
	defer func() {
		if r := recover(); r != nil {
			tx.Rollback()
			panic(r)
		}
	}()
	defer db.ws.preparePending(context.WithoutCancel(ctx))
	st := &txState{db: db, tx: tx, savepoints: savepoints}
	if err := fn(context.WithValue(ctx, txKey{}, st)); err != nil {
		tx.Rollback()
		return false, err
	}
	if st.tainted {
		tx.Rollback()
		return true, errTainted
	}
	if err := tx.Commit(); err != nil {
		return false, fmt.Errorf("commit: %w", err)
	}
	return false, nil
}

type querier interface {
	ExecContext(ctx context.Context, query string, args ...any) (sql.Result, error)
	QueryRowContext(ctx context.Context, query string, args ...any) *sql.Row
	QueryContext(ctx context.Context, query string, args ...any) (*sql.Rows, error)
}

// rq returns the querier for reads: the transaction in ctx, the snapshot
// in ctx, or the read-only pool.
func (db *DB) rq(ctx context.Context) querier {
	if st, ok := ctx.Value(txKey{}).(*txState); ok && st.db == db {
		return cached{tx: st.tx, c: db.ws}
	}
	if sn, ok := ctx.Value(snapKey{}).(*snapshot); ok && sn.db == db {
		return cached{tx: sn.tx, c: db.rs}
	}
	return cached{c: db.rs}
}

type snapKey struct{}

type snapshot struct {
	db *DB
	tx *sql.Tx
}

// Snapshot runs fn with its reads through ctx in one read transaction on
// the read-only pool: they see one state of the database, and pay once for
// what every read outside a transaction pays (taking a WAL read lock, and
// reloading the connection's page cache after a write). fn must only read.
// Inside Atomic, fn simply runs in that transaction.
func (db *DB) Snapshot(ctx context.Context, fn func(ctx context.Context) error) error {
	if st, ok := ctx.Value(txKey{}).(*txState); ok && st.db == db {
		return fn(ctx)
	}
	if sn, ok := ctx.Value(snapKey{}).(*snapshot); ok && sn.db == db {
		return fn(ctx)
	}
	tx, err := db.r.BeginTx(ctx, nil)
	if err != nil {
		return fmt.Errorf("begin read transaction: %w", err)
	}
	defer tx.Rollback()
	defer db.rs.preparePending(context.WithoutCancel(ctx))
	return fn(context.WithValue(ctx, snapKey{}, &snapshot{db: db, tx: tx}))
}

// wq returns the querier for a single-statement write: the transaction in
// ctx, or the writer. Every statement that may change a row must go
// through it, so that nested Atomic calls see it (txState.writes).
func (db *DB) wq(ctx context.Context) querier {
	if st, ok := ctx.Value(txKey{}).(*txState); ok && st.db == db {
		return cached{tx: st.tx, c: db.ws, st: st}
	}
	return cached{c: db.ws}
}

// inTx runs a multi-statement write in the caller's transaction or a new
// one.
func (db *DB) inTx(ctx context.Context, fn func(q querier) error) error {
	return db.Atomic(ctx, func(ctx context.Context) error { return fn(db.wq(ctx)) })
}

func ms(t time.Time) int64 {
	if t.IsZero() {
		return 0
	}
	return t.UnixMilli()
}

func fromMS(v int64) time.Time {
	if v == 0 {
		return time.Time{}
	}
	return time.UnixMilli(v)
}

func b2i(b bool) int {
	if b {
		return 1
	}
	return 0
}

func notFound(err error, format string, args ...any) error {
	if errors.Is(err, sql.ErrNoRows) {
		return fmt.Errorf("%s: %w", fmt.Sprintf(format, args...), ErrNotFound)
	}
	return fmt.Errorf("%s: %w", fmt.Sprintf(format, args...), err)
}
