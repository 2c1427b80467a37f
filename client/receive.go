package client

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"slices"
	"time"

	"google.golang.org/protobuf/proto"

	"github.com/hushchat/hush/client/store"
	"github.com/hushchat/hush/crypto"
	"github.com/hushchat/hush/protocol"
)

// Receiving. Every envelope is processed in one transaction: mark its
// server id processed (a redelivery stops there), decrypt (the session or
// sender-key update is part of the transaction), apply the content (store
// the message, update statuses or group state), append the durable event.
// Only after the commit is the envelope acknowledged. A failure of the
// database or a cancelled context rolls everything back and leaves the
// envelope unacknowledged, to be delivered again.

// Hold reasons.
const (
	holdIdentity    = "identity_changed" // until Trust
	holdNoSenderKey = "no_sender_key"    // until the sender's key (or HoldTimeout after sync)
)

// envelope is an envelope from the relay or the held table.
type envelope struct {
	serverID   uint64
	sender     string
	device     uint32
	typ        protocol.EnvelopeType
	payload    []byte
	serverTime time.Time
}

func (e *envelope) addr() crypto.Address { return crypto.Address{Name: e.sender, DeviceID: e.device} }

// receipts are message ids by sender.
type receipts map[string][][]byte

// errCrashTest ends the connection without acknowledging (test hook).
var errCrashTest = errors.New("test hook: dropped the connection before ACK")

// receive processes a batch of envelopes (one or more Deliver frames) in
// one transaction, then acknowledges them. One transaction per batch
// rather than per envelope saves a commit and a round of bookkeeping per
// message; the batch commits or rolls back whole, which keeps
// exactly-once. The delivery receipts the batch owes are queued in the
// same transaction, one Receipt per sender for the whole batch (as Signal
// does), so a crash cannot lose them either.
//
// When the batch fails (a store error, or an envelope whose processing
// fails for a reason of its own), it is processed again one envelope per
// transaction: the others commit and are acknowledged, and the failing one
// is left unacknowledged, to come again after the reconnect its error
// causes. A bad envelope thus costs only itself.
func (c *Client) receive(ctx context.Context, s *session, envs []*protocol.Envelope) error {
	acks := make([]uint64, 0, len(envs))
	var stored []*envelope
	for _, pe := range envs {
		e := &envelope{serverID: pe.ServerId, sender: pe.Sender, device: pe.SenderDevice, typ: pe.Type,
			payload: pe.Payload, serverTime: time.UnixMilli(pe.ServerTimeMs)}
		if pe.Ephemeral {
			c.receiveEphemeral(ctx, e)
			acks = append(acks, pe.ServerId)
		} else {
			stored = append(stored, e)
		}
	}
	var failed error
	if len(stored) > 0 {
		err := c.receiveBatch(ctx, stored)
		if err != nil && len(stored) > 1 && ctx.Err() == nil {
			c.log.Warn("a batch of envelopes failed; processing them one by one", "envelopes", len(stored), "err", err)
			for _, e := range stored {
				if err := c.receiveBatch(ctx, []*envelope{e}); err != nil {
					if ctx.Err() != nil {
						return err
					}
					c.log.Error("process envelope", "server_id", e.serverID, "err", err)
					failed = errors.Join(failed, err)
					continue
				}
				acks = append(acks, e.serverID)
			}
		} else if err != nil {
			return err
		} else {
			for _, e := range stored {
				acks = append(acks, e.serverID)
			}
		}
		if hook := c.cfg.testHookAfterCommit; hook != nil {
			for _, e := range stored {
				if hook(e.serverID) {
					return errCrashTest
				}
			}
		}
	}
	for len(acks) > 0 {
		n := min(len(acks), protocol.MaxAckIDs)
		if err := s.sendFrame(&protocol.Frame{Body: &protocol.Frame_Ack{Ack: &protocol.Ack{ServerIds: acks[:n]}}}); err != nil {
			return err
		}
		acks = acks[n:]
	}
	return failed
}

// receiveBatch processes stored envelopes in one transaction: each is
// marked processed (a redelivery stops there), decrypted and applied, and
// the delivery receipts they owe are queued.
func (c *Client) receiveBatch(ctx context.Context, stored []*envelope) error {
	return c.tx(ctx, func(ctx context.Context, t *txn) error {
		for i, e := range stored {
			fresh, err := c.db.MarkProcessed(ctx, e.serverID, c.clock.Now())
			if err != nil {
				return err
			}
			if fresh {
				if err := c.handleEnvelope(ctx, t, e); err != nil {
					return fmt.Errorf("process envelope %d: %w", e.serverID, err)
				}
			}
			// Otherwise a redelivery after a crash: only ACK it.
			if hook := c.cfg.testHookInBatch; hook != nil && hook(e.serverID, i, len(stored)) {
				return errCrashTest
			}
		}
		return c.queueReceipts(ctx, t)
	})
}

// receiveEphemeral handles an envelope that was never stored by the relay
// (typing). It is decrypted and used, or dropped; it is never held.
func (c *Client) receiveEphemeral(ctx context.Context, e *envelope) {
	err := c.tx(ctx, func(ctx context.Context, t *txn) error {
		pt, _, err := c.decrypt(ctx, e)
		if err != nil {
			return err
		}
		content, err := protocol.DecodeContent(pt)
		if err != nil {
			return err
		}
		if ty, ok := content.Body.(*protocol.Content_Typing); ok && e.sender != c.me() {
			conv := Direct(e.sender)
			if gid, ok := groupIDFrom(content.GroupId); ok {
				conv = GroupConv(gid)
			}
			t.ephemeral = append(t.ephemeral, &TypingEvent{Conv: conv, From: e.sender, Device: e.device,
				Started: ty.Typing.Started, At: c.clock.Now()})
		}
		return nil
	})
	if err != nil {
		c.log.Debug("dropped an ephemeral envelope", "sender", e.sender, "err", err)
	}
}

func (c *Client) me() string {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.acct == nil {
		return ""
	}
	return c.acct.Name
}

func (c *Client) self() crypto.Address {
	c.mu.Lock()
	defer c.mu.Unlock()
	return crypto.Address{Name: c.acct.Name, DeviceID: c.acct.DeviceID}
}

func (c *Client) protocol() *crypto.Protocol {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.proto
}

// decrypt opens an envelope. For a sender-key message it also returns the
// group whose key opened it.
func (c *Client) decrypt(ctx context.Context, e *envelope) ([]byte, []byte, error) {
	p := c.protocol()
	addr := e.addr()
	switch e.typ {
	case protocol.EnvelopeType_ENVELOPE_TYPE_PREKEY, protocol.EnvelopeType_ENVELOPE_TYPE_SIGNAL:
		pt, err := p.Decrypt(ctx, addr, crypto.Ciphertext{Type: crypto.MessageType(e.typ), Body: e.payload})
		return pt, nil, err
	case protocol.EnvelopeType_ENVELOPE_TYPE_SENDER_KEY:
		// The envelope does not name the group (the relay need not know
		// it); try the groups the sender shares with this account. A
		// wrong group fails fast with ErrNoSenderKey and changes nothing.
		gids, err := c.db.GroupsWithMember(ctx, e.sender)
		if err != nil {
			return nil, nil, err
		}
		var last error = crypto.ErrNoSenderKey
		for _, gid := range gids {
			pt, err := p.GroupDecrypt(ctx, string(gid), addr, e.payload)
			if err == nil {
				return pt, gid, nil
			}
			if !errors.Is(err, crypto.ErrNoSenderKey) {
				last = err
			}
		}
		return nil, nil, last
	}
	return nil, nil, fmt.Errorf("%w: envelope type %d", crypto.ErrInvalidMessage, e.typ)
}

// handleEnvelope decrypts and applies one envelope inside the caller's
// transaction.
func (c *Client) handleEnvelope(ctx context.Context, t *txn, e *envelope) error {
	self := c.self()
	if e.addr() == self {
		return nil // the relay never echoes our own sends; ignore if it does
	}
	pt, gid, err := c.decrypt(ctx, e)
	var uie *crypto.UntrustedIdentityError
	switch {
	case err == nil:
	case errors.Is(err, crypto.ErrDuplicateMessage):
		c.log.Info("dropping a message decrypted before", "sender", e.addr().String(), "server_id", e.serverID)
		return nil
	case errors.As(err, &uie):
		accepted, terr := c.identityChanged(ctx, t, uie.Address, uie.Known, uie.Key)
		if terr != nil {
			return terr
		}
		if !accepted {
			return c.db.Hold(ctx, c.held(e, holdIdentity))
		}
		return c.handleEnvelope(ctx, t, e)
	case errors.Is(err, crypto.ErrNoSenderKey):
		return c.db.Hold(ctx, c.held(e, holdNoSenderKey))
	case isDecryptFailure(err):
		return c.storeUndecryptable(ctx, t, e, err)
	default:
		return err // the store failed: roll back, do not ACK
	}
	if e.typ == protocol.EnvelopeType_ENVELOPE_TYPE_PREKEY {
		// A one-time prekey may have been used up.
		t.after = append(t.after, func() { wakeup(c.keysWake) })
	}
	content, err := protocol.DecodeContent(pt)
	if err != nil {
		return c.storeUndecryptable(ctx, t, e, fmt.Errorf("malformed content: %w", err))
	}
	if gid != nil && !slices.Equal(content.GroupId, gid) {
		c.log.Warn("dropping a group message whose content names another group", "sender", e.addr().String())
		return nil
	}
	return c.applyContent(ctx, t, e, content)
}

// isDecryptFailure tells a message that cannot be opened from a failure
// of the machinery (which must not be recorded as the message's fault).
func isDecryptFailure(err error) bool {
	for _, e := range []error{crypto.ErrInvalidMessage, crypto.ErrNoSession, crypto.ErrUnknownPreKey,
		crypto.ErrTooFarInFuture, crypto.ErrMessageTooLarge, crypto.ErrUnsupportedVersion, crypto.ErrCorruptRecord} {
		if errors.Is(err, e) {
			return true
		}
	}
	return false
}

func (c *Client) held(e *envelope, reason string) store.HeldEnvelope {
	return store.HeldEnvelope{ServerID: e.serverID, Sender: e.sender, Device: e.device, Type: int(e.typ),
		Payload: e.payload, ServerTime: e.serverTime, Reason: reason, Held: c.clock.Now()}
}

// undecryptableID names the placeholder of an undecryptable envelope
// (unique per sender, as server ids are unique).
func undecryptableID(serverID uint64) []byte {
	id := make([]byte, protocol.MessageIDSize)
	copy(id, "undecr.")
	binary.BigEndian.PutUint64(id[8:], serverID)
	return id
}

// storeUndecryptable records a visible placeholder, raises the event and
// asks the sender to send the message again on a fresh session.
func (c *Client) storeUndecryptable(ctx context.Context, t *txn, e *envelope, cause error) error {
	c.log.Warn("could not decrypt a message", "sender", e.addr().String(), "server_id", e.serverID, "err", cause)
	conv := Direct(e.sender)
	now := c.clock.Now()
	if err := c.ensureDirect(ctx, t, e.sender); err != nil {
		return err
	}
	m := &store.Message{Conv: string(conv), ID: undecryptableID(e.serverID), Sender: e.sender, SenderDevice: e.device,
		SentAt: e.serverTime, ReceivedAt: now, ServerID: e.serverID, Kind: store.KindUndecryptable,
		Error: "could not be decrypted (" + reasonOf(cause) + "); the sender was asked to send it again"}
	inserted, err := c.db.InsertMessage(ctx, m)
	if err != nil || !inserted {
		return err
	}
	if err := c.emitDurable(ctx, t, &UndecryptableEvent{Message: c.messageFromStore(m)}); err != nil {
		return err
	}
	if !c.allowRetryRequest(e.addr(), now) {
		// A peer whose messages keep failing: do not answer every one,
		// or two broken sessions would ping-pong requests forever.
		c.log.Warn("not asking again for a resend", "sender", e.addr().String())
		return nil
	}
	// A pairwise message that fails means the session with that device
	// is broken on one side: start over (Signal's automatic session
	// reset). The request then goes out on a fresh session, from a new
	// bundle, which the sender can read and keeps using.
	if e.typ != protocol.EnvelopeType_ENVELOPE_TYPE_SENDER_KEY && c.allowReset(e.addr(), now) {
		if err := c.protocol().DeleteSession(ctx, e.addr()); err != nil {
			return err
		}
		if err := c.db.RemoveSenderKeyHolder(ctx, e.addr()); err != nil {
			return err
		}
	}
	rr := &protocol.Content{MessageId: newMessageIDBytes(), SentAtMs: now.UnixMilli(),
		Body: &protocol.Content_RetryRequest{RetryRequest: &protocol.RetryRequest{ServerId: e.serverID, Reason: reasonOf(cause)}}}
	return c.enqueuePairwise(ctx, t, rr, nil, []string{e.sender}, false, 0, nil)
}

// Retry-request limits: at most retryBudget requests to one device per
// retryWindow, and at most one session reset for one device per
// resetInterval. Without them, two devices that cannot read each other
// would answer each other's requests (themselves undecryptable) forever.
const (
	retryBudget   = 60
	retryWindow   = time.Minute
	resetInterval = 10 * time.Second
)

type budget struct {
	start time.Time
	n     int
}

func (c *Client) allowRetryRequest(addr crypto.Address, now time.Time) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	b := c.retryBudgets[addr]
	if b == nil || now.Sub(b.start) >= retryWindow {
		if len(c.retryBudgets) > 10000 {
			clear(c.retryBudgets)
		}
		b = &budget{start: now}
		c.retryBudgets[addr] = b
	}
	b.n++
	return b.n <= retryBudget
}

// allowReset reports whether the session with addr may be reset now.
func (c *Client) allowReset(addr crypto.Address, now time.Time) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	if last, ok := c.lastReset[addr]; ok && now.Sub(last) < resetInterval {
		return false
	}
	if len(c.lastReset) > 10000 {
		clear(c.lastReset)
	}
	c.lastReset[addr] = now
	return true
}

// reasonOf names a decryption failure without any payload bytes.
func reasonOf(err error) string {
	switch {
	case errors.Is(err, crypto.ErrNoSession):
		return "no session"
	case errors.Is(err, crypto.ErrUnknownPreKey):
		return "unknown prekey"
	case errors.Is(err, crypto.ErrNoSenderKey):
		return "no sender key"
	case errors.Is(err, crypto.ErrTooFarInFuture):
		return "too far in the future"
	case errors.Is(err, crypto.ErrUnsupportedVersion):
		return "unsupported version"
	case errors.Is(err, crypto.ErrCorruptRecord):
		return "corrupt session state"
	case errors.Is(err, protocol.ErrInvalid), errors.Is(err, protocol.ErrBadPadding):
		return "malformed content"
	}
	return "invalid message"
}

func newMessageIDBytes() []byte {
	id := newMessageID()
	return id[:]
}

// ensureDirect makes sure the 1-1 conversation with name and the contact
// exist; a new conversation also changes the presence subscriptions.
func (c *Client) ensureDirect(ctx context.Context, t *txn, name string) error {
	if name == c.me() {
		return nil
	}
	conv := string(Direct(name))
	if _, err := c.db.Conversation(ctx, conv); err == nil {
		return nil
	} else if !errors.Is(err, store.ErrNotFound) {
		return err
	}
	now := c.clock.Now()
	if err := c.db.EnsureConversation(ctx, store.Conversation{ID: conv, Peer: name, Created: now}); err != nil {
		return err
	}
	if err := c.db.EnsureContact(ctx, name, now); err != nil {
		return err
	}
	t.after = append(t.after, func() { wakeup(c.subWake) })
	return nil
}

// applyContent acts on decrypted content.
func (c *Client) applyContent(ctx context.Context, t *txn, e *envelope, content *protocol.Content) error {
	me := c.me()
	fromSelf := e.sender == me
	now := c.clock.Now()
	switch b := content.Body.(type) {
	case *protocol.Content_Text, *protocol.Content_Attachment:
		conv, ok, err := c.convFor(ctx, t, e.sender, content.GroupId)
		if err != nil || !ok {
			return err
		}
		m := c.storedMessage(content, conv, e.sender, e.device, fromSelf, now)
		m.ServerID = e.serverID
		if fromSelf {
			m.Status, m.Read = store.StatusSent, true
		}
		inserted, err := c.db.InsertMessage(ctx, m)
		if err != nil || !inserted {
			return err
		}
		if fromSelf {
			if err := c.addRecipients(ctx, m, conv); err != nil {
				return err
			}
		} else {
			t.owe(e.sender, content.MessageId)
		}
		return c.emitDurable(ctx, t, &MessageEvent{Message: c.messageFromStore(m)})

	case *protocol.Content_Receipt:
		return c.applyReceipt(ctx, t, e, b.Receipt)

	case *protocol.Content_Typing:
		if fromSelf {
			return nil
		}
		conv := Direct(e.sender)
		if gid, ok := groupIDFrom(content.GroupId); ok {
			conv = GroupConv(gid)
		}
		t.ephemeral = append(t.ephemeral, &TypingEvent{Conv: conv, From: e.sender, Device: e.device, Started: b.Typing.Started, At: now})
		return nil

	case *protocol.Content_GroupUpdate:
		return c.applyGroupUpdate(ctx, t, e, content, b.GroupUpdate)

	case *protocol.Content_SenderKeyDistribution:
		d := b.SenderKeyDistribution
		g, err := c.db.Group(ctx, d.GroupId)
		if err == nil && !fromSelf && !memberOf(g, e.sender) {
			c.log.Warn("ignoring a sender key from a non-member", "sender", e.addr().String())
			return nil
		}
		if err != nil && !errors.Is(err, store.ErrNotFound) {
			return err
		}
		// A key for a group not known yet is kept: its messages may
		// arrive before the group update that introduces it.
		if err := c.protocol().ProcessDistribution(ctx, string(d.GroupId), e.addr(), d.Distribution); err != nil {
			if isDecryptFailure(err) {
				c.log.Warn("ignoring an invalid sender key", "sender", e.addr().String(), "err", err)
				return nil
			}
			return err
		}
		sender := e.sender
		t.after = append(t.after, func() { c.reprocessHeld(c.ctx, sender, holdNoSenderKey) })
		return nil

	case *protocol.Content_RetryRequest:
		return c.handleRetryRequest(ctx, t, e, content, b.RetryRequest)

	case *protocol.Content_SyncSent:
		if !fromSelf {
			c.log.Warn("ignoring a sync message from another account", "sender", e.addr().String())
			return nil
		}
		return c.applySyncSent(ctx, t, e, b.SyncSent)
	}
	return nil
}

// convFor returns the conversation a message from sender with groupID
// belongs to; false when it must be dropped (a group this device does not
// know, or a sender who is not a member).
func (c *Client) convFor(ctx context.Context, t *txn, sender string, groupID []byte) (ConvID, bool, error) {
	if len(groupID) == 0 {
		if err := c.ensureDirect(ctx, t, sender); err != nil {
			return "", false, err
		}
		return Direct(sender), true, nil
	}
	g, err := c.db.Group(ctx, groupID)
	if errors.Is(err, store.ErrNotFound) {
		c.log.Warn("dropping a message for an unknown group", "sender", sender)
		return "", false, nil
	}
	if err != nil {
		return "", false, err
	}
	if sender != c.me() && !memberOf(g, sender) {
		c.log.Warn("dropping a group message from a non-member", "sender", sender)
		return "", false, nil
	}
	gid, _ := groupIDFrom(groupID)
	return GroupConv(gid), true, nil
}

func memberOf(g *store.Group, account string) bool {
	for _, m := range g.Members {
		if m.Account == account {
			return true
		}
	}
	return false
}

// storedMessage maps content to a message row.
func (c *Client) storedMessage(content *protocol.Content, conv ConvID, sender string, device uint32, outgoing bool, now time.Time) *store.Message {
	raw, _ := proto.Marshal(content)
	m := &store.Message{Conv: string(conv), ID: content.MessageId, Sender: sender, SenderDevice: device,
		Outgoing: outgoing, Counter: content.Counter, SentAt: time.UnixMilli(content.SentAtMs), ReceivedAt: now,
		Content: raw}
	switch b := content.Body.(type) {
	case *protocol.Content_Text:
		m.Kind, m.Body = store.KindText, b.Text.Body
	case *protocol.Content_Attachment:
		m.Kind, m.Body = store.KindAttachment, b.Attachment.Caption
	}
	return m
}

// addRecipients records the recipients of an outgoing message this device
// learned about from another of its account's devices.
func (c *Client) addRecipients(ctx context.Context, m *store.Message, conv ConvID) error {
	if peer := conv.Peer(); peer != "" {
		return c.db.AddRecipients(ctx, m.Seq, []string{peer}, m.ReceivedAt)
	}
	gid, _ := conv.Group()
	g, err := c.db.Group(ctx, gid[:])
	if err != nil {
		return err
	}
	return c.db.AddRecipients(ctx, m.Seq, otherMembers(g, c.me()), m.ReceivedAt)
}

func otherMembers(g *store.Group, me string) []string {
	var out []string
	for _, m := range g.Members {
		if m.Account != me {
			out = append(out, m.Account)
		}
	}
	return out
}

// applyReceipt updates outgoing messages' status from a recipient's
// receipt, or — from this account's other device — marks incoming
// messages read.
func (c *Client) applyReceipt(ctx context.Context, t *txn, e *envelope, r *protocol.Receipt) error {
	now := c.clock.Now()
	st := store.StatusDelivered
	if r.Type == protocol.Receipt_TYPE_READ {
		st = store.StatusRead
	}
	if e.sender == c.me() {
		if st != store.StatusRead {
			return nil
		}
		convs, err := c.db.MarkReadByID(ctx, r.MessageIds)
		if err != nil {
			return err
		}
		for _, conv := range convs {
			if err := c.emitDurable(ctx, t, &ReceiptEvent{Conv: ConvID(conv), From: e.sender, Device: e.device,
				Status: StatusRead, At: now}); err != nil {
				return err
			}
		}
		return nil
	}
	byConv := map[string][]MessageID{}
	var order []string
	for _, id := range r.MessageIds {
		m, err := c.db.MessageByID(ctx, c.me(), id)
		if errors.Is(err, store.ErrNotFound) {
			continue
		}
		if err != nil {
			return err
		}
		changed, err := c.db.SetRecipientStatus(ctx, m.Seq, e.sender, st, now)
		if err != nil {
			return err
		}
		if changed {
			if _, ok := byConv[m.Conv]; !ok {
				order = append(order, m.Conv)
			}
			byConv[m.Conv] = append(byConv[m.Conv], messageIDFrom(id))
		}
	}
	for _, conv := range order {
		t.status = true
		if err := c.emitDurable(ctx, t, &ReceiptEvent{Conv: ConvID(conv), From: e.sender, Device: e.device,
			Status: Status(st), MessageIDs: byConv[conv], At: now}); err != nil {
			return err
		}
	}
	return nil
}

// applySyncSent stores a message this account sent from another device.
func (c *Client) applySyncSent(ctx context.Context, t *txn, e *envelope, s *protocol.SyncSent) error {
	inner := s.Content
	switch inner.Body.(type) {
	case *protocol.Content_Text, *protocol.Content_Attachment:
	default:
		return nil
	}
	var conv ConvID
	if s.Destination != "" {
		if err := c.ensureDirect(ctx, t, s.Destination); err != nil {
			return err
		}
		conv = Direct(s.Destination)
	} else {
		cv, ok, err := c.convFor(ctx, t, c.me(), inner.GroupId)
		if err != nil || !ok {
			return err
		}
		conv = cv
	}
	m := c.storedMessage(inner, conv, c.me(), e.device, true, c.clock.Now())
	m.Status, m.Read = store.StatusSent, true
	inserted, err := c.db.InsertMessage(ctx, m)
	if err != nil || !inserted {
		return err
	}
	if err := c.addRecipients(ctx, m, conv); err != nil {
		return err
	}
	return c.emitDurable(ctx, t, &MessageEvent{Message: c.messageFromStore(m)})
}

// handleRetryRequest answers a recipient that could not decrypt one of
// this device's messages: forget the session with that device (the next
// send builds a fresh one from a new bundle), hand it the sender keys
// again, and re-send the message itself. The message keeps its id, so the
// recipient's other devices that already have it drop the copy.
func (c *Client) handleRetryRequest(ctx context.Context, t *txn, e *envelope, content *protocol.Content, rr *protocol.RetryRequest) error {
	c.mu.Lock()
	done := c.retried[rr.ServerId]
	c.mu.Unlock()
	if done {
		return nil
	}
	addr := e.addr()
	c.log.Info("peer could not decrypt a message; re-sending on a fresh session", "peer", addr.String(), "server_id", rr.ServerId)
	// A request that came as a PreKeySignalMessage built a fresh session
	// already (the peer had lost ours): use it. Otherwise forget the
	// session, and the re-send starts a new one from a fresh bundle.
	if e.typ != protocol.EnvelopeType_ENVELOPE_TYPE_PREKEY && c.allowReset(addr, c.clock.Now()) {
		if err := c.protocol().DeleteSession(ctx, addr); err != nil {
			return err
		}
	}
	if err := c.db.RemoveSenderKeyHolder(ctx, addr); err != nil {
		return err
	}
	m, err := c.db.OutgoingByServerID(ctx, rr.ServerId)
	if errors.Is(err, store.ErrNotFound) && len(rr.MessageId) == protocol.MessageIDSize {
		m, err = c.db.MessageByID(ctx, c.me(), rr.MessageId)
	}
	switch {
	case errors.Is(err, store.ErrNotFound):
		m = nil
	case err != nil:
		return err
	}
	if m != nil && m.Outgoing && m.Content != nil && m.Sender == c.me() {
		orig := new(protocol.Content)
		if err := proto.Unmarshal(m.Content, orig); err != nil {
			return fmt.Errorf("re-send message %d: %w", m.Seq, err)
		}
		conv := ConvID(m.Conv)
		ok := conv.Peer() == e.sender
		if gid, isGroup := conv.Group(); isGroup {
			g, err := c.db.Group(ctx, gid[:])
			ok = err == nil && memberOf(g, e.sender)
		}
		if ok {
			// Linked to the message, so the re-send's relay id finds it
			// again should this copy fail too.
			if err := c.enqueuePairwise(ctx, t, orig, nil, []string{e.sender}, false, m.Seq, nil); err != nil {
				return err
			}
		}
	}
	sid := rr.ServerId
	t.after = append(t.after, func() {
		c.mu.Lock()
		if len(c.retried) > 10000 {
			clear(c.retried)
		}
		c.retried[sid] = true
		c.mu.Unlock()
		wakeup(c.outboxWake)
	})
	return nil
}

// reprocessHeld retries held envelopes of sender ("" for all) held for
// reason, each in its own transaction.
func (c *Client) reprocessHeld(ctx context.Context, sender, reason string) {
	held, err := c.db.HeldEnvelopes(ctx, sender)
	if err != nil {
		c.log.Error("list held envelopes", "err", err)
		return
	}
	for _, h := range held {
		if h.Reason != reason {
			continue
		}
		e := &envelope{serverID: h.ServerID, sender: h.Sender, device: h.Device, typ: protocol.EnvelopeType(h.Type),
			payload: h.Payload, serverTime: h.ServerTime}
		err := c.tx(ctx, func(ctx context.Context, t *txn) error {
			if err := c.db.Unhold(ctx, h.ServerID); err != nil {
				return err
			}
			if err := c.handleEnvelope(ctx, t, e); err != nil {
				return err
			}
			// Kept owed, so the loop ends with one receipt per sender.
			return c.oweReceipts(ctx, t)
		})
		if err != nil {
			c.log.Error("process a held envelope", "server_id", h.ServerID, "err", err)
		}
	}
	if err := c.flushReceipts(ctx); err != nil {
		c.log.Error("queue receipts", "err", err)
	}
}

// sweepLoop turns group messages still waiting for their sender key into
// undecryptable placeholders (and resend requests) once the backlog is
// drained and HoldTimeout has passed.
func (c *Client) sweepLoop() {
	for {
		t := c.clock.NewTimer(c.cfg.HoldTimeout)
		select {
		case <-t.C():
		case <-c.sweepWake:
			t.Stop()
		case <-c.ctx.Done():
			t.Stop()
			return
		}
		c.mu.Lock()
		synced := c.syncedCh
		c.mu.Unlock()
		select {
		case <-synced:
		default:
			continue
		}
		c.sweepHeld(c.ctx)
	}
}

func (c *Client) sweepHeld(ctx context.Context) {
	held, err := c.db.HeldEnvelopes(ctx, "")
	if err != nil {
		c.log.Error("list held envelopes", "err", err)
		return
	}
	now := c.clock.Now()
	for _, h := range held {
		if h.Reason != holdNoSenderKey || now.Sub(h.Held) < c.cfg.HoldTimeout {
			continue
		}
		e := &envelope{serverID: h.ServerID, sender: h.Sender, device: h.Device, typ: protocol.EnvelopeType(h.Type),
			payload: h.Payload, serverTime: h.ServerTime}
		err := c.tx(ctx, func(ctx context.Context, t *txn) error {
			if err := c.db.Unhold(ctx, h.ServerID); err != nil {
				return err
			}
			return c.storeUndecryptable(ctx, t, e, crypto.ErrNoSenderKey)
		})
		if err != nil {
			c.log.Error("give up on a held envelope", "server_id", h.ServerID, "err", err)
		}
	}
	wakeup(c.outboxWake)
}

// queueReceipts queues the delivery receipts a transaction's messages owe,
// together with any still owed from before (pending_receipts), one
// Receipt per sender.
func (c *Client) queueReceipts(ctx context.Context, t *txn) error {
	if len(t.receipts) == 0 {
		return nil
	}
	rc, err := c.db.TakeReceipts(ctx)
	if err != nil {
		return err
	}
	for s, ids := range t.receipts {
		rc[s] = append(rc[s], ids...)
	}
	return c.enqueueReceipts(ctx, t, protocol.Receipt_TYPE_DELIVERED, rc, false)
}

// oweReceipts records the delivery receipts a transaction's messages owe,
// for a later flushReceipts.
func (c *Client) oweReceipts(ctx context.Context, t *txn) error {
	for s, ids := range t.receipts {
		for _, id := range ids {
			if err := c.db.OweReceipt(ctx, s, id); err != nil {
				return err
			}
		}
	}
	clear(t.receipts)
	return nil
}

// flushReceipts queues the delivery receipts owed, one per sender.
func (c *Client) flushReceipts(ctx context.Context) error {
	return c.tx(ctx, func(ctx context.Context, t *txn) error {
		rc, err := c.db.TakeReceipts(ctx)
		if err != nil {
			return err
		}
		return c.enqueueReceipts(ctx, t, protocol.Receipt_TYPE_DELIVERED, rc, false)
	})
}

// enqueueReceipts queues one receipt per sender (split at MaxReceiptIDs).
// own also sends it to this account's other devices (a read sync).
func (c *Client) enqueueReceipts(ctx context.Context, t *txn, typ protocol.Receipt_Type, rc receipts, own bool) error {
	senders := make([]string, 0, len(rc))
	for s := range rc {
		senders = append(senders, s)
	}
	slices.Sort(senders)
	for _, s := range senders {
		ids := rc[s]
		for len(ids) > 0 {
			n := min(len(ids), protocol.MaxReceiptIDs)
			content := &protocol.Content{MessageId: newMessageIDBytes(), SentAtMs: c.clock.Now().UnixMilli(),
				Body: &protocol.Content_Receipt{Receipt: &protocol.Receipt{Type: typ, MessageIds: ids[:n]}}}
			if err := c.enqueuePairwise(ctx, t, content, nil, []string{s}, own, 0, nil); err != nil {
				return err
			}
			ids = ids[n:]
		}
	}
	return nil
}
