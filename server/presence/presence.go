// Package presence keeps who is online and when each account was last seen,
// and decides who may know it.
//
// # Rules
//
//   - An account is online while one of its devices sent a Heartbeat in the
//     last OnlineWindow (10 s; clients heartbeat every 5 s while the user is
//     active). Its last-seen is the time of its latest heartbeat.
//   - Mutual consent: viewer A gets subject B's presence only while A
//     subscribes to B and B subscribes to A (a subscription of any device of
//     an account counts for the account). Clients subscribe exactly to the
//     contacts they share a conversation with, so the relay learns nothing
//     it does not already see from who sends to whom, and a stranger who
//     subscribes to B learns nothing at all: B never subscribed back.
//   - Hiding (as in WhatsApp): an account that hides its last-seen shows
//     others only whether it is online, and sees only whether others are
//     online — never their last-seen.
//
// Subscriptions and hiding are kept per relay process by Memory; the
// scale-out issue keeps them in Redis behind the same Tracker interface, so
// every node sees every heartbeat.
package presence

import (
	"context"
	"time"

	"github.com/hushchat/hush/server/queue"
)

// DefaultOnlineWindow is how long a heartbeat keeps an account online.
const DefaultOnlineWindow = 10 * time.Second

// Status is what a viewer may know about a subject.
type Status struct {
	Account string
	Online  bool
	// LastSeen is the subject's latest heartbeat; zero when Hidden or never
	// seen.
	LastSeen time.Time
	// Hidden: the subject hides its last-seen, or the viewer hides its own.
	Hidden bool
}

// Event says that a viewer's view of a subject may have changed. The relay
// answers it by sending fresh Status frames to its local devices of the
// affected viewers (re-checking consent with View).
type Event struct {
	// Subject whose presence changed; empty means "every subject Viewer
	// subscribes to" (the viewer's own hiding changed).
	Subject string
	// Viewer affected; empty means every viewer subscribed to Subject.
	Viewer string
}

// Tracker keeps presence. Implementations are safe for concurrent use.
//
// Guarantees:
//   - View returns statuses only for subjects with mutual consent, in the
//     order asked, applying both sides' hiding.
//   - Watch's function is called, from any goroutine and possibly
//     concurrently, for every change of online state, of hiding, and of
//     consent. Delivery is at-most-once: a viewer may miss an event, so
//     presence is for display only.
type Tracker interface {
	// Heartbeat marks account as seen now.
	Heartbeat(ctx context.Context, account string) error
	// SetHidden sets whether account hides its last-seen.
	SetHidden(ctx context.Context, account string, hidden bool) error
	// Subscribe replaces the set of accounts device d follows.
	Subscribe(ctx context.Context, d queue.Device, accounts []string) error
	// Forget drops device d's subscriptions (the device was removed).
	Forget(ctx context.Context, d queue.Device) error
	// View returns what viewer may know about each of subjects.
	View(ctx context.Context, viewer string, subjects []string) ([]Status, error)
	// Watch installs the function events are delivered to.
	Watch(fn func(Event))
	Close() error
}
