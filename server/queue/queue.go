// Package queue defines the relay's durable store-until-ack queues: the Store
// interface every backend implements, the types it moves, its errors, and
// the validation every backend applies in the same way.
//
// # Model
//
// Every device has one queue, ordered by ServerID (the relay's Snowflake id,
// which is time-sortable). A Send accepted by the relay becomes one Put: one
// ServerID and one message per recipient device. The relay answers the
// sender's SendAck only after Put returns nil, so a SendAck means "stored on
// disk (or on a quorum) for every recipient". The recipient fetches in
// ServerID order and acks by id; only the ack deletes. Nothing else deletes a
// message except its expiry (ExpiresAt, 30 days by default at the relay).
//
// A group send carries one shared ciphertext for all member devices. A
// backend stores it once, with one small reference per recipient, and drops
// it when the last reference is acked or expires — a 1,024-member send costs
// one payload, not 1,024.
//
// # Idempotency
//
// A client retries a Send it got no SendAck for with the same 16-byte client
// id. Put remembers (Sender, SenderDevice, ClientID) for IdempotencyWindow and
// answers a repeat with the original ServerID and ServerTime, storing nothing
// new. This is what makes "the ack was lost" and "the context was cancelled
// while Put waited" safe: the retry can never make a second message.
//
// # Limits
//
// Each device's queue holds at most Options.MaxDepth messages. A Put that
// would exceed the cap for any recipient stores nothing and returns a
// *QueueFullError naming the device: the sender learns it, nothing is ever
// trimmed silently. Puts larger than the protocol's limits are refused with
// ErrInvalid before they reach the backend.
//
// # Backends
//
// server/queue/sqlite is the embedded backend (WAL, one writer goroutine,
// group commit); server/queue/cassandra is the scale-out backend (partition
// (account, device), clustering server_id, TTL on insert). Both run the
// conformance suite in server/queue/queuetest, so they cannot drift apart.
package queue

import (
	"context"
	"fmt"
	"math"
	"time"

	"github.com/hushchat/hush/protocol"
)

// IdempotencyWindow is how long a (Sender, SenderDevice, ClientID) is
// remembered after its Put was accepted.
const IdempotencyWindow = 24 * time.Hour

// DefaultMaxDepth is the per-device queue cap when Options.MaxDepth is 0.
const DefaultMaxDepth = 10_000

// Limits every backend enforces (the wire protocol's, so a Put that passed the
// relay's frame checks always passes these).
const (
	// MaxRecipients bounds the recipient devices of one Put.
	MaxRecipients = protocol.MaxRecipients
	// MaxPayloadSize bounds one stored ciphertext (own or shared).
	MaxPayloadSize = protocol.MaxPayloadSize
	// ClientIDSize is the exact size of Put.ClientID.
	ClientIDSize = protocol.ClientIDSize
	// MaxAccountLen bounds Device.Account and Put.Sender.
	MaxAccountLen = protocol.MaxAccountNameLen
	// MaxFetch bounds the limit argument of Fetch.
	MaxFetch = 4096
	// MaxServerID is the largest ServerID a backend accepts: ids are stored
	// as signed 64-bit integers (SQLite INTEGER, Cassandra bigint), and
	// Snowflake ids never exceed it.
	MaxServerID = math.MaxInt64
)

// Device addresses one device's queue.
type Device struct {
	Account string
	ID      uint32
}

// String returns "account.id", the form used in errors and logs.
func (d Device) String() string { return fmt.Sprintf("%s.%d", d.Account, d.ID) }

// Message is one queued envelope as the recipient device will receive it.
type Message struct {
	ServerID     uint64 // Snowflake, assigned by the relay; queue order
	Sender       string
	SenderDevice uint32
	Type         int32  // protocol.EnvelopeType value, copied through
	Payload      []byte // ciphertext (the shared one for group sends); the caller owns it
	// ServerTime is the relay's acceptance time, kept with millisecond
	// precision (what the wire carries and what Cassandra stores).
	ServerTime time.Time
}

// Put is one accepted Send.
type Put struct {
	ServerID     uint64 // 1..MaxServerID
	Sender       string
	SenderDevice uint32
	// ClientID is the client's 16-byte message id; with (Sender,
	// SenderDevice) it is the idempotency key.
	ClientID []byte
	// ServerTime and ExpiresAt are stored with millisecond precision.
	// ExpiresAt must be after ServerTime (the relay's TTL, 30 days by
	// default).
	ServerTime time.Time
	ExpiresAt  time.Time
	// Shared is a group payload, stored once and referenced by every
	// recipient whose own Payload is empty; nil for 1-1 sends.
	Shared []byte
	// SharedType is the envelope type of the recipients that get Shared.
	SharedType int32
	// Recipients lists 1..MaxRecipients distinct devices.
	Recipients []Recipient
}

// Recipient is one device a Put queues a message for. An empty Payload means
// the device gets Put.Shared with Put.SharedType; otherwise it gets Payload
// with Type.
type Recipient struct {
	Device  Device
	Type    int32
	Payload []byte
}

// PutResult is the outcome of an accepted Put.
type PutResult struct {
	// ServerID is the id the messages are stored under: Put.ServerID, or the
	// original id when Duplicate.
	ServerID uint64
	// Duplicate reports that an earlier Put with the same (Sender,
	// SenderDevice, ClientID) was accepted within IdempotencyWindow; nothing
	// new was stored, and ServerID and ServerTime are the original's. The
	// recipients and payloads of the repeat are not compared with the
	// original's: the client id alone identifies the message.
	Duplicate bool
	// ServerTime is the stored acceptance time (of the original when
	// Duplicate), with millisecond precision.
	ServerTime time.Time
}

// Store is a relay's durable queue. Guarantees, identical for every backend:
//
//   - Put is atomic and durable: when it returns nil, every recipient's
//     message survives a crash of the process or the machine (fsync'd, or
//     quorum-written); when it returns an error, nothing of it is visible to
//     any recipient. When ctx ends while Put waits, Put returns ctx.Err() and
//     the Put may or may not have been stored; retrying it with the same
//     ClientID is safe (see Duplicate).
//   - Put is idempotent per (Sender, SenderDevice, ClientID) for
//     IdempotencyWindow. A Put that returned an error left no idempotency
//     record, so its retry is a fresh attempt.
//   - Put refuses with *QueueFullError (naming the first full device and the
//     cap) when any recipient's queue is at its cap, storing nothing — there
//     is never silent trimming. Messages that expired but were not yet swept
//     still count towards the cap and Depth.
//   - Fetch returns a device's messages with ServerID > afterServerID in
//     ServerID order, at most limit (1..MaxFetch) of them, skipping expired
//     ones; messages stay until Ack, so a later Fetch returns them again.
//   - Ack deletes exactly the named messages of that device; ids of other
//     devices' messages are ignored (a device can never delete another
//     device's messages), and acking an unknown or already acked id is not an
//     error. deleted counts the messages actually removed. A shared payload is
//     deleted when its last reference is acked or expires.
//   - Ack is not durable: when it returns nil, the deletion is visible to
//     every later Fetch, Depth and Oldest, but a crash of the machine (or
//     of a Cassandra replica before its commit log reached disk) may undo
//     it. An undone ack only brings the message back for one more delivery,
//     which clients discard by its ServerID and ack again; a Put, whose
//     SendAck promises the message to its sender, is never weakened this
//     way. Backends use this to skip the fsync of ack-only writes.
//   - Nothing is kept after its Ack (up to the previous point); nothing is
//     deleted before its Ack or its expiry.
//   - After Close every method returns ErrClosed; Close waits for writes
//     already submitted to finish, and closing twice is harmless.
//
// Errors from an unreachable or failing backend satisfy IsRetryable: the
// relay answers them with CODE_UNAVAILABLE and the client retries later with
// the same client id.
//
// A Store is safe for concurrent use.
type Store interface {
	Put(ctx context.Context, p Put) (PutResult, error)
	Fetch(ctx context.Context, d Device, afterServerID uint64, limit int) ([]Message, error)
	Ack(ctx context.Context, d Device, serverIDs []uint64) (deleted int, err error)
	// Depth returns the number of messages queued for d (acked ones never
	// count; expired ones count until Sweep removes them).
	Depth(ctx context.Context, d Device) (int, error)
	// Oldest returns the ServerTime of the oldest message across all queues
	// (zero time if none) — for the hush_queue_oldest_unacked_seconds
	// metric, read about once a minute. Like Depth it includes expired
	// messages not yet swept. Backends may compute it from each queue's
	// head (its lowest ServerID), which is its oldest message as long as a
	// queue's ServerIDs and ServerTimes agree in order.
	Oldest(ctx context.Context) (time.Time, error)
	// Sweep deletes messages expired at now, shared payloads without
	// references, and idempotency records older than IdempotencyWindow;
	// it returns how many messages it removed. The relay calls it
	// periodically (e.g. every minute); a backend with native expiry may
	// have less to do.
	Sweep(ctx context.Context, now time.Time) (int, error)
	Close() error
}

// PayloadCounter is implemented by every backend so the conformance suite
// (and operators) can check that a shared payload is stored once and dropped
// after its last reference. Payloads returns the number of shared payloads
// currently stored.
type PayloadCounter interface {
	Payloads(ctx context.Context) (int, error)
}

// Options common to all backends.
type Options struct {
	// MaxDepth caps each device's queue; 0 means DefaultMaxDepth.
	MaxDepth int
	// Clock returns the current time, for expiry and the idempotency
	// window; nil means time.Now. Tests inject a fake clock.
	Clock func() time.Time
}

// DepthLimit returns the effective per-device cap.
func (o Options) DepthLimit() int {
	if o.MaxDepth <= 0 {
		return DefaultMaxDepth
	}
	return o.MaxDepth
}

// Now returns the current time of the configured clock.
func (o Options) Now() time.Time {
	if o.Clock == nil {
		return time.Now()
	}
	return o.Clock()
}
