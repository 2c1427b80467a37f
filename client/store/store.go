// Package store is the client's local state: one SQLite database per
// profile (modernc.org/sqlite, pure Go, WAL) holding the account, the Signal
// protocol state, contacts, conversations, messages with their per-recipient
// status and a full-text index, the outbox, groups, the dedupe table of
// processed envelopes, envelopes held for later, durable events and settings.
//
// The state is split into small interfaces, one per concern (AccountStore,
// MessageStore, OutboxStore, …, and crypto.Store for the protocol), in the
// style of whatsmeow's store package; one SQL container, *DB, implements
// all of them, so that a caller can put writes to several concerns into one
// transaction with Atomic. That is what makes the client crash-safe: an
// envelope's decryption (the session update), the message it yields, the
// event announcing it and the mark that it was processed commit together or
// not at all, and only then is the envelope acknowledged to the relay.
//
// Transactions: Atomic opens a write transaction (BEGIN IMMEDIATE on the
// single writer connection) and carries it in the context it passes to fn;
// every method called with that context joins it, and a nested Atomic
// joins it too (without a savepoint unless one is needed: see Atomic).
// Methods called outside Atomic run on their own: writes as one statement
// or one short transaction, reads on a separate read-only pool that WAL
// never blocks; Snapshot groups several reads into one read transaction.
// Because there is one writer connection, a caller that holds an in-process
// lock must not wait for Atomic while another goroutine inside Atomic waits
// for that lock; the client avoids this by entering Atomic before calling
// into crypto.Protocol, which takes its locks inside.
package store

import (
	"context"
	"errors"
	"time"

	"github.com/hushchat/hush/crypto"
)

// ErrNotFound is returned (wrapped) for a missing row. It is crypto's
// ErrNotFound, so protocol-state lookups satisfy crypto.Store's contract.
var ErrNotFound = crypto.ErrNotFound

// ErrSchemaTooNew is returned by Open for a profile written by a newer
// version of hush.
var ErrSchemaTooNew = errors.New("profile database is from a newer version of hush")

// Account is this device's registration.
type Account struct {
	Name      string
	DeviceID  uint32
	ServerURL string // key server base URL
	RelayURL  string // relay WebSocket URL
	// IdentityPrivate is the 32-byte identity private key. The database
	// file is readable by its owner only (0600).
	IdentityPrivate     []byte
	RegistrationID      uint32
	Token               string
	TokenExpiry         time.Time
	NextPreKeyID        uint32
	NextSignedPreKeyID  uint32
	SignedPreKeyID      uint32
	SignedPreKeyCreated time.Time
	Created             time.Time
}

// AccountStore keeps the single account row.
type AccountStore interface {
	// LoadAccount returns the account, or an error wrapping ErrNotFound
	// before registration.
	LoadAccount(ctx context.Context) (*Account, error)
	// SaveAccount creates or replaces the account row.
	SaveAccount(ctx context.Context, a *Account) error
}

// KeyStore keeps what the client needs beyond crypto.Store to look after
// its prekeys.
type KeyStore interface {
	// RetireSignedPreKey marks a replaced signed prekey for removal after
	// removeAfter (messages built on it may still be queued).
	RetireSignedPreKey(ctx context.Context, id uint32, removeAfter time.Time) error
	// ExpiredSignedPreKeys lists retired signed prekeys due for removal.
	ExpiredSignedPreKeys(ctx context.Context, now time.Time) ([]uint32, error)
}

// DeviceIdentity is one remote device's recorded identity key.
type DeviceIdentity struct {
	Device    uint32
	Key       []byte
	Verified  bool
	FirstSeen time.Time
}

// IdentityChange is a remote device's new identity key that the user has
// not accepted yet.
type IdentityChange struct {
	Name   string
	Device uint32
	OldKey []byte
	NewKey []byte
	Seen   time.Time
}

// TrustStore keeps identity keys per account and the pending changes.
type TrustStore interface {
	// Identities lists the recorded identity keys of name's devices.
	Identities(ctx context.Context, name string) ([]DeviceIdentity, error)
	// SetVerified sets the verified flag on all of name's recorded keys.
	SetVerified(ctx context.Context, name string, verified bool) error
	// RecordIdentityChange records (or refreshes) a pending change.
	RecordIdentityChange(ctx context.Context, c IdentityChange) error
	// IdentityChanges lists the pending changes of name ("" for all).
	IdentityChanges(ctx context.Context, name string) ([]IdentityChange, error)
	// ClearIdentityChanges forgets name's pending changes.
	ClearIdentityChanges(ctx context.Context, name string) error
}

// Contact is an account this device has talked to.
type Contact struct {
	Name    string
	Created time.Time
}

// ContactStore keeps contacts.
type ContactStore interface {
	// EnsureContact adds name unless present.
	EnsureContact(ctx context.Context, name string, now time.Time) error
	// Contacts lists contacts by name.
	Contacts(ctx context.Context) ([]Contact, error)
}

// Conversation is one 1-1 or group conversation.
type Conversation struct {
	ID           string // "@name" or "#<hex group id>"
	Peer         string // 1-1 only
	GroupID      []byte // group only
	Created      time.Time
	LastActivity time.Time
	Muted        bool
	// Filled by Conversations:
	Unread int
	Last   *Message
}

// ConversationStore keeps conversations.
type ConversationStore interface {
	// EnsureConversation creates c unless a conversation with c.ID exists.
	EnsureConversation(ctx context.Context, c Conversation) error
	// Conversation returns one conversation (without Unread/Last).
	Conversation(ctx context.Context, id string) (*Conversation, error)
	// Conversations lists all conversations, most recently active first,
	// with their unread count and last message.
	Conversations(ctx context.Context) ([]Conversation, error)
	// NextCounter increments and returns the conversation's send counter.
	NextCounter(ctx context.Context, id string) (uint64, error)
	// SetMuted sets the conversation's mute flag.
	SetMuted(ctx context.Context, id string, muted bool) error
}

// MessageKind tells what a stored message is.
type MessageKind int

// Message kinds.
const (
	KindText          MessageKind = 1
	KindAttachment    MessageKind = 2
	KindGroupUpdate   MessageKind = 3
	KindUndecryptable MessageKind = 4
)

// Status is an outgoing message's delivery state. Statuses only move
// forward, except to Failed.
type Status int

// Statuses, in order.
const (
	StatusPending   Status = 0
	StatusSent      Status = 1
	StatusDelivered Status = 2
	StatusRead      Status = 3
	StatusFailed    Status = -1
)

// Message is one stored message.
type Message struct {
	Seq          int64 // row id, assigned on insert
	Conv         string
	ID           []byte // 16-byte message id chosen by the sender
	Sender       string
	SenderDevice uint32
	Outgoing     bool
	Counter      uint64
	SortKey      int64
	SentAt       time.Time
	ReceivedAt   time.Time
	ServerID     uint64
	Kind         MessageKind
	Body         string
	Content      []byte // encoded protocol.Content, may be nil
	Status       Status
	Read         bool
	Error        string
}

// Recipient is the status of an outgoing message at one account.
type Recipient struct {
	Account string
	Status  Status
	Updated time.Time
}

// MessageStore keeps messages, their status and the search index.
type MessageStore interface {
	// InsertMessage stores m and sets m.Seq and m.SortKey. It reports
	// false (and changes nothing) when a message with the same sender and
	// id exists.
	InsertMessage(ctx context.Context, m *Message) (bool, error)
	// MessageByID returns the message sender sent with id.
	MessageByID(ctx context.Context, sender string, id []byte) (*Message, error)
	// MessageBySeq returns a message by its row id.
	MessageBySeq(ctx context.Context, seq int64) (*Message, error)
	// OutgoingByServerID returns an outgoing message by any relay id it
	// was stored under.
	OutgoingByServerID(ctx context.Context, serverID uint64) (*Message, error)
	// AddServerID records another relay id of outgoing message seq.
	AddServerID(ctx context.Context, seq int64, serverID uint64) error
	// ReplaceMessage rewrites kind, body, content, counter, sent time and
	// error of an existing message (an undecryptable placeholder that was
	// decrypted later).
	ReplaceMessage(ctx context.Context, m *Message) error
	// History returns up to limit messages of conv with SortKey below
	// before (0: the newest), oldest first.
	History(ctx context.Context, conv string, limit int, before int64) ([]Message, error)
	// Search finds messages whose body matches every word of query (the
	// last word as a prefix), newest first; conv "" searches all.
	Search(ctx context.Context, query, conv string, limit int) ([]Message, error)
	// SetStatus sets an outgoing message's overall status (and server id
	// when not 0).
	SetStatus(ctx context.Context, seq int64, st Status, serverID uint64, errText string) error
	// SetRecipientStatus raises account's status for message seq (never
	// lowers it) and recomputes the overall status as the lowest over
	// recipients. It reports whether anything changed.
	SetRecipientStatus(ctx context.Context, seq int64, account string, st Status, at time.Time) (bool, error)
	// AddRecipients records recipients of an outgoing message at Pending.
	AddRecipients(ctx context.Context, seq int64, accounts []string, at time.Time) error
	// Recipients lists an outgoing message's per-account status.
	Recipients(ctx context.Context, seq int64) ([]Recipient, error)
	// MarkRead marks conv's unread incoming messages read and returns them.
	MarkRead(ctx context.Context, conv string) ([]Message, error)
	// MarkReadByID marks the given incoming messages read (a read sync
	// from another of this account's devices) and returns the
	// conversations touched.
	MarkReadByID(ctx context.Context, ids [][]byte) ([]string, error)
}

// Outbox kinds.
const (
	// OutboxPairwise encrypts Content for every device of Accounts (and,
	// with OwnDevices, for this account's other devices, which get
	// SyncContent when set). With GroupID set it carries this device's
	// sender key for that group, and its acknowledgement records the
	// addressed devices as holders.
	OutboxPairwise = 1
	// OutboxGroup encrypts Content once with this device's sender key for
	// GroupID and addresses every member device.
	OutboxGroup = 2
)

// Outbox states.
const (
	OutboxQueued  = 0 // waiting to be sent
	OutboxBlocked = 1 // a recipient's identity changed; waits for Trust
)

// OutboxItem is one pending Send.
type OutboxItem struct {
	Seq         int64
	Kind        int
	Message     int64 // messages.seq of the user-visible message, 0 if none
	GroupID     []byte
	Accounts    []string
	OwnDevices  bool
	Content     []byte // encoded, unpadded protocol.Content
	SyncContent []byte
	// DependsOn names an item that must be acknowledged (and so deleted)
	// before this one is sent: a group message waits for the sender-key
	// distribution it needs.
	DependsOn int64
	ClientID  []byte // set when Frame is
	Frame     []byte // encoded Send frame, once encrypted
	State     int
	Attempts  int
	NotBefore time.Time
	Error     string
	Created   time.Time
}

// OutboxStore keeps the outbox.
type OutboxStore interface {
	// Enqueue appends an item and sets its Seq.
	Enqueue(ctx context.Context, it *OutboxItem) error
	// PendingOutbox lists, in order, the sequence numbers of up to limit
	// queued items that are due at now and whose dependency is gone.
	PendingOutbox(ctx context.Context, now time.Time, limit int) ([]int64, error)
	// NextOutboxDue returns the earliest future not-before of a queued
	// item, or false.
	NextOutboxDue(ctx context.Context, now time.Time) (time.Time, bool, error)
	// OutboxItem returns one item.
	OutboxItem(ctx context.Context, seq int64) (*OutboxItem, error)
	// UpdateOutbox rewrites an item's mutable fields (client id, frame,
	// state, attempts, not-before, error, accounts).
	UpdateOutbox(ctx context.Context, it *OutboxItem) error
	// DeleteOutbox removes an item (acknowledged, or given up).
	DeleteOutbox(ctx context.Context, seq int64) error
	// OutboxForMessage returns the item carrying message seq, if any.
	OutboxForMessage(ctx context.Context, msg int64) (*OutboxItem, error)
	// PendingDistribution reports whether a sender-key distribution for
	// the group is still in the outbox.
	PendingDistribution(ctx context.Context, groupID []byte) (bool, error)
	// UnblockOutbox re-queues blocked items that address name and
	// returns how many.
	UnblockOutbox(ctx context.Context, name string) (int, error)
}

// Member is one group member.
type Member struct {
	Account string
	Admin   bool
}

// Group is a group's state as this device knows it.
type Group struct {
	ID       []byte
	Name     string
	Revision uint64
	Members  []Member
	// Member is false once this account left or was removed.
	Member  bool
	Actor   string
	Created time.Time
	Updated time.Time
}

// GroupStore keeps groups and which devices hold this device's sender key.
type GroupStore interface {
	// SaveGroup creates or replaces a group with its members.
	SaveGroup(ctx context.Context, g *Group) error
	// Group returns one group.
	Group(ctx context.Context, id []byte) (*Group, error)
	// Groups lists all groups by name.
	Groups(ctx context.Context) ([]Group, error)
	// GroupsWithMember lists the ids of the groups account is a member of
	// (and this account still is).
	GroupsWithMember(ctx context.Context, account string) ([][]byte, error)
	// SenderKeyHolders lists the devices holding this device's current
	// sender key for the group.
	SenderKeyHolders(ctx context.Context, groupID []byte) ([]crypto.Address, error)
	// AddSenderKeyHolders records that devices got the current sender key.
	AddSenderKeyHolders(ctx context.Context, groupID []byte, devices []crypto.Address) error
	// RemoveSenderKeyHolder forgets one device in every group (its
	// session was rebuilt, so it must be sent the key again).
	RemoveSenderKeyHolder(ctx context.Context, device crypto.Address) error
	// ResetSenderKeyHolders forgets all holders (after a rotation).
	ResetSenderKeyHolders(ctx context.Context, groupID []byte) error
	// DeleteSenderKeysOf deletes the sender keys account's devices use in
	// the group (it left or was removed).
	DeleteSenderKeysOf(ctx context.Context, groupID []byte, account string) error
}

// HeldEnvelope is an envelope that could not be processed yet.
type HeldEnvelope struct {
	ServerID   uint64
	Sender     string
	Device     uint32
	Type       int
	Payload    []byte
	ServerTime time.Time
	Reason     string
	Held       time.Time
}

// InboxStore keeps what the receive path needs for exactly-once
// processing.
type InboxStore interface {
	// MarkProcessed records serverID as processed and reports false when
	// it already was.
	MarkProcessed(ctx context.Context, serverID uint64, at time.Time) (bool, error)
	// Processed reports whether serverID was processed.
	Processed(ctx context.Context, serverID uint64) (bool, error)
	// PruneProcessed forgets ids processed before t (the relay keeps
	// nothing longer than its queue TTL, so older ids cannot come back).
	PruneProcessed(ctx context.Context, before time.Time) error
	// Hold stores an envelope for later.
	Hold(ctx context.Context, e HeldEnvelope) error
	// HeldEnvelopes lists held envelopes of sender ("" for all), oldest
	// first.
	HeldEnvelopes(ctx context.Context, sender string) ([]HeldEnvelope, error)
	// Unhold deletes a held envelope.
	Unhold(ctx context.Context, serverID uint64) error
	// OweReceipt records that a delivery receipt is owed to sender for
	// message id.
	OweReceipt(ctx context.Context, sender string, id []byte) error
	// TakeReceipts removes and returns the owed receipts by sender.
	TakeReceipts(ctx context.Context) (map[string][][]byte, error)
}

// StoredEvent is a durable event awaiting its handler.
type StoredEvent struct {
	Seq     int64
	Kind    string
	Data    []byte
	Created time.Time
}

// EventStore keeps durable events until the application handled them.
type EventStore interface {
	// AppendEvent stores an event and returns its sequence number.
	AppendEvent(ctx context.Context, kind string, data []byte, at time.Time) (int64, error)
	// EventsAfter lists up to limit events with Seq > after, in order.
	EventsAfter(ctx context.Context, after int64, limit int) ([]StoredEvent, error)
	// DeleteEvent removes a handled event.
	DeleteEvent(ctx context.Context, seq int64) error
	// DeleteEventsThrough removes every event with Seq ≤ seq.
	DeleteEventsThrough(ctx context.Context, seq int64) error
}

// SettingsStore keeps string settings.
type SettingsStore interface {
	// Setting returns a setting, or "" and false when unset.
	Setting(ctx context.Context, key string) (string, bool, error)
	// SetSetting stores a setting.
	SetSetting(ctx context.Context, key, value string) error
}

// Store is everything the client keeps, with Atomic spanning all of it.
type Store interface {
	crypto.Store
	AccountStore
	KeyStore
	TrustStore
	ContactStore
	ConversationStore
	MessageStore
	OutboxStore
	GroupStore
	InboxStore
	EventStore
	SettingsStore
	Close() error
}

var _ Store = (*DB)(nil)
