package client

import (
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/hushchat/hush/client/store"
	"github.com/hushchat/hush/protocol"
)

// MessageID names a message across every device: 16 random bytes chosen by
// its sender. Receipts and quotes refer to it. It prints and marshals as
// 32 lower-case hex digits.
type MessageID [protocol.MessageIDSize]byte

func newMessageID() MessageID {
	var id MessageID
	rand.Read(id[:]) // never fails (crypto/rand panics instead)
	return id
}

func (id MessageID) String() string { return hex.EncodeToString(id[:]) }

// IsZero reports whether id is unset.
func (id MessageID) IsZero() bool { return id == MessageID{} }

// MarshalText implements encoding.TextMarshaler.
func (id MessageID) MarshalText() ([]byte, error) { return []byte(id.String()), nil }

// UnmarshalText implements encoding.TextUnmarshaler.
func (id *MessageID) UnmarshalText(b []byte) error {
	v, err := ParseMessageID(string(b))
	if err != nil {
		return err
	}
	*id = v
	return nil
}

// ParseMessageID parses the 32-hex-digit form.
func ParseMessageID(s string) (MessageID, error) {
	var id MessageID
	b, err := hex.DecodeString(s)
	if err != nil || len(b) != len(id) {
		return id, fmt.Errorf("message id %q: want %d hex digits", truncate(s, 40), 2*len(id))
	}
	copy(id[:], b)
	return id, nil
}

func messageIDFrom(b []byte) MessageID {
	var id MessageID
	copy(id[:], b)
	return id
}

// GroupID names a group: 16 random bytes chosen by its creator. It prints
// and marshals as 32 lower-case hex digits.
type GroupID [protocol.GroupIDSize]byte

func newGroupID() GroupID {
	var id GroupID
	rand.Read(id[:])
	return id
}

func (id GroupID) String() string { return hex.EncodeToString(id[:]) }

// IsZero reports whether id is unset.
func (id GroupID) IsZero() bool { return id == GroupID{} }

// MarshalText implements encoding.TextMarshaler.
func (id GroupID) MarshalText() ([]byte, error) { return []byte(id.String()), nil }

// UnmarshalText implements encoding.TextUnmarshaler.
func (id *GroupID) UnmarshalText(b []byte) error {
	v, err := ParseGroupID(string(b))
	if err != nil {
		return err
	}
	*id = v
	return nil
}

// ParseGroupID parses the 32-hex-digit form.
func ParseGroupID(s string) (GroupID, error) {
	var id GroupID
	b, err := hex.DecodeString(s)
	if err != nil || len(b) != len(id) {
		return id, fmt.Errorf("group id %q: want %d hex digits", truncate(s, 40), 2*len(id))
	}
	copy(id[:], b)
	return id, nil
}

func groupIDFrom(b []byte) (GroupID, bool) {
	var id GroupID
	if len(b) != len(id) {
		return id, false
	}
	copy(id[:], b)
	return id, true
}

// ConvID names a conversation: "@name" for a 1-1 conversation with account
// name, "#<group id hex>" for a group.
type ConvID string

// Direct returns the 1-1 conversation with account name (which should be
// in canonical lower-case form; see protocol.NormalizeAccountName).
func Direct(name string) ConvID { return ConvID("@" + name) }

// GroupConv returns the conversation of group id.
func GroupConv(id GroupID) ConvID { return ConvID("#" + id.String()) }

// IsGroup reports whether c is a group conversation.
func (c ConvID) IsGroup() bool { return strings.HasPrefix(string(c), "#") }

// Peer returns the other account of a 1-1 conversation ("" for a group).
func (c ConvID) Peer() string {
	if strings.HasPrefix(string(c), "@") {
		return string(c[1:])
	}
	return ""
}

// Group returns the group of a group conversation.
func (c ConvID) Group() (GroupID, bool) {
	if !c.IsGroup() {
		return GroupID{}, false
	}
	id, err := ParseGroupID(string(c[1:]))
	return id, err == nil
}

// ParseConvID checks and returns a conversation id in either form.
func ParseConvID(s string) (ConvID, error) {
	c := ConvID(s)
	switch {
	case c.IsGroup():
		if _, ok := c.Group(); ok {
			return c, nil
		}
	case strings.HasPrefix(s, "@"):
		if err := protocol.ValidateAccountName(s[1:]); err == nil {
			return c, nil
		}
	}
	return "", fmt.Errorf("conversation %q: want @name or #<32 hex digits>", truncate(s, 40))
}

// Status is an outgoing message's delivery state. It only moves forward
// (except to StatusFailed).
type Status int

// Statuses, in order.
const (
	StatusFailed    Status = Status(store.StatusFailed)
	StatusPending   Status = Status(store.StatusPending)   // in the outbox
	StatusSent      Status = Status(store.StatusSent)      // ✓ the relay stored it
	StatusDelivered Status = Status(store.StatusDelivered) // ✓✓ on a device of every recipient
	StatusRead      Status = Status(store.StatusRead)      // read by every recipient
)

func (s Status) String() string {
	switch s {
	case StatusFailed:
		return "failed"
	case StatusPending:
		return "pending"
	case StatusSent:
		return "sent"
	case StatusDelivered:
		return "delivered"
	case StatusRead:
		return "read"
	}
	return fmt.Sprintf("Status(%d)", int(s))
}

// MarshalText implements encoding.TextMarshaler.
func (s Status) MarshalText() ([]byte, error) { return []byte(s.String()), nil }

// UnmarshalText implements encoding.TextUnmarshaler.
func (s *Status) UnmarshalText(b []byte) error {
	for _, v := range []Status{StatusFailed, StatusPending, StatusSent, StatusDelivered, StatusRead} {
		if v.String() == string(b) {
			*s = v
			return nil
		}
	}
	return fmt.Errorf("unknown status %q", truncate(string(b), 20))
}

// MessageKind tells what a message is.
type MessageKind string

// Message kinds.
const (
	KindText          MessageKind = "text"
	KindAttachment    MessageKind = "attachment"
	KindGroupUpdate   MessageKind = "group_update"  // a system line: "alice added carol"
	KindUndecryptable MessageKind = "undecryptable" // shown as a placeholder
)

var kindToStore = map[MessageKind]store.MessageKind{
	KindText: store.KindText, KindAttachment: store.KindAttachment,
	KindGroupUpdate: store.KindGroupUpdate, KindUndecryptable: store.KindUndecryptable,
}

func kindFromStore(k store.MessageKind) MessageKind {
	for mk, sk := range kindToStore {
		if sk == k {
			return mk
		}
	}
	return MessageKind(fmt.Sprintf("kind%d", k))
}

// Attachment describes an encrypted file stored in object storage. It is
// carried inside the end-to-end encrypted message; the key and digest never
// reach the server. (Uploading and downloading belong to the media layer.)
type Attachment struct {
	ObjectKey     string `json:"object_key"`
	Key           []byte `json:"key"`    // 64 bytes: AES-256 ‖ HMAC-SHA256
	Digest        []byte `json:"digest"` // SHA-256 of the encrypted blob
	Size          uint64 `json:"size"`   // plaintext bytes
	EncryptedSize uint64 `json:"encrypted_size"`
	ContentType   string `json:"content_type,omitempty"`
	FileName      string `json:"file_name,omitempty"`
	Thumbnail     []byte `json:"thumbnail,omitempty"` // small JPEG
	Width         uint32 `json:"width,omitempty"`
	Height        uint32 `json:"height,omitempty"`
	Caption       string `json:"caption,omitempty"`
}

func (a *Attachment) proto() *protocol.AttachmentPointer {
	return &protocol.AttachmentPointer{
		ObjectKey: a.ObjectKey, Key: a.Key, Digest: a.Digest, Size: a.Size, EncryptedSize: a.EncryptedSize,
		ContentType: a.ContentType, FileName: a.FileName, Thumbnail: a.Thumbnail, Width: a.Width,
		Height: a.Height, Caption: a.Caption,
	}
}

func attachmentFrom(p *protocol.AttachmentPointer) *Attachment {
	if p == nil {
		return nil
	}
	return &Attachment{
		ObjectKey: p.ObjectKey, Key: p.Key, Digest: p.Digest, Size: p.Size, EncryptedSize: p.EncryptedSize,
		ContentType: p.ContentType, FileName: p.FileName, Thumbnail: p.Thumbnail, Width: p.Width,
		Height: p.Height, Caption: p.Caption,
	}
}

// Quote is the message a message replies to.
type Quote struct {
	ID     MessageID `json:"id"`
	Author string    `json:"author"`
	Text   string    `json:"text,omitempty"`
}

// Message is one message of a conversation.
type Message struct {
	// Seq orders a conversation (History pages by it); it is local to
	// this device.
	Seq          int64     `json:"seq"`
	ID           MessageID `json:"id"`
	Conv         ConvID    `json:"conv"`
	Group        *GroupID  `json:"group,omitempty"`
	Sender       string    `json:"from"`
	SenderDevice uint32    `json:"device"`
	Outgoing     bool      `json:"outgoing"`
	// Counter is the sender device's per-conversation counter.
	Counter  uint64      `json:"counter,omitempty"`
	SentAt   time.Time   `json:"timestamp"`
	Received time.Time   `json:"received"`
	ServerID uint64      `json:"server_id,omitempty"`
	Kind     MessageKind `json:"kind"`
	Text     string      `json:"text,omitempty"`
	// Attachment is set for KindAttachment.
	Attachment *Attachment `json:"attachment,omitempty"`
	Quote      *Quote      `json:"quote,omitempty"`
	// Status is an outgoing message's state (the lowest over its
	// recipients in a group).
	Status Status `json:"status"`
	// Read is set on incoming messages once marked read.
	Read bool `json:"read"`
	// Error explains StatusFailed and KindUndecryptable.
	Error string `json:"error,omitempty"`
}

// RecipientStatus is an outgoing message's state at one recipient account.
type RecipientStatus struct {
	Account string    `json:"account"`
	Status  Status    `json:"status"`
	Updated time.Time `json:"updated"`
}

// Conversation is a conversation summary.
type Conversation struct {
	ID           ConvID    `json:"id"`
	Name         string    `json:"name"` // the peer, or the group's name
	Group        *GroupID  `json:"group,omitempty"`
	LastActivity time.Time `json:"last_activity"`
	Unread       int       `json:"unread"`
	Muted        bool      `json:"muted"`
	Last         *Message  `json:"last,omitempty"`
}

// Contact is an account this device has a conversation or group with.
type Contact struct {
	Name string `json:"name"`
	// Verified: every known device's safety number was verified.
	Verified bool `json:"verified"`
	// IdentityChanged: a device's identity key changed and the change
	// was not accepted yet (Trust).
	IdentityChanged bool      `json:"identity_changed"`
	Devices         []uint32  `json:"devices"`
	Since           time.Time `json:"since"`
}

// Member is a group member.
type Member struct {
	Account string `json:"account"`
	Admin   bool   `json:"admin"`
}

// Group is a group's state as this device knows it.
type Group struct {
	ID       GroupID  `json:"id"`
	Name     string   `json:"name"`
	Revision uint64   `json:"revision"`
	Members  []Member `json:"members"`
	// Active is false once this account left or was removed.
	Active  bool      `json:"active"`
	Updated time.Time `json:"updated"`
}

func groupFromStore(g *store.Group) Group {
	id, _ := groupIDFrom(g.ID)
	out := Group{ID: id, Name: g.Name, Revision: g.Revision, Active: g.Member, Updated: g.Updated}
	for _, m := range g.Members {
		out.Members = append(out.Members, Member{Account: m.Account, Admin: m.Admin})
	}
	return out
}

// HasMember reports whether account is a member.
func (g *Group) HasMember(account string) bool {
	for _, m := range g.Members {
		if m.Account == account {
			return true
		}
	}
	return false
}

// Errors returned by the client. Test with errors.Is.
var (
	// ErrNotRegistered: the profile has no account yet (Register or
	// LinkDevice first).
	ErrNotRegistered = errors.New("profile has no account: register or link a device first")
	// ErrAlreadyRegistered: Register or LinkDevice on a profile that has
	// an account.
	ErrAlreadyRegistered = errors.New("profile already has an account")
	// ErrIdentityChanged: a recipient's identity key changed and the
	// change was not accepted; the concrete error is
	// *IdentityChangedError.
	ErrIdentityChanged = errors.New("identity key changed")
	// ErrUnknownAccount: no account has that name.
	ErrUnknownAccount = errors.New("no such account")
	// ErrNotMember: this account is not (or no longer) in the group.
	ErrNotMember = errors.New("not a member of the group")
	// ErrNoGroup: no group by that id or name.
	ErrNoGroup = errors.New("no such group")
	// ErrNoContact: no recorded identity for that account.
	ErrNoContact = errors.New("no such contact")
	// ErrOffline: an ephemeral send (typing) needs a connection.
	ErrOffline = errors.New("not connected")
	// ErrClosed: the client was closed.
	ErrClosed = errors.New("client closed")
	// ErrProfileLocked: another process has the profile open.
	ErrProfileLocked = errors.New("profile is in use by another process")
	// ErrEventsInUse: Events and Run are mutually exclusive, and Run
	// runs once at a time.
	ErrEventsInUse = errors.New("events are already being consumed")
	// ErrDeviceRevoked: this device was removed from its account.
	ErrDeviceRevoked = errors.New("this device was removed from its account")
	// ErrSendFailed: the message could not be sent; the wrapping error
	// says why.
	ErrSendFailed = errors.New("send failed")
)

// IdentityChangedError names the accounts whose identity changed.
type IdentityChangedError struct {
	Accounts []string
}

func (e *IdentityChangedError) Error() string {
	return fmt.Sprintf("identity key of %s changed: compare safety numbers, then accept the change with Trust",
		strings.Join(e.Accounts, ", "))
}

// Is makes errors.Is(err, ErrIdentityChanged) true.
func (e *IdentityChangedError) Is(target error) bool { return target == ErrIdentityChanged }

func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n] + "…"
}
