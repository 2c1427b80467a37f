package cassandra

import (
	"context"
	"errors"
	"fmt"
	"strings"

	"github.com/gocql/gocql"
)

// tombstoneGrace is the gc_grace_seconds of the tables that see deletes on
// every ack. The default (10 days) keeps every acked message's tombstone
// in the device's partition for 10 days, and a device that reads its queue
// from the start skips over all of them; 3 hours matches Cassandra's
// default max_hint_window, so a replica that was down for less than that
// still gets the deletes through hints. A node down for longer must be
// repaired before gc_grace_seconds pass, or an acked message can come back
// (delivered twice; the client drops the duplicate by its id).
const tombstoneGrace = 3 * 60 * 60

// schema is applied in order by Open; queue_schema_version records how many
// steps a keyspace has seen, so a later binary only adds what is missing.
var schema = []string{
	// One partition per device queue, clustered by server id: a Fetch is a
	// slice of one partition in id order. payload is the device's own
	// ciphertext, or null when shared (the payload lives in
	// queue_payloads under the same server id). pending marks rows of a
	// staged Put that are invisible until queue_commits holds the id.
	`CREATE TABLE IF NOT EXISTS queue_messages (
		account       text,
		device        int,
		server_id     bigint,
		sender        text,
		sender_device int,
		type          int,
		payload       blob,
		shared        boolean,
		pending       boolean,
		server_time   timestamp,
		expires_at    timestamp,
		PRIMARY KEY ((account, device), server_id)
	) WITH CLUSTERING ORDER BY (server_id ASC)
	  AND compaction = {'class': 'LeveledCompactionStrategy'}
	  AND gc_grace_seconds = ` + fmt.Sprint(tombstoneGrace),
	// A group payload, stored once (static column), with one row per
	// recipient still holding it: the references. The last ack deletes
	// the partition.
	`CREATE TABLE IF NOT EXISTS queue_payloads (
		server_id bigint,
		account   text,
		device    int,
		payload   blob static,
		PRIMARY KEY ((server_id), account, device)
	) WITH gc_grace_seconds = ` + fmt.Sprint(tombstoneGrace),
	// Commit records of staged Puts: their pending rows are visible once
	// the id is here.
	`CREATE TABLE IF NOT EXISTS queue_commits (
		server_id bigint PRIMARY KEY
	) WITH gc_grace_seconds = ` + fmt.Sprint(tombstoneGrace),
	// Idempotency claims, written only by lightweight transactions: the
	// first Put of a (sender, sender device, client id) inserts its
	// server id IF NOT EXISTS; owner and leased_at let a retry take over a
	// claim whose writer died.
	`CREATE TABLE IF NOT EXISTS queue_claims (
		sender        text,
		sender_device int,
		client_id     blob,
		server_id     bigint,
		server_time   timestamp,
		expires_at    timestamp,
		write_ts      bigint,
		owner         uuid,
		accepted_at   timestamp,
		leased_at     timestamp,
		PRIMARY KEY ((sender, sender_device, client_id))
	) WITH gc_grace_seconds = ` + fmt.Sprint(tombstoneGrace),
	// Completion of a claim, written (never by an LWT) in the same logged
	// batch that makes the messages visible.
	`CREATE TABLE IF NOT EXISTS queue_done (
		sender        text,
		sender_device int,
		client_id     blob,
		server_id     bigint,
		server_time   timestamp,
		PRIMARY KEY ((sender, sender_device, client_id))
	)`,
	// Expiry index: one row per Put, by the hour it expires in, spread over
	// expiryShards partitions. Sweep reads the hours since its watermark.
	`CREATE TABLE IF NOT EXISTS queue_expiry (
		bucket     bigint,
		shard      int,
		expires_at timestamp,
		server_id  bigint,
		accounts   frozen<list<text>>,
		devices    frozen<list<int>>,
		shared     boolean,
		PRIMARY KEY ((bucket, shard), expires_at, server_id)
	)`,
	// Sweep's watermark: every index row expiring at or before it has been
	// handled.
	`CREATE TABLE IF NOT EXISTS queue_sweep (
		id        int PRIMARY KEY,
		watermark timestamp
	)`,
}

const versionTable = `CREATE TABLE IF NOT EXISTS queue_schema_version (id int PRIMARY KEY, version int)`

// SchemaVersion is the schema version this package creates.
const SchemaVersion = 7

// Schema returns the CQL that Open runs in the configured keyspace, for an
// operator who prefers to create the tables by hand (docs/deploy.md).
func Schema() string {
	var b strings.Builder
	b.WriteString(versionTable + ";\n")
	for _, st := range schema {
		b.WriteString("\n")
		b.WriteString(dedent(st))
		b.WriteString(";\n")
	}
	fmt.Fprintf(&b, "\nINSERT INTO queue_schema_version (id, version) VALUES (0, %d);\n", len(schema))
	return b.String()
}

func dedent(s string) string {
	lines := strings.Split(s, "\n")
	for i, l := range lines {
		lines[i] = strings.TrimPrefix(strings.TrimPrefix(l, "\t"), "\t")
	}
	return strings.Join(lines, "\n")
}

// TableNames lists the tables the store uses, for tests and operators.
func TableNames() []string {
	return []string{"queue_messages", "queue_payloads", "queue_commits", "queue_claims", "queue_done", "queue_expiry", "queue_sweep"}
}

func (s *Store) migrate(ctx context.Context) error {
	if len(schema) != SchemaVersion {
		return fmt.Errorf("schema has %d steps, SchemaVersion says %d", len(schema), SchemaVersion)
	}
	// Schema changes wait for the cluster to agree; give them longer than
	// a query.
	ddl := func(stmt string) error {
		return s.s.Query(stmt).WithContext(ctx).Consistency(s.cfg.Consistency).Exec()
	}
	if err := ddl(versionTable); err != nil {
		return fmt.Errorf("create queue_schema_version: %w", err)
	}
	var v int
	err := s.query(ctx, `SELECT version FROM queue_schema_version WHERE id = 0`).Scan(&v)
	if err != nil && !errors.Is(err, gocql.ErrNotFound) {
		return fmt.Errorf("read queue schema version: %w", err)
	}
	if v > len(schema) {
		return fmt.Errorf("keyspace queue schema version %d is newer than this binary (%d)", v, len(schema))
	}
	for i := v; i < len(schema); i++ {
		if err := ddl(schema[i]); err != nil {
			return fmt.Errorf("migrate queue schema to version %d: %w", i+1, err)
		}
		if err := s.query(ctx, `INSERT INTO queue_schema_version (id, version) VALUES (0, ?)`, i+1).Exec(); err != nil {
			return fmt.Errorf("record queue schema version %d: %w", i+1, err)
		}
	}
	return s.initWatermark(ctx)
}

// initWatermark starts Sweep's watermark at the store clock's now unless a
// sweep already moved it, without a lightweight transaction. The write's
// timestamp is below any real write timestamp (microseconds since 1970,
// ~2^50), so it never overrides a watermark a sweep wrote; and it shrinks as
// the clock advances, so of several relays opening over time the earliest
// start wins — a later Open cannot skip what was never swept.
func (s *Store) initWatermark(ctx context.Context) error {
	now := s.now()
	ts := int64(1<<45) - now.UnixMilli()
	if ts < 1 {
		ts = 1
	}
	err := s.query(ctx, `INSERT INTO queue_sweep (id, watermark) VALUES (0, ?) USING TIMESTAMP ?`, now, ts).Exec()
	if err != nil {
		return fmt.Errorf("initialise sweep watermark: %w", err)
	}
	return nil
}
