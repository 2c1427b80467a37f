package push

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"os"
	"sync"

	"github.com/hushchat/hush/server/queue"

	_ "modernc.org/sqlite" // database/sql driver "sqlite"
)

// Endpoints stores each device's push endpoint. It must survive restarts:
// the endpoint is needed exactly while the device is offline.
type Endpoints interface {
	// Get returns dev's endpoint, or "" when it has none.
	Get(ctx context.Context, dev queue.Device) (string, error)
	// Set stores endpoint for dev; "" deletes it.
	Set(ctx context.Context, dev queue.Device, endpoint string) error
	Close() error
}

// MemoryEndpoints keeps endpoints in memory (tests, or a relay that accepts
// that registrations are lost on restart).
type MemoryEndpoints struct {
	mu sync.Mutex
	m  map[queue.Device]string
}

// NewMemoryEndpoints returns an empty in-memory store.
func NewMemoryEndpoints() *MemoryEndpoints {
	return &MemoryEndpoints{m: make(map[queue.Device]string)}
}

// Get implements Endpoints.
func (e *MemoryEndpoints) Get(_ context.Context, dev queue.Device) (string, error) {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.m[dev], nil
}

// Set implements Endpoints.
func (e *MemoryEndpoints) Set(_ context.Context, dev queue.Device, endpoint string) error {
	e.mu.Lock()
	defer e.mu.Unlock()
	if endpoint == "" {
		delete(e.m, dev)
	} else {
		e.m[dev] = endpoint
	}
	return nil
}

// Close implements Endpoints.
func (e *MemoryEndpoints) Close() error { return nil }

// SQLiteEndpoints keeps endpoints in an SQLite file (push.db of the
// relay's data directory).
type SQLiteEndpoints struct {
	db *sql.DB
}

// OpenSQLiteEndpoints opens or creates the endpoint database at path (mode
// 0600: endpoints are capabilities).
func OpenSQLiteEndpoints(path string) (*SQLiteEndpoints, error) {
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, fmt.Errorf("open push endpoints %s: %w", path, err)
	}
	f.Close()
	db, err := sql.Open("sqlite", "file:"+path+"?_pragma=journal_mode(WAL)&_pragma=busy_timeout(5000)&_pragma=synchronous(NORMAL)")
	if err != nil {
		return nil, fmt.Errorf("open push endpoints %s: %w", path, err)
	}
	db.SetMaxOpenConns(1)
	if _, err := db.Exec(`CREATE TABLE IF NOT EXISTS push_endpoints (
		account  TEXT NOT NULL,
		device   INTEGER NOT NULL,
		endpoint TEXT NOT NULL,
		PRIMARY KEY (account, device)
	) WITHOUT ROWID`); err != nil {
		db.Close()
		return nil, fmt.Errorf("open push endpoints %s: create table: %w", path, err)
	}
	return &SQLiteEndpoints{db: db}, nil
}

// Get implements Endpoints.
func (s *SQLiteEndpoints) Get(ctx context.Context, dev queue.Device) (string, error) {
	var ep string
	err := s.db.QueryRowContext(ctx, `SELECT endpoint FROM push_endpoints WHERE account = ? AND device = ?`, dev.Account, dev.ID).Scan(&ep)
	if errors.Is(err, sql.ErrNoRows) {
		return "", nil
	}
	if err != nil {
		return "", fmt.Errorf("push endpoint of %s: %w", dev, err)
	}
	return ep, nil
}

// Set implements Endpoints.
func (s *SQLiteEndpoints) Set(ctx context.Context, dev queue.Device, endpoint string) error {
	var err error
	if endpoint == "" {
		_, err = s.db.ExecContext(ctx, `DELETE FROM push_endpoints WHERE account = ? AND device = ?`, dev.Account, dev.ID)
	} else {
		_, err = s.db.ExecContext(ctx, `INSERT INTO push_endpoints (account, device, endpoint) VALUES (?, ?, ?)
			ON CONFLICT (account, device) DO UPDATE SET endpoint = excluded.endpoint`, dev.Account, dev.ID, endpoint)
	}
	if err != nil {
		return fmt.Errorf("set push endpoint of %s: %w", dev, err)
	}
	return nil
}

// Close implements Endpoints.
func (s *SQLiteEndpoints) Close() error { return s.db.Close() }
