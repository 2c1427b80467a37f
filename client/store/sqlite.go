package store

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"net/url"
	"os"
	"time"

	_ "modernc.org/sqlite" // database/sql driver "sqlite"
)

// DB is the SQLite implementation of Store.
type DB struct {
	w *sql.DB // exactly one connection: the writer
	r *sql.DB // read-only pool
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
	db := &DB{w: w}
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
	db.r = r
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
		err = db.r.Close()
	}
	return errors.Join(err, db.w.Close())
}

type txKey struct{}

type txState struct {
	db    *DB
	tx    *sql.Tx
	depth int
}

func (st *txState) savepoint(ctx context.Context, fn func(ctx context.Context) error) (err error) {
	st.depth++
	name := fmt.Sprintf("sp%d", st.depth)
	defer func() { st.depth-- }()
	if _, err := st.tx.ExecContext(ctx, "SAVEPOINT "+name); err != nil {
		return fmt.Errorf("savepoint: %w", err)
	}
	rollback := func() {
		// Errors here leave the outer transaction to fail at commit.
		st.tx.ExecContext(context.WithoutCancel(ctx), "ROLLBACK TO "+name)
		st.tx.ExecContext(context.WithoutCancel(ctx), "RELEASE "+name)
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
	if _, err := st.tx.ExecContext(ctx, "RELEASE "+name); err != nil {
		return fmt.Errorf("release savepoint: %w", err)
	}
	return nil
}

// Atomic implements crypto.Store: fn's writes through ctx commit together,
// or not at all when fn returns an error (or panics). A call inside
// another Atomic of the same DB joins its transaction under a savepoint:
// when the inner fn fails, exactly its own writes are undone and the outer
// transaction goes on. That is what lets the client run a decryption that
// may fail (and must then change nothing) inside the transaction that
// records the envelope as processed.
func (db *DB) Atomic(ctx context.Context, fn func(ctx context.Context) error) (err error) {
	if st, ok := ctx.Value(txKey{}).(*txState); ok && st.db == db {
		return st.savepoint(ctx, fn)
	}
	tx, err := db.w.BeginTx(ctx, nil)
	if err != nil {
		return fmt.Errorf("begin transaction: %w", err)
	}
	defer func() {
		if r := recover(); r != nil {
			tx.Rollback()
			panic(r)
		}
	}()
	if err := fn(context.WithValue(ctx, txKey{}, &txState{db: db, tx: tx})); err != nil {
		tx.Rollback()
		return err
	}
	if err := tx.Commit(); err != nil {
		return fmt.Errorf("commit: %w", err)
	}
	return nil
}

type querier interface {
	ExecContext(ctx context.Context, query string, args ...any) (sql.Result, error)
	QueryRowContext(ctx context.Context, query string, args ...any) *sql.Row
	QueryContext(ctx context.Context, query string, args ...any) (*sql.Rows, error)
}

// rq returns the querier for reads: the transaction in ctx, or the
// read-only pool.
func (db *DB) rq(ctx context.Context) querier {
	if st, ok := ctx.Value(txKey{}).(*txState); ok && st.db == db {
		return st.tx
	}
	return db.r
}

// wq returns the querier for a single-statement write: the transaction in
// ctx, or the writer.
func (db *DB) wq(ctx context.Context) querier {
	if st, ok := ctx.Value(txKey{}).(*txState); ok && st.db == db {
		return st.tx
	}
	return db.w
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
