package sqlite

import (
	"context"
	"database/sql/driver"
	"errors"
	"fmt"
	"io"
)

// migrations[i] brings the schema from version i to version i+1. Released
// migrations are never edited, only appended to.
//
// Times are Unix milliseconds (what the wire and Cassandra carry). Tables
// keyed by text columns are WITHOUT ROWID so each row is one b-tree entry
// instead of a row plus an index entry; the secondary indexes exist for the
// scans that must not read everything: Sweep (by expiry). Per-device depth is not stored: the writer counts a device's rows
// (one range of the primary key) when it first needs them and keeps the
// count in memory.
var migrations = []string{
	// 1: queues, shared payloads, idempotency records.
	`
CREATE TABLE queue (
	account       TEXT    NOT NULL,
	device        INTEGER NOT NULL,
	server_id     INTEGER NOT NULL,
	sender        TEXT    NOT NULL,
	sender_device INTEGER NOT NULL,
	type          INTEGER NOT NULL,
	payload       BLOB,    -- the device's own ciphertext, or NULL:
	payload_id    INTEGER, -- payloads.id of the shared ciphertext
	server_time   INTEGER NOT NULL,
	expires       INTEGER NOT NULL,
	PRIMARY KEY (account, device, server_id)
) STRICT, WITHOUT ROWID;
CREATE INDEX queue_expires ON queue (expires);
CREATE INDEX queue_time ON queue (server_time);

-- A group send's ciphertext, stored once; refs counts the queue rows that
-- point at it. id is the Put's server id.
CREATE TABLE payloads (
	id      INTEGER PRIMARY KEY,
	bytes   BLOB    NOT NULL,
	refs    INTEGER NOT NULL,
	expires INTEGER NOT NULL
) STRICT;
CREATE INDEX payloads_expires ON payloads (expires);

-- (sender, sender_device, client_id) of every Put accepted in the last
-- IdempotencyWindow, with the ids it was answered with.
CREATE TABLE idempotency (
	sender        TEXT    NOT NULL,
	sender_device INTEGER NOT NULL,
	client_id     BLOB    NOT NULL,
	server_id     INTEGER NOT NULL,
	server_time   INTEGER NOT NULL,
	PRIMARY KEY (sender, sender_device, client_id)
) STRICT, WITHOUT ROWID;
CREATE INDEX idempotency_time ON idempotency (server_time);

`,
	// 2: Oldest reads the head of each device's queue instead of a global
	// time index, which cost an index insert and delete per message.
	`DROP INDEX IF EXISTS queue_time;`,
}

// migrate brings the database to the latest schema in one transaction. A
// database written by a newer binary is refused rather than guessed at.
func migrate(c *dconn) (err error) {
	if err := c.execScript(`BEGIN IMMEDIATE`); err != nil {
		return err
	}
	defer func() {
		if err != nil {
			_ = c.execScript(`ROLLBACK`)
		}
	}()
	if err := c.execScript(`CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL) STRICT`); err != nil {
		return err
	}
	version, err := schemaVersion(c)
	if err != nil {
		return err
	}
	if version > len(migrations) {
		return fmt.Errorf("database schema version %d is newer than this binary supports (%d)", version, len(migrations))
	}
	for v := version; v < len(migrations); v++ {
		if err := c.execScript(migrations[v]); err != nil {
			return fmt.Errorf("migration to version %d: %w", v+1, err)
		}
	}
	if version < len(migrations) {
		if err := c.execScript(fmt.Sprintf(`DELETE FROM schema_version; INSERT INTO schema_version (version) VALUES (%d)`, len(migrations))); err != nil {
			return err
		}
	}
	return c.execScript(`COMMIT`)
}

func schemaVersion(c *dconn) (int, error) {
	st, err := c.c.Prepare(`SELECT coalesce(max(version), 0) FROM schema_version`)
	if err != nil {
		return 0, err
	}
	defer st.Close()
	rows, err := st.(driver.StmtQueryContext).QueryContext(context.Background(), nil)
	if err != nil {
		return 0, err
	}
	defer rows.Close()
	dest := make([]driver.Value, 1)
	if err := rows.Next(dest); err != nil {
		if errors.Is(err, io.EOF) {
			return 0, nil
		}
		return 0, err
	}
	v, ok := dest[0].(int64)
	if !ok {
		return 0, fmt.Errorf("schema_version holds %T, not an integer", dest[0])
	}
	return int(v), nil
}
