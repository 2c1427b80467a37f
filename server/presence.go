package server

import (
	"context"
	"time"

	"github.com/hushchat/hush/protocol"
	"github.com/hushchat/hush/server/presence"
)

// subscribePresence handles PresenceSubscribe: the tracker records the
// device's set (consent is checked there), the relay indexes the connection
// under each subject for fan-out, and answers with the statuses the device
// may see now.
func (r *Relay) subscribePresence(c *conn, accounts []string) {
	ctx, cancel := context.WithTimeout(r.ctx, 5*time.Second)
	defer cancel()
	if err := r.pres.Subscribe(ctx, c.dev, accounts); err != nil {
		r.log.Warn("presence subscribe failed", "account", c.dev.Account, "device", c.dev.ID, "err", err)
		c.refuse(protocol.ErrorCode_CODE_UNAVAILABLE, "presence unavailable; subscribe again later", 0)
		return
	}
	r.setPresenceSubs(c, accounts)
	r.sendPresence(ctx, c, accounts)
}

// setPresenceSubs replaces c's entries in the subject index.
func (r *Relay) setPresenceSubs(c *conn, accounts []string) {
	r.presMu.Lock()
	defer r.presMu.Unlock()
	for _, s := range c.subs {
		if set := r.presSubs[s]; set != nil {
			delete(set, c)
			if len(set) == 0 {
				delete(r.presSubs, s)
			}
		}
	}
	c.subs = append([]string(nil), accounts...)
	for _, s := range c.subs {
		set := r.presSubs[s]
		if set == nil {
			set = make(map[*conn]struct{})
			r.presSubs[s] = set
		}
		set[c] = struct{}{}
	}
}

// sendPresence sends c the statuses of subjects it may see.
func (r *Relay) sendPresence(ctx context.Context, c *conn, subjects []string) {
	if len(subjects) == 0 {
		return
	}
	sts, err := r.pres.View(ctx, c.dev.Account, subjects)
	if err != nil {
		r.log.Warn("presence view failed", "account", c.dev.Account, "err", err)
		return
	}
	for _, st := range sts {
		p := &protocol.Presence{Account: st.Account, Online: st.Online, Hidden: st.Hidden}
		if !st.LastSeen.IsZero() {
			p.LastSeenMs = st.LastSeen.UnixMilli()
		}
		if c.enqueueBytes(encode(&protocol.Frame{Body: &protocol.Frame_Presence{Presence: p}}), true) {
			r.m.presence.Inc()
		}
	}
}

// presenceEvent fans a tracker event out to the local connections it
// concerns; each gets a fresh view, so consent is checked at send time.
func (r *Relay) presenceEvent(ev presence.Event) {
	type target struct {
		c        *conn
		subjects []string
	}
	var targets []target
	r.presMu.Lock()
	switch {
	case ev.Subject != "":
		for c := range r.presSubs[ev.Subject] {
			if ev.Viewer == "" || c.dev.Account == ev.Viewer {
				targets = append(targets, target{c, []string{ev.Subject}})
			}
		}
	case ev.Viewer != "":
		for _, set := range r.presSubs {
			for c := range set {
				if c.dev.Account == ev.Viewer {
					targets = append(targets, target{c, c.subs})
				}
			}
		}
		// A connection appears under every subject it follows; keep one.
		seen := make(map[*conn]bool)
		kept := targets[:0]
		for _, t := range targets {
			if !seen[t.c] {
				seen[t.c] = true
				kept = append(kept, t)
			}
		}
		targets = kept
	}
	r.presMu.Unlock()
	if len(targets) == 0 {
		return
	}
	ctx, cancel := context.WithTimeout(r.ctx, 5*time.Second)
	defer cancel()
	for _, t := range targets {
		r.sendPresence(ctx, t.c, t.subjects)
	}
}
