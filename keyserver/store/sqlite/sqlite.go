// Package sqlite is the key server's embedded store: one SQLite database
// file (modernc.org/sqlite, pure Go) in WAL mode.
//
// Concurrency: all writes go through a pool of exactly one connection whose
// transactions begin IMMEDIATE, so writers queue in Go instead of failing
// with SQLITE_BUSY, and every mutating method — above all the one-time
// prekey claim — is a single transaction that either commits whole or not
// at all. Reads use a separate read-only pool and, thanks to WAL, never wait
// for the writer. This is the right shape for SQLite, whose writers are
// serialised by the file lock anyway; a busy timeout covers other processes
// opening the same file.
package sqlite

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"net/url"
	"os"
	"time"

	"github.com/hushchat/hush/keyserver/store"

	_ "modernc.org/sqlite" // database/sql driver "sqlite"
)

// schema is applied in order; PRAGMA user_version records how many steps a
// database has seen, so an older file is migrated forward on open.
var schema = []string{
	`CREATE TABLE accounts (
		name        TEXT PRIMARY KEY COLLATE NOCASE,
		next_device INTEGER NOT NULL,
		created_ms  INTEGER NOT NULL
	) STRICT, WITHOUT ROWID;
	CREATE TABLE devices (
		account             TEXT NOT NULL COLLATE NOCASE REFERENCES accounts(name) ON DELETE CASCADE,
		id                  INTEGER NOT NULL,
		registration_id     INTEGER NOT NULL,
		identity_key        BLOB NOT NULL,
		spk_id              INTEGER NOT NULL,
		spk_public          BLOB NOT NULL,
		spk_signature       BLOB NOT NULL,
		prev_spk_id         INTEGER NOT NULL DEFAULT 0,
		prev_spk_public     BLOB,
		prev_spk_signature  BLOB,
		prev_spk_expires_ms INTEGER NOT NULL DEFAULT 0,
		lr_id               INTEGER NOT NULL,
		lr_public           BLOB NOT NULL,
		created_ms          INTEGER NOT NULL,
		PRIMARY KEY (account, id)
	) STRICT, WITHOUT ROWID;
	CREATE TABLE one_time_prekeys (
		account    TEXT NOT NULL COLLATE NOCASE,
		device     INTEGER NOT NULL,
		id         INTEGER NOT NULL,
		public_key BLOB NOT NULL,
		PRIMARY KEY (account, device, id),
		FOREIGN KEY (account, device) REFERENCES devices(account, id) ON DELETE CASCADE
	) STRICT, WITHOUT ROWID;
	CREATE TABLE challenges (
		nonce      BLOB PRIMARY KEY,
		expires_ms INTEGER NOT NULL
	) STRICT, WITHOUT ROWID;
	CREATE INDEX challenges_expires ON challenges (expires_ms);`,
}

// Store is a store.Store on one SQLite file.
type Store struct {
	w *sql.DB // exactly one connection: the writer
	r *sql.DB // read-only pool
}

var _ store.Store = (*Store)(nil)

// Open opens (creating if needed) the database at path and migrates its
// schema.
//
// The file is created 0600 (SQLite gives its -wal and -shm files the same
// mode). synchronous=FULL: a one-time prekey claim that was answered must
// survive a power loss, or the same key could be handed out twice.
func Open(ctx context.Context, path string) (*Store, error) {
	if path != ":memory:" {
		f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o600)
		if err != nil {
			return nil, fmt.Errorf("open sqlite %s: %w", path, err)
		}
		fi, err := f.Stat()
		f.Close()
		if err != nil {
			return nil, fmt.Errorf("open sqlite %s: %w", path, err)
		}
		if fi.Mode().Perm()&0o077 != 0 {
			if err := os.Chmod(path, 0o600); err != nil {
				return nil, fmt.Errorf("open sqlite %s: restrict permissions: %w", path, err)
			}
		}
	}
	dsn := func(extra string) string {
		return "file:" + (&url.URL{Path: path}).EscapedPath() +
			"?_pragma=busy_timeout(10000)&_pragma=foreign_keys(1)&_pragma=synchronous(FULL)" + extra
	}
	w, err := sql.Open("sqlite", dsn("&_pragma=journal_mode(WAL)&_txlock=immediate"))
	if err != nil {
		return nil, fmt.Errorf("open sqlite %s: %w", path, err)
	}
	w.SetMaxOpenConns(1)
	w.SetConnMaxIdleTime(0)
	s := &Store{w: w}
	if err := s.migrate(ctx); err != nil {
		w.Close()
		return nil, fmt.Errorf("open sqlite %s: %w", path, err)
	}
	r, err := sql.Open("sqlite", dsn("&_pragma=query_only(1)"))
	if err != nil {
		w.Close()
		return nil, fmt.Errorf("open sqlite %s: %w", path, err)
	}
	r.SetMaxOpenConns(4)
	s.r = r
	if err := r.PingContext(ctx); err != nil {
		s.Close()
		return nil, fmt.Errorf("open sqlite %s: %w", path, err)
	}
	return s, nil
}

func (s *Store) migrate(ctx context.Context) error {
	return s.tx(ctx, func(tx *sql.Tx) error {
		var v int
		if err := tx.QueryRowContext(ctx, "PRAGMA user_version").Scan(&v); err != nil {
			return fmt.Errorf("read schema version: %w", err)
		}
		if v > len(schema) {
			return fmt.Errorf("database schema version %d is newer than this binary (%d)", v, len(schema))
		}
		for i := v; i < len(schema); i++ {
			if _, err := tx.ExecContext(ctx, schema[i]); err != nil {
				return fmt.Errorf("migrate schema to version %d: %w", i+1, err)
			}
		}
		if _, err := tx.ExecContext(ctx, fmt.Sprintf("PRAGMA user_version = %d", len(schema))); err != nil {
			return fmt.Errorf("record schema version: %w", err)
		}
		return nil
	})
}

// Close closes both pools.
func (s *Store) Close() error {
	var err error
	if s.r != nil {
		err = s.r.Close()
	}
	return errors.Join(err, s.w.Close())
}

// Ping checks that the database answers.
func (s *Store) Ping(ctx context.Context) error {
	var one int
	if err := s.r.QueryRowContext(ctx, "SELECT 1").Scan(&one); err != nil {
		return fmt.Errorf("ping sqlite: %w", err)
	}
	return nil
}

func (s *Store) tx(ctx context.Context, fn func(*sql.Tx) error) error {
	tx, err := s.w.BeginTx(ctx, nil)
	if err != nil {
		return fmt.Errorf("begin: %w", err)
	}
	if err := fn(tx); err != nil {
		tx.Rollback()
		return err
	}
	if err := tx.Commit(); err != nil {
		return fmt.Errorf("commit: %w", err)
	}
	return nil
}

type querier interface {
	QueryRowContext(ctx context.Context, query string, args ...any) *sql.Row
	QueryContext(ctx context.Context, query string, args ...any) (*sql.Rows, error)
}

// missing tells apart a missing account from a missing device.
func missing(ctx context.Context, q querier, name string) error {
	var one int
	err := q.QueryRowContext(ctx, "SELECT 1 FROM accounts WHERE name = ?", name).Scan(&one)
	switch {
	case errors.Is(err, sql.ErrNoRows):
		return store.ErrAccountNotFound
	case err != nil:
		return err
	}
	return store.ErrDeviceNotFound
}

func insertDevice(ctx context.Context, tx *sql.Tx, name string, id uint32, k store.DeviceKeys, now time.Time) error {
	_, err := tx.ExecContext(ctx, `INSERT INTO devices
		(account, id, registration_id, identity_key, spk_id, spk_public, spk_signature, lr_id, lr_public, created_ms)
		VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)`,
		name, id, k.RegistrationID, k.IdentityKey, k.SignedPreKey.ID, k.SignedPreKey.PublicKey,
		k.SignedPreKey.Signature, k.LastResort.ID, k.LastResort.PublicKey, now.UnixMilli())
	if err != nil {
		return fmt.Errorf("insert device %d: %w", id, err)
	}
	return insertPreKeys(ctx, tx, name, id, k.OneTime)
}

func insertPreKeys(ctx context.Context, tx *sql.Tx, name string, device uint32, keys []store.PreKey) error {
	if len(keys) == 0 {
		return nil
	}
	st, err := tx.PrepareContext(ctx, `INSERT INTO one_time_prekeys (account, device, id, public_key)
		VALUES (?, ?, ?, ?) ON CONFLICT DO NOTHING`)
	if err != nil {
		return fmt.Errorf("prepare prekey insert: %w", err)
	}
	defer st.Close()
	for _, k := range keys {
		res, err := st.ExecContext(ctx, name, device, k.ID, k.PublicKey)
		if err != nil {
			return fmt.Errorf("insert one-time prekey: %w", err)
		}
		if n, _ := res.RowsAffected(); n == 0 {
			return fmt.Errorf("one-time prekey %d: %w", k.ID, store.ErrPreKeyExists)
		}
	}
	return nil
}

// CreateAccount implements store.Store.
func (s *Store) CreateAccount(ctx context.Context, name string, keys store.DeviceKeys, now time.Time) error {
	err := s.tx(ctx, func(tx *sql.Tx) error {
		res, err := tx.ExecContext(ctx, `INSERT INTO accounts (name, next_device, created_ms) VALUES (?, 2, ?)
			ON CONFLICT DO NOTHING`, name, now.UnixMilli())
		if err != nil {
			return fmt.Errorf("insert account: %w", err)
		}
		if n, _ := res.RowsAffected(); n == 0 {
			return store.ErrNameTaken
		}
		return insertDevice(ctx, tx, name, 1, keys, now)
	})
	if err != nil {
		return fmt.Errorf("create account %s: %w", name, err)
	}
	return nil
}

// AddDevice implements store.Store.
func (s *Store) AddDevice(ctx context.Context, name string, keys store.DeviceKeys, now time.Time) (uint32, error) {
	var id uint32
	err := s.tx(ctx, func(tx *sql.Tx) error {
		err := tx.QueryRowContext(ctx, "SELECT next_device FROM accounts WHERE name = ?", name).Scan(&id)
		if errors.Is(err, sql.ErrNoRows) {
			return store.ErrAccountNotFound
		} else if err != nil {
			return fmt.Errorf("read account: %w", err)
		}
		if id > store.MaxDeviceID {
			return store.ErrDeviceLimit
		}
		if _, err := tx.ExecContext(ctx, "UPDATE accounts SET next_device = ? WHERE name = ?", id+1, name); err != nil {
			return fmt.Errorf("update account: %w", err)
		}
		return insertDevice(ctx, tx, name, id, keys, now)
	})
	if err != nil {
		return 0, fmt.Errorf("add device to %s: %w", name, err)
	}
	return id, nil
}

// RemoveDevice implements store.Store.
func (s *Store) RemoveDevice(ctx context.Context, name string, device uint32) error {
	err := s.tx(ctx, func(tx *sql.Tx) error {
		var n, has int
		err := tx.QueryRowContext(ctx, `SELECT count(*), coalesce(sum(id = ?), 0) FROM devices WHERE account = ?`,
			device, name).Scan(&n, &has)
		if err != nil {
			return fmt.Errorf("count devices: %w", err)
		}
		if has == 0 {
			return missing(ctx, tx, name)
		}
		if n == 1 {
			return store.ErrLastDevice
		}
		// one_time_prekeys rows go with it (ON DELETE CASCADE).
		if _, err := tx.ExecContext(ctx, "DELETE FROM devices WHERE account = ? AND id = ?", name, device); err != nil {
			return fmt.Errorf("delete device: %w", err)
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("remove device %s/%d: %w", name, device, err)
	}
	return nil
}

const deviceColumns = `id, registration_id, identity_key, spk_id, spk_public, spk_signature,
	prev_spk_id, prev_spk_public, prev_spk_signature, prev_spk_expires_ms, lr_id, lr_public, created_ms`

type scanner interface{ Scan(dest ...any) error }

func scanDevice(sc scanner) (store.Device, error) {
	var d store.Device
	var prevExp, created int64
	err := sc.Scan(&d.ID, &d.RegistrationID, &d.IdentityKey, &d.SignedPreKey.ID, &d.SignedPreKey.PublicKey,
		&d.SignedPreKey.Signature, &d.PrevSignedPreKey.ID, &d.PrevSignedPreKey.PublicKey, &d.PrevSignedPreKey.Signature,
		&prevExp, &d.LastResort.ID, &d.LastResort.PublicKey, &created)
	if err != nil {
		return store.Device{}, err
	}
	if d.PrevSignedPreKey.ID != 0 {
		d.PrevSignedExpires = time.UnixMilli(prevExp).UTC()
	}
	d.Created = time.UnixMilli(created).UTC()
	return d, nil
}

// Devices implements store.Store.
func (s *Store) Devices(ctx context.Context, name string) ([]store.Device, error) {
	rows, err := s.r.QueryContext(ctx, "SELECT "+deviceColumns+" FROM devices WHERE account = ? ORDER BY id", name)
	if err != nil {
		return nil, fmt.Errorf("list devices of %s: %w", name, err)
	}
	defer rows.Close()
	var out []store.Device
	for rows.Next() {
		d, err := scanDevice(rows)
		if err != nil {
			return nil, fmt.Errorf("list devices of %s: %w", name, err)
		}
		out = append(out, d)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("list devices of %s: %w", name, err)
	}
	if len(out) == 0 {
		// An account always has a device, so no rows means no account.
		return nil, fmt.Errorf("list devices of %s: %w", name, store.ErrAccountNotFound)
	}
	return out, nil
}

// Device implements store.Store.
func (s *Store) Device(ctx context.Context, name string, device uint32) (store.Device, error) {
	d, err := scanDevice(s.r.QueryRowContext(ctx,
		"SELECT "+deviceColumns+" FROM devices WHERE account = ? AND id = ?", name, device))
	if errors.Is(err, sql.ErrNoRows) {
		err = missing(ctx, s.r, name)
	}
	if err != nil {
		return store.Device{}, fmt.Errorf("get device %s/%d: %w", name, device, err)
	}
	return d, nil
}

func deviceExists(ctx context.Context, tx *sql.Tx, name string, device uint32) error {
	var one int
	err := tx.QueryRowContext(ctx, "SELECT 1 FROM devices WHERE account = ? AND id = ?", name, device).Scan(&one)
	if errors.Is(err, sql.ErrNoRows) {
		return missing(ctx, tx, name)
	}
	return err
}

// AddOneTimePreKeys implements store.Store.
func (s *Store) AddOneTimePreKeys(ctx context.Context, name string, device uint32, keys []store.PreKey, max int) error {
	err := s.tx(ctx, func(tx *sql.Tx) error {
		if err := deviceExists(ctx, tx, name, device); err != nil {
			return err
		}
		var n int
		if err := tx.QueryRowContext(ctx, "SELECT count(*) FROM one_time_prekeys WHERE account = ? AND device = ?",
			name, device).Scan(&n); err != nil {
			return fmt.Errorf("count prekeys: %w", err)
		}
		if n+len(keys) > max {
			return fmt.Errorf("%d stored + %d new > %d: %w", n, len(keys), max, store.ErrPreKeyLimit)
		}
		return insertPreKeys(ctx, tx, name, device, keys)
	})
	if err != nil {
		return fmt.Errorf("add one-time prekeys for %s/%d: %w", name, device, err)
	}
	return nil
}

// RotateSignedPreKey implements store.Store.
func (s *Store) RotateSignedPreKey(ctx context.Context, name string, device uint32, spk store.SignedPreKey, prevExpires time.Time) error {
	err := s.tx(ctx, func(tx *sql.Tx) error {
		var cur uint32
		err := tx.QueryRowContext(ctx, "SELECT spk_id FROM devices WHERE account = ? AND id = ?", name, device).Scan(&cur)
		if errors.Is(err, sql.ErrNoRows) {
			return missing(ctx, tx, name)
		} else if err != nil {
			return fmt.Errorf("read device: %w", err)
		}
		if cur == spk.ID {
			return store.ErrSignedPreKeyInUse
		}
		_, err = tx.ExecContext(ctx, `UPDATE devices SET
			prev_spk_id = spk_id, prev_spk_public = spk_public, prev_spk_signature = spk_signature,
			prev_spk_expires_ms = ?, spk_id = ?, spk_public = ?, spk_signature = ?
			WHERE account = ? AND id = ?`,
			prevExpires.UnixMilli(), spk.ID, spk.PublicKey, spk.Signature, name, device)
		if err != nil {
			return fmt.Errorf("update device: %w", err)
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("rotate signed prekey of %s/%d: %w", name, device, err)
	}
	return nil
}

// SetLastResort implements store.Store.
func (s *Store) SetLastResort(ctx context.Context, name string, device uint32, pk store.PreKey) error {
	err := s.tx(ctx, func(tx *sql.Tx) error {
		res, err := tx.ExecContext(ctx, "UPDATE devices SET lr_id = ?, lr_public = ? WHERE account = ? AND id = ?",
			pk.ID, pk.PublicKey, name, device)
		if err != nil {
			return fmt.Errorf("update device: %w", err)
		}
		if n, _ := res.RowsAffected(); n == 0 {
			return missing(ctx, tx, name)
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("set last-resort prekey of %s/%d: %w", name, device, err)
	}
	return nil
}

// CountOneTimePreKeys implements store.Store.
func (s *Store) CountOneTimePreKeys(ctx context.Context, name string, device uint32) (int, error) {
	var n, has int
	err := s.r.QueryRowContext(ctx, `SELECT
		(SELECT count(*) FROM one_time_prekeys WHERE account = ? AND device = ?),
		(SELECT count(*) FROM devices WHERE account = ? AND id = ?)`,
		name, device, name, device).Scan(&n, &has)
	if err == nil && has == 0 {
		err = missing(ctx, s.r, name)
	}
	if err != nil {
		return 0, fmt.Errorf("count one-time prekeys of %s/%d: %w", name, device, err)
	}
	return n, nil
}

// ClaimPreKey implements store.Store: the delete of the lowest id and the
// read of what was deleted are one statement inside one write transaction,
// and there is one writer, so no two claims can see the same row.
func (s *Store) ClaimPreKey(ctx context.Context, name string, device uint32) (store.Claim, error) {
	var c store.Claim
	err := s.tx(ctx, func(tx *sql.Tx) error {
		err := tx.QueryRowContext(ctx, `DELETE FROM one_time_prekeys
			WHERE account = ? AND device = ? AND id = (
				SELECT id FROM one_time_prekeys WHERE account = ? AND device = ? ORDER BY id LIMIT 1)
			RETURNING id, public_key`, name, device, name, device).Scan(&c.Key.ID, &c.Key.PublicKey)
		if err == nil {
			return nil
		}
		if !errors.Is(err, sql.ErrNoRows) {
			return fmt.Errorf("claim one-time prekey: %w", err)
		}
		c.LastResort = true
		err = tx.QueryRowContext(ctx, "SELECT lr_id, lr_public FROM devices WHERE account = ? AND id = ?",
			name, device).Scan(&c.Key.ID, &c.Key.PublicKey)
		if errors.Is(err, sql.ErrNoRows) {
			return missing(ctx, tx, name)
		}
		return err
	})
	if err != nil {
		return store.Claim{}, fmt.Errorf("claim prekey of %s/%d: %w", name, device, err)
	}
	return c, nil
}

// PutChallenge implements store.Store. Expired challenges are purged on the
// way, so the table stays as small as the number of logins in flight.
func (s *Store) PutChallenge(ctx context.Context, nonce []byte, now, expires time.Time) error {
	err := s.tx(ctx, func(tx *sql.Tx) error {
		if _, err := tx.ExecContext(ctx, "DELETE FROM challenges WHERE expires_ms <= ?", now.UnixMilli()); err != nil {
			return fmt.Errorf("purge expired: %w", err)
		}
		_, err := tx.ExecContext(ctx, "INSERT INTO challenges (nonce, expires_ms) VALUES (?, ?)", nonce, expires.UnixMilli())
		return err
	})
	if err != nil {
		return fmt.Errorf("put challenge: %w", err)
	}
	return nil
}

// ConsumeChallenge implements store.Store.
func (s *Store) ConsumeChallenge(ctx context.Context, nonce []byte, now time.Time) error {
	var expires int64
	err := s.tx(ctx, func(tx *sql.Tx) error {
		return tx.QueryRowContext(ctx, "DELETE FROM challenges WHERE nonce = ? RETURNING expires_ms", nonce).Scan(&expires)
	})
	if errors.Is(err, sql.ErrNoRows) || err == nil && now.UnixMilli() >= expires {
		return fmt.Errorf("consume challenge: %w", store.ErrChallengeInvalid)
	}
	if err != nil {
		return fmt.Errorf("consume challenge: %w", err)
	}
	return nil
}
