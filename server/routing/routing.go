// Package routing tells relay nodes where each connected device is, and
// carries "doorbells" to the node that serves a device.
//
// A doorbell is a hint, never the message: the envelope is already stored
// durably in the device's queue when its bell rings, so a bell that is lost
// (pub/sub is at-most-once; a node may crash between publish and delivery)
// delays a delivery but never loses it — the device's connection fetches
// from its queue on the next bell, on reconnect, or on the relay's fallback
// polling. Ephemeral sends (typing indicators) are the exception: they are
// never stored, so their bell carries the envelope itself and a lost bell
// loses the indicator, which is what "ephemeral" promises.
//
// The same interface serves one process (Local, here) and a cluster (Redis,
// in the scale-out issue): Attach publishes "device D is on this node" and
// evicts any older session of D wherever it is, so a device has at most one
// live connection in the whole cluster; Ring reaches the node D is on.
package routing

import (
	"context"
	"fmt"
	"sync"

	"github.com/hushchat/hush/protocol"
	"github.com/hushchat/hush/server/queue"
)

// Bell says "device Device has something new".
type Bell struct {
	Device queue.Device
	// ServerID is the id of the newly stored envelope (0 when not known).
	ServerID uint64
	// Envelope is set only for ephemeral sends, which are never stored: the
	// bell carries them. Treat it as read-only.
	Envelope *protocol.Envelope
}

// Handler receives what a Router delivers to this node. Its methods must
// not block: they are called from the router's delivery path.
type Handler interface {
	// Ring is called for a bell addressed to a device attached to this node.
	Ring(b Bell)
	// Evict is called when session of dev, attached to this node, was
	// superseded by a newer Attach of the same device (on any node); the
	// node closes that connection.
	Evict(dev queue.Device, session uint64)
}

// Router maps devices to relay nodes. Implementations are safe for
// concurrent use.
//
// Guarantees:
//   - After Attach(dev, s) returns, bells for dev reach this node's Handler
//     (at most once each) until Detach(dev, s) or an eviction of s.
//   - Attach evicts every other session of dev (Handler.Evict on the node
//     that holds it), so at most one session of a device is live once the
//     eviction is delivered.
//   - Detach(dev, s) removes only session s: a late Detach of a superseded
//     session never detaches its successor.
//   - Ring reports for each bell whether dev was attached anywhere when it
//     rang. false means "offline" (the relay then fires a push
//     notification); true means the bell was handed to the device's node,
//     not that it arrived.
type Router interface {
	// Subscribe installs this node's Handler; call it once, before Attach.
	Subscribe(h Handler)
	Attach(ctx context.Context, dev queue.Device, session uint64) error
	Detach(ctx context.Context, dev queue.Device, session uint64) error
	Ring(ctx context.Context, bells []Bell) (attached []bool, err error)
	Close() error
}

// Local is the Router of a single relay process: every device is either
// attached here or offline.
type Local struct {
	mu       sync.RWMutex
	h        Handler
	sessions map[queue.Device]uint64
	closed   bool
}

// NewLocal returns an in-process Router.
func NewLocal() *Local {
	return &Local{sessions: make(map[queue.Device]uint64)}
}

// Subscribe implements Router.
func (l *Local) Subscribe(h Handler) {
	l.mu.Lock()
	l.h = h
	l.mu.Unlock()
}

// Attach implements Router.
func (l *Local) Attach(_ context.Context, dev queue.Device, session uint64) error {
	l.mu.Lock()
	if l.closed {
		l.mu.Unlock()
		return fmt.Errorf("attach %s: router closed", dev)
	}
	old, had := l.sessions[dev]
	l.sessions[dev] = session
	h := l.h
	l.mu.Unlock()
	if had && old != session && h != nil {
		h.Evict(dev, old)
	}
	return nil
}

// Detach implements Router.
func (l *Local) Detach(_ context.Context, dev queue.Device, session uint64) error {
	l.mu.Lock()
	if s, ok := l.sessions[dev]; ok && s == session {
		delete(l.sessions, dev)
	}
	l.mu.Unlock()
	return nil
}

// Ring implements Router.
func (l *Local) Ring(_ context.Context, bells []Bell) ([]bool, error) {
	attached := make([]bool, len(bells))
	l.mu.RLock()
	h := l.h
	for i, b := range bells {
		_, attached[i] = l.sessions[b.Device]
	}
	l.mu.RUnlock()
	if h != nil {
		for i, b := range bells {
			if attached[i] {
				h.Ring(b)
			}
		}
	}
	return attached, nil
}

// Attached reports whether dev is attached (for tests and diagnostics).
func (l *Local) Attached(dev queue.Device) bool {
	l.mu.RLock()
	defer l.mu.RUnlock()
	_, ok := l.sessions[dev]
	return ok
}

// Close implements Router: later Attaches fail.
func (l *Local) Close() error {
	l.mu.Lock()
	l.closed = true
	l.mu.Unlock()
	return nil
}
