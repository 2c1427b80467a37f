package server

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/hushchat/hush/protocol"
	"github.com/hushchat/hush/server/directory"
	"github.com/hushchat/hush/server/queue"
	"github.com/hushchat/hush/server/routing"
)

// startSend runs a Send in its own goroutine so that a connection can
// have MaxInflightSends stored at once (they share the store's group
// commit); beyond that the reader waits, and so does the client's TCP. The
// server id is assigned here, in the reader, so that the Sends of one
// connection are stored and delivered in the order they arrived.
//
// Doorbells are rung after the SendAck is queued and the send slot is
// freed: the router (Redis) is a fast path for other relays and must never
// delay an acknowledgement or throttle the sender.
func (c *conn) startSend(s *protocol.Send) {
	c.r.sendMu.RLock()
	if c.r.sendsClosed {
		c.r.sendMu.RUnlock()
		c.r.m.sends.WithLabelValues(protocol.ErrorCode_CODE_UNAVAILABLE.String()).Inc()
		c.enqueue(sendAckError(s.ClientId, &protocol.Error{
			Code: protocol.ErrorCode_CODE_UNAVAILABLE, Message: "relay is shutting down; send again after reconnecting", RetryAfterMs: 1000}))
		return
	}
	c.r.sends.Add(1)
	c.r.sendMu.RUnlock()
	if c.sendSlots == nil {
		// Made here, not at connect: a connection that never sends (most
		// idle ones) holds no channel.
		c.sendSlots = make(chan struct{}, c.r.cfg.MaxInflightSends)
	}
	c.sendSlots <- struct{}{}
	start := time.Now()
	var ps *pendingSend
	if !s.Ephemeral {
		var err error
		if ps, err = c.r.beginSend(c.dev, s); err != nil {
			<-c.sendSlots
			c.r.sends.Done()
			c.enqueue(&protocol.Frame{Body: &protocol.Frame_SendAck{SendAck: c.r.nodeIDRefused(s, err)}})
			return
		}
	}
	go func() {
		defer c.r.sends.Done()
		ctx, cancel := context.WithTimeout(c.r.ctx, c.r.cfg.SendTimeout)
		ack, bells := c.r.finishSend(ctx, c.dev, s, ps, start)
		cancel()
		c.enqueue(&protocol.Frame{Body: &protocol.Frame_SendAck{SendAck: ack}})
		<-c.sendSlots
		if bells != nil {
			c.r.ring(bells)
		}
	}()
}

// nodeIDRefused answers a Send that cannot get a server id now.
func (r *Relay) nodeIDRefused(s *protocol.Send, err error) *protocol.SendAck {
	r.m.sends.WithLabelValues(protocol.ErrorCode_CODE_UNAVAILABLE.String()).Inc()
	r.m.rejected.WithLabelValues(protocol.ErrorCode_CODE_UNAVAILABLE.String()).Inc()
	r.log.Debug("send refused: node id not valid", "err", err)
	return &protocol.SendAck{ClientId: s.ClientId, Error: &protocol.Error{
		Code:         protocol.ErrorCode_CODE_UNAVAILABLE,
		Message:      "this relay cannot assign message ids right now; send again with the same client_id",
		RetryAfterMs: 1000,
	}}
}

// pendingSend is a durable Send between its id assignment and its store.
type pendingSend struct {
	put   queue.Put
	seq   *inflightID
	local []localRecipient
}

type localRecipient struct {
	c *conn
	i int // index in put.Recipients
}

// beginSend builds the Put, assigns its server id and tells the
// recipients connected here that it is coming, atomically (see sequencer
// and deliver.go). It must be followed by finishSend. It fails while the
// node id may not be used (nodeid.Provider.Valid).
func (r *Relay) beginSend(from queue.Device, s *protocol.Send) (*pendingSend, error) {
	ps := &pendingSend{put: queue.Put{
		Sender:       from.Account,
		SenderDevice: from.ID,
		ClientID:     s.ClientId,
		Recipients:   make([]queue.Recipient, len(s.Recipients)),
	}}
	put := &ps.put
	if len(s.Payload) > 0 {
		put.Shared, put.SharedType = s.Payload, int32(s.Type)
	}
	for i, rc := range s.Recipients {
		put.Recipients[i] = queue.Recipient{Device: queue.Device{Account: rc.Account, ID: rc.Device}}
		if len(rc.Payload) > 0 {
			put.Recipients[i].Type, put.Recipients[i].Payload = int32(rc.Type), rc.Payload
		}
	}
	var err error
	ps.seq, err = r.seq.begin(func(id uint64) {
		put.ServerID = id
		r.hubMu.RLock()
		for i := range put.Recipients {
			if c := r.hub[put.Recipients[i].Device]; c != nil && c.addPending(id) {
				ps.local = append(ps.local, localRecipient{c, i})
			}
		}
		r.hubMu.RUnlock()
	})
	if err != nil {
		return nil, err
	}
	return ps, nil
}

// doorbells is what a stored Send still has to ring once its SendAck is
// on its way.
type doorbells struct {
	devices  []queue.Device
	isLocal  []bool // delivered from memory here; no bell needed
	serverID uint64
	// duplicate: the store already had this message (a retry). The
	// attempt that stored it may have died before ringing, or a retry may
	// just have finished it (a Cassandra take-over), so every recipient is
	// rung, local ones included.
	duplicate bool
}

// finishSend checks the recipients, stores the Put (ps; nil for an
// ephemeral Send) and returns the SendAck, and the doorbells to ring after
// it. Nothing is stored unless every check passed; a SendAck without error
// is returned only after the store made the envelope durable for every
// recipient.
func (r *Relay) finishSend(ctx context.Context, from queue.Device, s *protocol.Send, ps *pendingSend, start time.Time) (*protocol.SendAck, *doorbells) {
	ack, bells := r.doSend(ctx, from, s, ps)
	r.m.sendSeconds.Observe(time.Since(start).Seconds())
	switch {
	case ack.Error != nil:
		r.m.sends.WithLabelValues(ack.Error.Code.String()).Inc()
		r.m.rejected.WithLabelValues(ack.Error.Code.String()).Inc()
	case s.Ephemeral:
		r.m.sends.WithLabelValues("ephemeral").Inc()
	case bells != nil && bells.duplicate:
		r.m.sends.WithLabelValues("duplicate").Inc()
	default:
		r.m.sends.WithLabelValues("ok").Inc()
	}
	return ack, bells
}

func (r *Relay) doSend(ctx context.Context, from queue.Device, s *protocol.Send, ps *pendingSend) (*protocol.SendAck, *doorbells) {
	if e := r.checkRecipients(ctx, from, s.Recipients); e != nil {
		if ps != nil {
			r.abandon(ps)
		}
		return &protocol.SendAck{ClientId: s.ClientId, Error: e}, nil
	}
	if ps == nil {
		return r.sendEphemeral(ctx, from, s), nil
	}
	put := &ps.put
	now := r.cfg.Now().Truncate(time.Millisecond)
	put.ServerTime, put.ExpiresAt = now, now.Add(r.cfg.TTL)
	res, err := r.store.Put(ctx, *put)
	if err != nil || res.Duplicate {
		r.abandon(ps)
	} else {
		for _, l := range ps.local {
			l.c.commitPending(put.ServerID, envelopeFor(put, l.i))
		}
		r.seq.end(ps.seq)
	}
	if err != nil {
		return &protocol.SendAck{ClientId: s.ClientId, Error: r.putError(from, err)}, nil
	}
	ack := &protocol.SendAck{ClientId: s.ClientId, ServerId: res.ServerID, ServerTimeMs: res.ServerTime.UnixMilli()}
	if !res.Duplicate && len(ps.local) == len(put.Recipients) {
		return ack, nil // everyone is served from memory here: no bells
	}
	bells := &doorbells{
		devices:   make([]queue.Device, len(put.Recipients)),
		isLocal:   make([]bool, len(put.Recipients)),
		serverID:  res.ServerID,
		duplicate: res.Duplicate,
	}
	for i := range put.Recipients {
		bells.devices[i] = put.Recipients[i].Device
	}
	if !res.Duplicate {
		for _, l := range ps.local {
			bells.isLocal[l.i] = true
		}
	}
	return ack, bells
}

// abandon withdraws a Put that will not be stored under its id.
func (r *Relay) abandon(ps *pendingSend) {
	for _, l := range ps.local {
		l.c.cancelPending(ps.put.ServerID)
	}
	r.seq.end(ps.seq)
}

// envelopeFor builds the envelope recipient i of put receives.
func envelopeFor(put *queue.Put, i int) *protocol.Envelope {
	rc := &put.Recipients[i]
	env := &protocol.Envelope{
		ServerId:     put.ServerID,
		Sender:       put.Sender,
		SenderDevice: put.SenderDevice,
		Type:         protocol.EnvelopeType(rc.Type),
		Payload:      rc.Payload,
		ServerTimeMs: put.ServerTime.UnixMilli(),
	}
	if len(rc.Payload) == 0 {
		env.Type, env.Payload = protocol.EnvelopeType(put.SharedType), put.Shared
	}
	return env
}

// ringTimeout bounds ringing one stored Send's doorbells.
const ringTimeout = 5 * time.Second

// ring rings the doorbells of a stored Send's recipients that are not
// served from memory here, and pushes to those connected nowhere. When
// the router fails (Redis down, or a call timed out) the bells are kept
// and rung again once the router is healthy (see bells.go), and every
// recipient is pushed at once: a device connected nowhere must not wait
// for its push until the outage ends. The failure is logged once per
// outage and counted in hush_doorbell_failures_total.
func (r *Relay) ring(b *doorbells) {
	var bells []routing.Bell
	for i, dev := range b.devices {
		if b.isLocal[i] {
			continue
		}
		if b.duplicate {
			if c := r.local(dev); c != nil {
				c.bell(b.serverID)
				continue
			}
		}
		bells = append(bells, routing.Bell{Device: dev, ServerID: b.serverID})
	}
	if len(bells) == 0 {
		return
	}
	ctx, cancel := context.WithTimeout(r.ctx, ringTimeout)
	attached, err := r.router.Ring(ctx, bells)
	cancel()
	if err != nil {
		r.ringFailed(err)
		r.keepBells(bells)
		if r.push != nil {
			for _, bl := range bells {
				r.push.Notify(bl.Device)
			}
		}
		return
	}
	r.ringWorked()
	if r.push == nil {
		return
	}
	for i, bl := range bells {
		if !attached[i] {
			r.push.Notify(bl.Device)
		}
	}
}

// ringFailed counts a failed Ring and logs the first of an outage.
func (r *Relay) ringFailed(err error) {
	r.m.ringFailures.Inc()
	if r.ringFailing.CompareAndSwap(false, true) {
		r.log.Warn("doorbells failing: they are rung again once the router is healthy, offline recipients are pushed; logged once until doorbells work again", "err", err)
	}
}

func (r *Relay) ringWorked() {
	if r.ringFailing.CompareAndSwap(true, false) {
		r.log.Info("doorbells work again")
	}
}

func (r *Relay) putError(from queue.Device, err error) *protocol.Error {
	if qf, ok := queue.IsQueueFull(err); ok {
		return &protocol.Error{
			Code:    protocol.ErrorCode_CODE_QUEUE_FULL,
			Message: fmt.Sprintf("the queue of %s is full; retry later", qf.Device),
			Limit:   uint64(qf.Limit), RetryAfterMs: 60_000,
		}
	}
	if queue.IsRetryable(err) || errors.Is(err, context.DeadlineExceeded) || errors.Is(err, context.Canceled) {
		r.log.Warn("queue put failed", "account", from.Account, "device", from.ID, "err", err)
		return &protocol.Error{Code: protocol.ErrorCode_CODE_UNAVAILABLE, Message: "storage unavailable; send again with the same client_id", RetryAfterMs: 1000}
	}
	r.log.Error("queue put refused", "account", from.Account, "device", from.ID, "err", err)
	return &protocol.Error{Code: protocol.ErrorCode_CODE_INTERNAL, Message: "the relay could not store this message"}
}

// sendEphemeral hands an envelope to the recipients online now and stores
// nothing.
func (r *Relay) sendEphemeral(ctx context.Context, from queue.Device, s *protocol.Send) *protocol.SendAck {
	id, err := r.seq.ephemeral()
	if err != nil {
		return &protocol.SendAck{ClientId: s.ClientId, Error: &protocol.Error{
			Code: protocol.ErrorCode_CODE_UNAVAILABLE, Message: "this relay cannot assign message ids right now; retry later", RetryAfterMs: 1000}}
	}
	now := r.cfg.Now()
	var delivered uint32
	var bells []routing.Bell
	for _, rc := range s.Recipients {
		env := &protocol.Envelope{
			ServerId: id, Sender: from.Account, SenderDevice: from.ID,
			Type: rc.Type, Payload: rc.Payload, ServerTimeMs: now.UnixMilli(), Ephemeral: true,
		}
		if len(rc.Payload) == 0 {
			env.Type, env.Payload = s.Type, s.Payload
		}
		dev := queue.Device{Account: rc.Account, ID: rc.Device}
		if c := r.local(dev); c != nil {
			if c.enqueueEphemeral(env) {
				delivered++
			}
			continue
		}
		bells = append(bells, routing.Bell{Device: dev, ServerID: id, Envelope: env})
	}
	if len(bells) > 0 {
		attached, err := r.router.Ring(ctx, bells)
		if err != nil {
			// Ephemeral envelopes are never promised: only count it.
			r.ringFailed(err)
		} else {
			r.ringWorked()
			for _, a := range attached {
				if a {
					delivered++
				}
			}
		}
	}
	return &protocol.SendAck{ClientId: s.ClientId, ServerId: id, ServerTimeMs: now.UnixMilli(), DeliveredOnline: delivered}
}

// maxListedAccounts bounds the account names one error message lists.
const maxListedAccounts = 10

// checkRecipients compares the Send's recipients with each addressed
// account's current devices. It returns nil when they match exactly (for
// the sender's own account: every device but the sending one).
func (r *Relay) checkRecipients(ctx context.Context, from queue.Device, rcpts []*protocol.Recipient) *protocol.Error {
	named := make(map[string][]uint32)
	var accounts []string
	for _, rc := range rcpts {
		if _, ok := named[rc.Account]; !ok {
			accounts = append(accounts, rc.Account)
		}
		named[rc.Account] = append(named[rc.Account], rc.Device)
	}
	lists := make([][]uint32, len(accounts))
	errs := make([]error, len(accounts))
	lookup := func(i int) { lists[i], errs[i] = r.dir.Devices(ctx, accounts[i]) }
	if len(accounts) <= 4 {
		for i := range accounts {
			lookup(i)
		}
	} else {
		// A large group: look accounts up concurrently (cache misses may
		// be network round trips), at most 16 at a time.
		var wg sync.WaitGroup
		sem := make(chan struct{}, 16)
		for i := range accounts {
			wg.Add(1)
			sem <- struct{}{}
			go func() {
				defer func() { <-sem; wg.Done() }()
				lookup(i)
			}()
		}
		wg.Wait()
	}

	var unknown []string
	var mismatches []*protocol.DeviceMismatch
	for i, acct := range accounts {
		switch err := errs[i]; {
		case errors.Is(err, directory.ErrUnknownAccount):
			unknown = append(unknown, acct)
			continue
		case err != nil:
			r.log.Warn("device lookup failed", "account", acct, "err", err)
			return &protocol.Error{Code: protocol.ErrorCode_CODE_UNAVAILABLE, Message: "device directory unavailable; retry later", RetryAfterMs: 1000}
		}
		current := lists[i]
		if acct == from.Account {
			current = slices.DeleteFunc(slices.Clone(current), func(d uint32) bool { return d == from.ID })
		}
		var dm protocol.DeviceMismatch
		for _, d := range current {
			if !slices.Contains(named[acct], d) {
				dm.Missing = append(dm.Missing, d)
			}
		}
		for _, d := range named[acct] {
			if !slices.Contains(current, d) {
				dm.Extra = append(dm.Extra, d)
			}
		}
		if len(dm.Missing) > 0 || len(dm.Extra) > 0 {
			dm.Account = acct
			slices.Sort(dm.Missing)
			slices.Sort(dm.Extra)
			mismatches = append(mismatches, &dm)
		}
	}
	if len(unknown) > 0 {
		listed := unknown[:min(len(unknown), maxListedAccounts)]
		msg := "unknown account: " + strings.Join(listed, ", ")
		if len(unknown) > len(listed) {
			msg += fmt.Sprintf(" and %d more", len(unknown)-len(listed))
		}
		return &protocol.Error{Code: protocol.ErrorCode_CODE_UNKNOWN_ACCOUNT, Message: msg}
	}
	if len(mismatches) > 0 {
		return &protocol.Error{
			Code:       protocol.ErrorCode_CODE_DEVICE_MISMATCH,
			Message:    "the recipients do not match the accounts' current devices; fetch keys for the missing ones and send again",
			Mismatches: mismatches,
		}
	}
	return nil
}
