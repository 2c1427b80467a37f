// Package cassandra is the relay's scale-out queue store: queue.Store (and
// queue.PayloadCounter) on Apache Cassandra through gocql, for deployments
// where several relays share one set of queues. It keeps exactly the
// promises of the embedded SQLite store and runs the same conformance
// suite (server/queue/queuetest) against a real cluster.
//
// # Tables
//
// All tables are prefixed queue_, so the relay can share a keyspace with
// the key server. Schema returns the CQL; Open creates or migrates it
// (CREATE TABLE IF NOT EXISTS, one step per table, recorded in
// queue_schema_version).
//
//   - queue_messages: PRIMARY KEY ((account, device), server_id), clustering
//     server_id ASC. One partition per device queue; Fetch is one slice of
//     it in Snowflake order, Ack deletes named rows of that partition only,
//     so a device can never name another device's messages. Columns: sender,
//     sender_device, type, payload (own ciphertext; unset when shared),
//     shared, pending, server_time, expires_at. Every row has a TTL.
//   - queue_payloads: PRIMARY KEY ((server_id), account, device). A group
//     payload is a static column written once; each clustering row is one
//     recipient's reference. The whole thing is one partition, so payload
//     and references are a single mutation however many members there are.
//   - queue_claims / queue_done: idempotency. A claim (written only by
//     lightweight transactions) maps (sender, sender device, client id) to
//     the server id and write timestamp the message is stored under; the
//     done record (written only by plain writes, in the batch that makes the
//     message visible) says it is stored. Keeping LWT and non-LWT writes in
//     different tables avoids mixing Paxos and client timestamps on one row.
//   - queue_commits: commit records of staged Puts (see below).
//   - queue_expiry: one row per Put, keyed by the hour it expires in and a
//     shard (server id mod 16, so one hour's Puts spread over 16 partitions),
//     listing its recipients — Sweep's index.
//   - queue_sweep: Sweep's watermark.
//
// # Put
//
//  1. Claim: INSERT INTO queue_claims … IF NOT EXISTS (LOCAL_SERIAL) with
//     this attempt's server id, write timestamp and a random owner id. Of
//     any number of concurrent retries, on any relays, one wins; the
//     others read the done record and answer Duplicate with the winner's id,
//     or wait for it (bounded by ClaimTimeout and ctx). A claim older than
//     IdempotencyWindow by the store clock is replaced by compare-and-set,
//     so the window is exact even before Cassandra's TTL removes the row.
//  2. Cap check, run concurrently with the claim (see Queue length).
//  3. Write: when the estimated size fits MaxBatchBytes, one LOGGED batch
//     holds every recipient's row, the shared payload and its references,
//     the expiry index row and the done record, all with one explicit
//     write timestamp. The batchlog makes it all-or-nothing across
//     partitions, and the done record is inside it: no "done" without the
//     messages, no messages without "done".
//
// Cassandra refuses multi-partition batches above batch_size_fail_threshold
// (50 KiB by default), which a 1,024-member group or a few 128 KiB payloads
// exceed. Such Puts take the staged path: the expiry row and the shared
// payload with all references (single partitions, exempt from the limit)
// are written first; then every recipient's row, marked pending, by
// individual token-aware inserts in parallel; then one small logged batch
// of commit record + done record. Readers (Fetch, Depth, Oldest, the cap
// check) treat a pending row as absent until its commit record exists, so
// the Put still becomes visible to all recipients at once or never.
//
// Failures, and why a retry can never create a second message:
//
//   - The claim LWT fails: nothing was written; the error is retryable.
//   - The batch (or, staged, anything before the commit) is refused
//     outright — Unavailable, a request the cluster rejected, no
//     connection: nothing can land. The owner deletes its claim (IF owner =
//     its id) and returns the error; the retry is a fresh Put. A queue at
//     its cap is handled the same way: *QueueFullError, no claim left.
//   - The outcome is unknown (write timeout, connection lost, ctx ended
//     after sending): the claim stays. A retry that finds it pending waits
//     for the done record; once the claim is older than ClaimTimeout it
//     takes the claim over by compare-and-set on the owner id and writes the
//     message again under the original server id, server time, expiry and
//     write timestamp. The two attempts write the same primary keys with
//     the same timestamp, so a batch of the first that lands late (batchlog
//     replay) makes no second message, and an ack in between (a later
//     timestamp) still shadows both. A take-over answers Duplicate with the
//     original id: the original may have landed, so it is not "new".
//   - The relay dies between claim and batch: the same as an unknown
//     outcome — the claim is pending with no done record, and the client's
//     retry takes it over after ClaimTimeout.
//
// Only the first owner ever releases a claim, and only when nothing of its
// write can land; a taken-over claim is never released. That is what keeps
// "the claim is gone, so the retry is fresh" true.
//
// # Shared payloads
//
// Ack deletes the device's queue rows first, then its references, then
// reads whether any reference is left (LIMIT 1) and, if none, deletes the
// payload partition. References are only ever written together with the
// payload, so once none is left none can reappear; racing last acks at worst
// both delete. The payload and its references carry a TTL one minute longer
// than the messages, so a message never outlives its payload; a crash
// between the ack's deletes leaves the payload until that TTL.
//
// As queue.Store allows, an ack is less durable than a Put: its deletes
// are written at Config.Consistency like everything else, so later
// fetches do not see the message, but a replica that loses the delete
// (commit log not yet synced, a missed repair; see Operations) brings the
// message back for one more delivery, which the client discards by its id.
// A Put's SendAck is never weakened that way.
//
// # Queue length
//
// Cassandra counters are not idempotent (a retried increment counts twice)
// and cannot share a logged batch with the rows, so the cap is checked by
// counting: SELECT COUNT(*) on each recipient's partition, server-side,
// concurrently across recipients. The cap itself bounds the partition, so
// the count costs O(depth) ≤ O(cap) rows read per recipient per Put — cheap
// for the short queues of online devices, ~1,000 clustering keys for a
// device with 1,000 queued messages (see BenchmarkPutDeepQueue). A queue
// that looks full is recounted excluding uncommitted staged rows. Nothing
// is ever trimmed. Check-then-write is not atomic: Puts racing into the last
// free slot of the same device can each pass the check, so a queue can end
// up to (concurrent Puts to that device − 1) over its cap — bounded, never
// silent data loss, and the next Put is refused.
//
// # Expiry
//
// Every row carries a TTL of ExpiresAt − the store clock, plus one second
// (Cassandra counts from the current second rounded down), so Cassandra
// drops expired messages itself; Fetch additionally hides rows whose
// expires_at has passed. Idempotency claims and done records carry the 24 h
// window as TTL. Sweep therefore has little to do on a real clock: it reads
// the expiry index from its watermark up to now (only the hours in
// between, each index row once) and deletes what the store clock says has
// expired but the TTL has not removed yet — rows written by a relay whose
// clock is behind, or by tests with a fake clock — together with their
// shared payloads, and counts the messages it removed. The index rows
// expire with their messages (rounded down), so in steady state Sweep
// reads only recently expired index rows.
//
// # Scans
//
// Oldest scans the first row of every queue partition (PER PARTITION LIMIT
// 1): O(devices with queued messages), because a queue's first message by
// server id is its oldest (server ids and server times come from the same
// relay clock; across relays the answer is off by at most their skew).
// Payloads scans queue_payloads' partition keys. Both are full-table
// scans, meant for a metric refreshed once a minute by one relay and for
// tests — not for every relay every few seconds on a large cluster.
//
// # Driver settings
//
// Open uses token-aware host selection over round robin (DC-aware round
// robin with Config.LocalDC), so each single-partition request goes to a
// replica. Reads and writes use Config.Consistency (LOCAL_QUORUM by
// default: a Put that returned nil is on a quorum of the local DC), LWTs
// Config.SerialConsistency (LOCAL_SERIAL). gocql prepares every statement
// once per connection and reuses it; statement texts are constants.
// Retries: the session has no retry policy; every statement the store
// builds is idempotent — fixed write timestamps, deletes, and LWTs that
// carry the owner id, so an attempt recognises its own earlier success —
// and is marked so, with a retry policy (Config.Retries, backoff honouring
// ctx) that retries timeouts and unavailable nodes on the next host and
// never requests the cluster rejected. Each request is bounded by
// Config.Timeout.
//
// Errors: the caller's ctx ending is returned as ctx.Err() (wrapped); node,
// network and timeout failures are wrapped with queue.Unavailable, so the
// relay answers CODE_UNAVAILABLE and the client retries with the same
// client id; requests the cluster rejects as malformed are plain errors (a
// bug, not worth retrying).
//
// # Operations
//
//   - Clocks: deletes win over the writes they follow only if their
//     timestamps are later. Relays write with their own clock in
//     microseconds (made strictly increasing per process); keep relay
//     clocks NTP-synced, as Cassandra itself requires.
//   - Tombstones: every ack deletes a row in the device's partition.
//     queue_messages, queue_payloads, queue_commits and queue_claims use
//     gc_grace_seconds = 3 h (Cassandra's default max_hint_window) instead
//     of 10 days, so a device reading its queue does not wade through
//     10 days of acked rows; queue_messages uses leveled compaction, which
//     purges them sooner. Run repairs more often than that, or a replica
//     that missed an ack may bring the message back once (the client drops
//     the duplicate by its id).
//   - Batches: MaxBatchBytes must stay below batch_size_fail_threshold;
//     batch_size_warn_threshold (5 KiB) will log single-batch Puts of many
//     recipients — raise it to MaxBatchBytes to keep the log quiet.
//   - Keyspace: Open creates it only when Config.Replication is set (use
//     NetworkTopologyStrategy with replication factor 3 in production);
//     create the schema from one relay first, or by hand from Schema:
//     concurrent schema changes from several nodes can disagree.
package cassandra
