package client

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"google.golang.org/protobuf/proto"

	"github.com/hushchat/hush/client/store"
	"github.com/hushchat/hush/crypto"
	"github.com/hushchat/hush/protocol"
)

func jsonMarshal(v any) ([]byte, error) { return json.Marshal(v) }

// SendOption modifies a message being sent.
type SendOption func(*sendOptions)

type sendOptions struct {
	quote      *Quote
	attachment *Attachment
}

// WithQuote makes the message a reply to q.
func WithQuote(q Quote) SendOption { return func(o *sendOptions) { o.quote = &q } }

// WithAttachment attaches an uploaded, encrypted file (the media layer
// uploads it and fills a). The text becomes its caption.
func WithAttachment(a Attachment) SendOption { return func(o *sendOptions) { o.attachment = &a } }

// buildContent makes the Content of a user message.
func buildContent(text string, opts []SendOption) (*protocol.Content, error) {
	var o sendOptions
	for _, f := range opts {
		f(&o)
	}
	c := &protocol.Content{MessageId: newMessageIDBytes()}
	if o.attachment != nil {
		a := o.attachment.proto()
		if text != "" {
			a.Caption = text
		}
		c.Body = &protocol.Content_Attachment{Attachment: a}
	} else {
		c.Body = &protocol.Content_Text{Text: &protocol.Text{Body: text}}
	}
	if o.quote != nil {
		c.Quote = &protocol.Quote{MessageId: o.quote.ID[:], Author: o.quote.Author, Text: o.quote.Text}
	}
	return c, nil
}

// Send sends text to account to and returns the message's id. It returns
// once the message is stored and queued (StatusPending); the outbox sends
// it in the background, retrying until the relay has it (WaitSent waits
// for that). Under Strict it refuses a contact whose identity changed
// (*IdentityChangedError) until Trust.
func (c *Client) Send(ctx context.Context, to, text string, opts ...SendOption) (MessageID, error) {
	a, _, err := c.account()
	if err != nil {
		return MessageID{}, err
	}
	to, err = protocol.NormalizeAccountName(to)
	if err != nil {
		return MessageID{}, fmt.Errorf("send: %w", err)
	}
	if to == a.Name {
		return MessageID{}, errors.New("send: cannot send a message to your own account")
	}
	content, err := buildContent(text, opts)
	if err != nil {
		return MessageID{}, err
	}
	content.Counter = 1 // validated before a counter is taken
	if err := protocol.ValidateContent(content); err != nil {
		return MessageID{}, fmt.Errorf("send: %w", err)
	}
	conv := Direct(to)
	var untrusted error
	err = c.tx(ctx, func(ctx context.Context, t *txn) error {
		// Checked in the transaction, where the read is cheap (the
		// writer's cache is warm) and cannot miss a change committed
		// before the message.
		if untrusted = c.checkTrust(ctx, []string{to}); untrusted != nil {
			return untrusted
		}
		if err := c.ensureDirect(ctx, t, to); err != nil {
			return err
		}
		m, err := c.storeOutgoing(ctx, content, conv)
		if err != nil {
			return err
		}
		if err := c.db.AddRecipients(ctx, m.Seq, []string{to}, m.ReceivedAt); err != nil {
			return err
		}
		sync := &protocol.Content{MessageId: newMessageIDBytes(), SentAtMs: content.SentAtMs,
			Body: &protocol.Content_SyncSent{SyncSent: &protocol.SyncSent{Destination: to, Content: content}}}
		_, err = c.enqueuePairwiseRows(ctx, t, content, sync, []string{to}, true, m.Seq, nil, true)
		return err
	})
	if untrusted != nil {
		return MessageID{}, untrusted
	}
	if err != nil {
		return MessageID{}, fmt.Errorf("send: %w", err)
	}
	return messageIDFrom(content.MessageId), nil
}

// storeOutgoing numbers content in conv and stores it as a pending
// outgoing message.
func (c *Client) storeOutgoing(ctx context.Context, content *protocol.Content, conv ConvID) (*store.Message, error) {
	self := c.self()
	counter, err := c.db.NextCounter(ctx, string(conv))
	if err != nil {
		return nil, err
	}
	now := c.clock.Now()
	content.Counter, content.SentAtMs = counter, now.UnixMilli()
	m := c.storedMessage(content, conv, self.Name, self.DeviceID, true, now)
	m.Read = true
	if _, err := c.db.InsertMessage(ctx, m); err != nil {
		return nil, err
	}
	return m, nil
}

// SendGroup sends text to a group and returns the message's id; like
// Send, it returns once the message is queued.
func (c *Client) SendGroup(ctx context.Context, id GroupID, text string, opts ...SendOption) (MessageID, error) {
	a, _, err := c.account()
	if err != nil {
		return MessageID{}, err
	}
	content, err := buildContent(text, opts)
	if err != nil {
		return MessageID{}, err
	}
	content.GroupId, content.Counter = id[:], 1
	if err := protocol.ValidateContent(content); err != nil {
		return MessageID{}, fmt.Errorf("send to group: %w", err)
	}
	g, err := c.db.Group(ctx, id[:])
	if errors.Is(err, store.ErrNotFound) {
		return MessageID{}, fmt.Errorf("send to group: %w: %s", ErrNoGroup, id)
	}
	if err != nil {
		return MessageID{}, err
	}
	if !g.Member {
		return MessageID{}, fmt.Errorf("send to group: %w", ErrNotMember)
	}
	others := otherMembers(g, a.Name)
	if err := c.checkTrust(ctx, others); err != nil {
		return MessageID{}, err
	}
	err = c.tx(ctx, func(ctx context.Context, t *txn) error {
		m, err := c.storeOutgoing(ctx, content, GroupConv(id))
		if err != nil {
			return err
		}
		if err := c.db.AddRecipients(ctx, m.Seq, others, m.ReceivedAt); err != nil {
			return err
		}
		return c.enqueueGroup(ctx, t, id, content, m.Seq)
	})
	if err != nil {
		return MessageID{}, fmt.Errorf("send to group: %w", err)
	}
	return messageIDFrom(content.MessageId), nil
}

// WaitSent blocks until the relay has stored message id (StatusSent or
// later) and returns nil, or returns why it cannot be sent: the send
// failed (ErrSendFailed, ErrUnknownAccount in the chain), a recipient's
// identity changed (*IdentityChangedError), or ctx ended.
func (c *Client) WaitSent(ctx context.Context, id MessageID) error {
	me := c.me()
	for {
		c.mu.Lock()
		ch := c.statusCh
		c.mu.Unlock()
		m, err := c.db.MessageByID(ctx, me, id[:])
		if err != nil {
			return err
		}
		switch {
		case m.Status >= store.StatusSent:
			return nil
		case m.Status == store.StatusFailed:
			return fmt.Errorf("%w: %s", ErrSendFailed, m.Error)
		}
		if it, err := c.db.OutboxForMessage(ctx, m.Seq); err == nil && it.State == store.OutboxBlocked {
			accounts := []string{ConvID(m.Conv).Peer()}
			if gid, ok := ConvID(m.Conv).Group(); ok {
				if g, err := c.db.Group(ctx, gid[:]); err == nil {
					accounts = otherMembers(g, me)
				}
			}
			if err := c.checkTrust(ctx, accounts); err != nil {
				return err
			}
		}
		select {
		case <-ch:
		case <-ctx.Done():
			return ctx.Err()
		case <-c.ctx.Done():
			return ErrClosed
		}
	}
}

// MarkRead marks conv's incoming messages read and sends read receipts to
// their senders (and a read sync to this account's other devices).
func (c *Client) MarkRead(ctx context.Context, conv ConvID) error {
	if _, _, err := c.account(); err != nil {
		return err
	}
	return c.tx(ctx, func(ctx context.Context, t *txn) error {
		msgs, err := c.db.MarkRead(ctx, string(conv))
		if err != nil {
			return err
		}
		rc := receipts{}
		for _, m := range msgs {
			if m.Kind == store.KindText || m.Kind == store.KindAttachment {
				rc[m.Sender] = append(rc[m.Sender], m.ID)
			}
		}
		return c.enqueueReceipts(ctx, t, protocol.Receipt_TYPE_READ, rc, true)
	})
}

// SendTyping tells the peers of conv that this user started or stopped
// typing. It is ephemeral: delivered to devices online now, never stored,
// and silently skipped for devices this device has no session (or, in a
// group, no shared sender key) with yet. It needs a connection.
func (c *Client) SendTyping(ctx context.Context, conv ConvID, started bool) error {
	a, p, err := c.account()
	if err != nil {
		return err
	}
	s, _ := c.currentSession()
	if s == nil {
		return ErrOffline
	}
	content := &protocol.Content{MessageId: newMessageIDBytes(), SentAtMs: c.clock.Now().UnixMilli(),
		Body: &protocol.Content_Typing{Typing: &protocol.Typing{Started: started}}}
	var accounts []string
	gid, isGroup := conv.Group()
	if isGroup {
		g, err := c.db.Group(ctx, gid[:])
		if err != nil || !g.Member {
			return fmt.Errorf("typing: %w", ErrNotMember)
		}
		content.GroupId = gid[:]
		accounts = otherMembers(g, a.Name)
	} else if peer := conv.Peer(); peer != "" {
		accounts = []string{peer}
	} else {
		return fmt.Errorf("typing: bad conversation %q", truncate(string(conv), 40))
	}
	if c.checkTrust(ctx, accounts) != nil {
		return nil
	}
	// Only devices with a session; typing never fetches keys.
	var targets []target
	for _, acc := range accounts {
		ids, err := p.SessionDevices(ctx, acc)
		if err != nil {
			return err
		}
		if len(ids) > 0 {
			targets = append(targets, target{account: acc, devices: ids})
		}
	}
	if len(targets) == 0 {
		return nil
	}
	padded, err := protocol.EncodeContent(content)
	if err != nil {
		return err
	}
	send := &protocol.Send{ClientId: newClientID(), Ephemeral: true}
	err = c.db.Atomic(ctx, func(ctx context.Context) error {
		if isGroup {
			holders, err := c.db.SenderKeyHolders(ctx, gid[:])
			if err != nil {
				return err
			}
			if !holdsAll(holders, targets) {
				return errNotNow
			}
			ct, err := p.GroupEncrypt(ctx, string(gid[:]), padded)
			if err != nil {
				return err
			}
			send.Payload, send.Type = ct, protocol.EnvelopeType_ENVELOPE_TYPE_SENDER_KEY
			for _, tg := range targets {
				for _, d := range tg.devices {
					send.Recipients = append(send.Recipients, &protocol.Recipient{Account: tg.account, Device: d})
				}
			}
			return nil
		}
		for _, tg := range targets {
			for _, d := range tg.devices {
				ct, err := p.Encrypt(ctx, crypto.Address{Name: tg.account, DeviceID: d}, padded)
				if err != nil {
					return err
				}
				send.Recipients = append(send.Recipients, &protocol.Recipient{Account: tg.account, Device: d,
					Payload: ct.Body, Type: protocol.EnvelopeType(ct.Type)})
			}
		}
		return nil
	})
	if errors.Is(err, errNotNow) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("typing: %w", err)
	}
	return s.sendFrame(&protocol.Frame{Body: &protocol.Frame_Send{Send: send}})
}

// SetActive tells the client whether the user is active (heartbeats, and
// so "online", only while active). It starts active.
func (c *Client) SetActive(active bool) {
	c.mu.Lock()
	c.active = active
	c.mu.Unlock()
}

// SetHideLastSeen hides (or shows) this account's last-seen time from
// contacts. As in WhatsApp, hiding it also hides theirs.
func (c *Client) SetHideLastSeen(ctx context.Context, hide bool) error {
	if err := c.db.SetSetting(ctx, settingHideLastSeen, map[bool]string{true: "1", false: "0"}[hide]); err != nil {
		return err
	}
	c.mu.Lock()
	c.hideLastSeen = hide
	s := c.sess
	c.mu.Unlock()
	if s != nil {
		return s.sendFrame(&protocol.Frame{Body: &protocol.Frame_PresenceSettings{PresenceSettings: &protocol.PresenceSettings{HideLastSeen: hide}}})
	}
	return nil
}

// HideLastSeen reports the last-seen setting.
func (c *Client) HideLastSeen() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.hideLastSeen
}

// Presence returns the last known presence of a contact (presence is
// shared only between contacts that have a 1-1 conversation).
func (c *Client) Presence(name string) (PresenceEvent, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	p, ok := c.presence[name]
	return p, ok
}

func (c *Client) onPresence(p *protocol.Presence) {
	ev := PresenceEvent{Account: p.Account, Online: p.Online, Hidden: p.Hidden}
	if p.LastSeenMs > 0 {
		ev.LastSeen = time.UnixMilli(p.LastSeenMs)
	}
	c.mu.Lock()
	c.presence[p.Account] = ev
	c.mu.Unlock()
	c.events.emit(&ev)
}

// sendPresenceSetup sends the privacy setting and subscriptions on a new
// connection.
func (c *Client) sendPresenceSetup(s *session) {
	c.mu.Lock()
	hide := c.hideLastSeen
	c.mu.Unlock()
	s.sendFrame(&protocol.Frame{Body: &protocol.Frame_PresenceSettings{PresenceSettings: &protocol.PresenceSettings{HideLastSeen: hide}}})
	c.sendSubscriptions(s)
}

// sendSubscriptions subscribes to the presence of every 1-1 peer (the
// relay shows it only where the peer subscribed back).
func (c *Client) sendSubscriptions(s *session) {
	convs, err := c.db.Conversations(c.ctx)
	if err != nil {
		c.log.Warn("presence subscriptions", "err", err)
		return
	}
	var peers []string
	for _, cv := range convs {
		if cv.Peer != "" && len(peers) < protocol.MaxSubscriptions {
			peers = append(peers, cv.Peer)
		}
	}
	s.sendFrame(&protocol.Frame{Body: &protocol.Frame_PresenceSubscribe{PresenceSubscribe: &protocol.PresenceSubscribe{Accounts: peers}}})
}

// messageFromStore maps a stored message to the API's.
func (c *Client) messageFromStore(m *store.Message) Message {
	out := Message{Seq: m.SortKey, ID: messageIDFrom(m.ID), Conv: ConvID(m.Conv), Sender: m.Sender, SenderDevice: m.SenderDevice,
		Outgoing: m.Outgoing, Counter: m.Counter, SentAt: m.SentAt, Received: m.ReceivedAt, ServerID: m.ServerID,
		Kind: kindFromStore(m.Kind), Text: m.Body, Status: Status(m.Status), Read: m.Read, Error: m.Error}
	if gid, ok := ConvID(m.Conv).Group(); ok {
		out.Group = &gid
	}
	if m.Content != nil {
		var content protocol.Content
		if proto.Unmarshal(m.Content, &content) == nil {
			if a := content.GetAttachment(); a != nil {
				out.Attachment = attachmentFrom(a)
			}
			if q := content.Quote; q != nil {
				out.Quote = &Quote{ID: messageIDFrom(q.MessageId), Author: q.Author, Text: q.Text}
			}
		}
	}
	return out
}

// History returns up to limit messages of conv before the message with
// Seq before (0: the newest), oldest first.
func (c *Client) History(ctx context.Context, conv ConvID, limit int, before int64) ([]Message, error) {
	ms, err := c.db.History(ctx, string(conv), limit, before)
	if err != nil {
		return nil, err
	}
	out := make([]Message, len(ms))
	for i := range ms {
		out[i] = c.messageFromStore(&ms[i])
	}
	return out, nil
}

// Search finds messages containing every word of query (the last word as
// a prefix), newest first, in conv or everywhere (conv "").
func (c *Client) Search(ctx context.Context, query string, conv ConvID, limit int) ([]Message, error) {
	ms, err := c.db.Search(ctx, query, string(conv), limit)
	if err != nil {
		return nil, err
	}
	out := make([]Message, len(ms))
	for i := range ms {
		out[i] = c.messageFromStore(&ms[i])
	}
	return out, nil
}

// Message returns one message by its sender and id.
func (c *Client) Message(ctx context.Context, sender string, id MessageID) (*Message, error) {
	m, err := c.db.MessageByID(ctx, sender, id[:])
	if err != nil {
		return nil, err
	}
	out := c.messageFromStore(m)
	return &out, nil
}

// Recipients returns the per-recipient status of an outgoing message
// (per member in a group).
func (c *Client) Recipients(ctx context.Context, id MessageID) ([]RecipientStatus, error) {
	m, err := c.db.MessageByID(ctx, c.me(), id[:])
	if err != nil {
		return nil, err
	}
	rs, err := c.db.Recipients(ctx, m.Seq)
	if err != nil {
		return nil, err
	}
	out := make([]RecipientStatus, len(rs))
	for i, r := range rs {
		out[i] = RecipientStatus{Account: r.Account, Status: Status(r.Status), Updated: r.Updated}
	}
	return out, nil
}

// Conversations lists conversations, most recently active first.
func (c *Client) Conversations(ctx context.Context) ([]Conversation, error) {
	cs, err := c.db.Conversations(ctx)
	if err != nil {
		return nil, err
	}
	out := make([]Conversation, 0, len(cs))
	for _, sc := range cs {
		cv := Conversation{ID: ConvID(sc.ID), Name: sc.Peer, LastActivity: sc.LastActivity, Unread: sc.Unread, Muted: sc.Muted}
		if gid, ok := groupIDFrom(sc.GroupID); ok {
			cv.Group = &gid
			if g, err := c.db.Group(ctx, sc.GroupID); err == nil {
				cv.Name = g.Name
			}
		}
		if sc.Last != nil {
			m := c.messageFromStore(sc.Last)
			cv.Last = &m
		}
		out = append(out, cv)
	}
	return out, nil
}

// SetMuted mutes or unmutes a conversation (a flag for the UI).
func (c *Client) SetMuted(ctx context.Context, conv ConvID, muted bool) error {
	return c.db.SetMuted(ctx, string(conv), muted)
}

// PendingCount returns how many sends are waiting in the outbox (for a
// CLI that waits before exiting).
func (c *Client) PendingCount(ctx context.Context) (int, error) {
	seqs, err := c.db.PendingOutbox(ctx, time.Unix(1<<40, 0), 1<<20)
	if err != nil {
		return 0, err
	}
	return len(seqs), nil
}
