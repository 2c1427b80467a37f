package client

import (
	"context"
	"encoding/json"
	"fmt"
	"sync"
	"time"

	"github.com/hushchat/hush/client/store"
)

// Event is something that happened: one of *MessageEvent, *ReceiptEvent,
// *TypingEvent, *PresenceEvent, *IdentityChangedEvent,
// *UndecryptableEvent, *GroupUpdateEvent, *SentEvent or
// *ConnectionStateEvent.
//
// Durable events (message, receipt, identity_changed, undecryptable,
// group_update) are written to the profile database in the same
// transaction as the change they report, and deleted only once delivered
// (Events) or handled (Run): they survive a crash and a restart. The
// others (typing, presence, sent, connection) are ephemeral: kept in memory
// (EventBuffer of them; the oldest are dropped when nobody reads).
type Event interface {
	// Type is the event's stable name, as in the CLI's JSON lines.
	Type() string
}

// MessageEvent: a message arrived (or was sent from another of this
// account's devices: Message.Outgoing).
type MessageEvent struct {
	Message Message `json:"message"`
}

// ReceiptEvent: a recipient's device got or read outgoing messages.
type ReceiptEvent struct {
	Conv ConvID `json:"conv"`
	// From is the account that sent the receipt.
	From   string `json:"from"`
	Device uint32 `json:"device"`
	// Status is StatusDelivered or StatusRead.
	Status     Status      `json:"status"`
	MessageIDs []MessageID `json:"ids"`
	At         time.Time   `json:"timestamp"`
}

// TypingEvent: a contact started or stopped typing.
type TypingEvent struct {
	Conv    ConvID    `json:"conv"`
	From    string    `json:"from"`
	Device  uint32    `json:"device"`
	Started bool      `json:"started"`
	At      time.Time `json:"timestamp"`
}

// PresenceEvent: a mutually subscribed contact's presence.
type PresenceEvent struct {
	Account  string    `json:"from"`
	Online   bool      `json:"online"`
	LastSeen time.Time `json:"last_seen"`
	// Hidden: the contact hides last-seen, or this account does.
	Hidden bool `json:"hidden"`
}

// IdentityChangedEvent: a contact device's identity key is not the one
// recorded. Under Strict, sending to the contact is refused and the
// contact's new messages are held until Trust; under WarnOnly the key was
// accepted already (Accepted).
type IdentityChangedEvent struct {
	Account  string    `json:"from"`
	Device   uint32    `json:"device"`
	Accepted bool      `json:"accepted"`
	At       time.Time `json:"timestamp"`
}

// UndecryptableEvent: a message could not be decrypted. It is stored as a
// KindUndecryptable placeholder, and the sender was asked to send it again
// on a fresh session.
type UndecryptableEvent struct {
	Message Message `json:"message"`
}

// GroupUpdateEvent: a group was created, changed, or this account was
// added or removed.
type GroupUpdateEvent struct {
	Group   Group     `json:"group"`
	Actor   string    `json:"from"`
	Action  string    `json:"action"` // create, add, remove, leave, rename, sync
	Targets []string  `json:"targets,omitempty"`
	At      time.Time `json:"timestamp"`
}

// SentEvent: the relay stored an outgoing message (✓), or sending it
// failed for good (Error).
type SentEvent struct {
	ID       MessageID `json:"id"`
	Conv     ConvID    `json:"conv"`
	ServerID uint64    `json:"server_id,omitempty"`
	Status   Status    `json:"status"`
	Error    string    `json:"error,omitempty"`
}

// ConnState is the relay connection's state.
type ConnState int

// Connection states.
const (
	// Offline: not connected and not trying (Config.Offline, not
	// registered, closed, or stopped for good — see Err).
	Offline ConnState = iota
	// Connecting: dialing now.
	Connecting
	// Connected: connected and authenticated.
	Connected
	// Reconnecting: waiting RetryIn before the next attempt.
	Reconnecting
)

func (s ConnState) String() string {
	switch s {
	case Offline:
		return "offline"
	case Connecting:
		return "connecting"
	case Connected:
		return "connected"
	case Reconnecting:
		return "reconnecting"
	}
	return fmt.Sprintf("ConnState(%d)", int(s))
}

// MarshalText implements encoding.TextMarshaler.
func (s ConnState) MarshalText() ([]byte, error) { return []byte(s.String()), nil }

// ConnectionStateEvent: the connection state changed.
type ConnectionStateEvent struct {
	State ConnState `json:"state"`
	// RetryIn is the wait before the next attempt, when Reconnecting.
	RetryIn time.Duration `json:"retry_in,omitempty"`
	// Err is why the connection was lost or refused, if it was.
	Err string `json:"error,omitempty"`
}

func (*MessageEvent) Type() string         { return "message" }
func (*ReceiptEvent) Type() string         { return "receipt" }
func (*TypingEvent) Type() string          { return "typing" }
func (*PresenceEvent) Type() string        { return "presence" }
func (*IdentityChangedEvent) Type() string { return "identity_changed" }
func (*UndecryptableEvent) Type() string   { return "undecryptable" }
func (*GroupUpdateEvent) Type() string     { return "group_update" }
func (*SentEvent) Type() string            { return "sent" }
func (*ConnectionStateEvent) Type() string { return "connection" }

// decodeEvent restores a durable event.
func decodeEvent(kind string, data []byte) (Event, error) {
	var ev Event
	switch kind {
	case "message":
		ev = new(MessageEvent)
	case "receipt":
		ev = new(ReceiptEvent)
	case "identity_changed":
		ev = new(IdentityChangedEvent)
	case "undecryptable":
		ev = new(UndecryptableEvent)
	case "group_update":
		ev = new(GroupUpdateEvent)
	default:
		return nil, fmt.Errorf("stored event of unknown kind %q", truncate(kind, 20))
	}
	if err := json.Unmarshal(data, ev); err != nil {
		return nil, fmt.Errorf("decode stored %s event: %w", kind, err)
	}
	return ev, nil
}

// Handler handles one event. Returning nil marks a durable event handled;
// an error keeps it, and Run tries it again after a backoff (and after a
// restart, if the process ends first). Errors for ephemeral events are
// logged and the event is dropped: there is nothing stored to retry.
type Handler func(ctx context.Context, ev Event) error

// ephemeral is an in-memory event, ordered after the durable events that
// were committed before it happened.
type ephemeral struct {
	after int64
	ev    Event
}

// dispatcher merges durable events (from the database) and ephemeral ones
// (in memory) into one ordered stream for a single consumer.
type dispatcher struct {
	c *Client

	mu       sync.Mutex
	wake     chan struct{} // closed and replaced when something is added
	queue    []ephemeral
	lastSeq  int64 // highest durable seq committed
	consumer bool
	ch       chan Event
}

func newDispatcher(c *Client) *dispatcher {
	return &dispatcher{c: c, wake: make(chan struct{})}
}

// committed notes durable events up to seq and wakes the consumer.
func (d *dispatcher) committed(seq int64) {
	d.mu.Lock()
	if seq > d.lastSeq {
		d.lastSeq = seq
	}
	d.signal()
	d.mu.Unlock()
}

// emit queues an ephemeral event.
func (d *dispatcher) emit(ev Event) {
	d.mu.Lock()
	if len(d.queue) >= d.c.cfg.EventBuffer {
		d.queue = d.queue[1:]
	}
	d.queue = append(d.queue, ephemeral{after: d.lastSeq, ev: ev})
	d.signal()
	d.mu.Unlock()
}

func (d *dispatcher) signal() {
	close(d.wake)
	d.wake = make(chan struct{})
}

// claim makes the caller the single consumer.
func (d *dispatcher) claim() error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.consumer {
		return ErrEventsInUse
	}
	d.consumer = true
	return nil
}

func (d *dispatcher) release() {
	d.mu.Lock()
	d.consumer = false
	d.mu.Unlock()
}

// cursor reads the merged stream for the single consumer. Durable events
// are read ahead in batches; the ones handled are deleted in batches too,
// when the stream goes idle or every eventBatch events (a crash in
// between delivers a few handled events again: at-least-once).
type cursor struct {
	d       *dispatcher
	last    int64 // last durable seq returned
	buf     []store.StoredEvent
	handled int64 // highest durable seq handled
	deleted int64 // highest durable seq deleted
}

const eventBatch = 64

// next returns the next event: a durable one (seq > 0) or an ephemeral one
// (seq 0). It blocks until there is one or done closes.
func (r *cursor) next(ctx context.Context, done <-chan struct{}) (Event, int64, error) {
	d := r.d
	for {
		d.mu.Lock()
		wake := d.wake // before reading, so no commit is missed
		d.mu.Unlock()
		if len(r.buf) == 0 {
			evs, err := d.c.db.EventsAfter(ctx, r.last, eventBatch)
			if err != nil {
				return nil, 0, err
			}
			r.buf = evs
		}
		d.mu.Lock()
		if len(d.queue) > 0 && (len(r.buf) == 0 || d.queue[0].after < r.buf[0].Seq) {
			ev := d.queue[0].ev
			d.queue = d.queue[1:]
			d.mu.Unlock()
			return ev, 0, nil
		}
		d.mu.Unlock()
		if len(r.buf) > 0 {
			se := r.buf[0]
			r.buf = r.buf[1:]
			r.last = se.Seq
			ev, err := decodeEvent(se.Kind, se.Data)
			if err != nil {
				// A record this version cannot read: drop it rather
				// than wedge every later event behind it.
				d.c.log.Warn("dropping unreadable stored event", "seq", se.Seq, "err", err)
				r.done(ctx, se.Seq)
				continue
			}
			return ev, se.Seq, nil
		}
		if err := r.flush(ctx); err != nil {
			return nil, 0, err
		}
		select {
		case <-wake:
		case <-done:
			return nil, 0, ErrClosed
		}
	}
}

// done records durable event seq as handled.
func (r *cursor) done(ctx context.Context, seq int64) error {
	r.handled = seq
	if r.handled-r.deleted >= eventBatch {
		return r.flush(ctx)
	}
	return nil
}

// flush deletes the handled events.
func (r *cursor) flush(ctx context.Context) error {
	if r.handled <= r.deleted {
		return nil
	}
	if err := r.d.c.db.DeleteEventsThrough(context.WithoutCancel(ctx), r.handled); err != nil {
		return err
	}
	r.deleted = r.handled
	return nil
}

// Events returns the channel of events. Durable events are deleted from
// the profile once the channel accepted them (in batches: after a crash a
// few may come again; for handling that must not lose an event, use Run). The channel is closed by
// Close. Events and Run are mutually exclusive; Events returns the same
// channel on every call.
func (c *Client) Events() <-chan Event {
	d := c.events
	d.mu.Lock()
	if d.ch != nil {
		ch := d.ch
		d.mu.Unlock()
		return ch
	}
	if d.consumer {
		d.mu.Unlock()
		ch := make(chan Event)
		close(ch)
		c.log.Error("Events called while Run is consuming events")
		return ch
	}
	d.consumer = true
	d.ch = make(chan Event, c.cfg.EventBuffer)
	ch := d.ch
	d.mu.Unlock()
	c.goBackground(func() {
		defer close(ch)
		ctx := c.ctx
		r := &cursor{d: d}
		defer func() {
			if err := r.flush(ctx); err != nil {
				c.log.Error("mark events delivered", "err", err)
			}
		}()
		for {
			ev, seq, err := r.next(ctx, ctx.Done())
			if err != nil {
				if ctx.Err() == nil {
					c.log.Error("event delivery stopped", "err", err)
				}
				return
			}
			select {
			case ch <- ev:
			case <-ctx.Done():
				return
			}
			if seq > 0 {
				if err := r.done(ctx, seq); err != nil {
					c.log.Error("event delivery stopped", "err", err)
					return
				}
			}
		}
	})
	return ch
}

// Run calls h for every event, in order, until ctx is done or the client
// is closed (then it returns nil or ctx's error). A durable event is
// deleted only after h returned nil for it; after an error it is retried
// with backoff (HandlerRetryMin…HandlerRetryMax) and, if the process stops
// first, delivered again by the next Run on this profile — a bot that
// fails does not lose the event. h may therefore see an event more than
// once; MessageEvent's Message.ID identifies repeats.
func (c *Client) Run(ctx context.Context, h Handler) error {
	d := c.events
	if err := d.claim(); err != nil {
		return err
	}
	defer d.release()
	// rctx ends with ctx or with Close.
	rctx, cancel := context.WithCancel(ctx)
	defer cancel()
	defer context.AfterFunc(c.ctx, cancel)()
	r := &cursor{d: d}
	defer func() {
		if err := r.flush(ctx); err != nil && c.ctx.Err() == nil {
			c.log.Error("mark events handled", "err", err)
		}
	}()
	for {
		ev, seq, err := r.next(rctx, rctx.Done())
		if err != nil {
			if ctx.Err() != nil {
				return ctx.Err()
			}
			if rctx.Err() != nil {
				return nil // closed
			}
			return fmt.Errorf("run: %w", err)
		}
		if seq == 0 {
			if err := h(ctx, ev); err != nil {
				c.log.Warn("handler failed on an ephemeral event; dropped", "type", ev.Type(), "err", err)
			}
			continue
		}
		for attempt := 0; ; attempt++ {
			err := h(ctx, ev)
			if err == nil {
				break
			}
			wait := backoff(attempt, c.cfg.HandlerRetryMin, c.cfg.HandlerRetryMax, c.rand())
			c.log.Warn("handler failed; will retry the event", "type", ev.Type(), "retry_in", wait, "err", err)
			if !sleep(c.clock, wait, rctx.Done()) {
				if ctx.Err() != nil {
					return ctx.Err()
				}
				return nil
			}
		}
		if err := r.done(ctx, seq); err != nil {
			return fmt.Errorf("run: mark events handled: %w", err)
		}
	}
}
