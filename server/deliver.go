package server

import (
	"context"
	"slices"
	"time"

	"google.golang.org/protobuf/proto"

	"github.com/hushchat/hush/protocol"
	"github.com/hushchat/hush/server/queue"
)

// Delivery keeps two promises per connection: every envelope stored for
// the device reaches it, and in server-id order.
//
// The queue is the truth; memory is a shortcut used only when it is
// provably in order. A connection is in one of two modes:
//
//   - fetch mode (while draining the backlog after connect, and whenever a
//     doorbell or an overflow says the queue holds something memory lacks):
//     the pump reads the queue after its cursor — the highest id it has
//     delivered — in batches;
//   - memory mode: envelopes stored by this relay for the device are
//     delivered straight from the Send that stored them.
//
// Ordering in both modes rests on the pending list. When this relay
// assigns an id X to a Put addressed to the device, the connection is told
// "X is coming" in the same critical section that assigned it (see
// sequencer), so pending holds this relay's in-flight ids in increasing
// order. A fetch never delivers past the first in-flight id (it may commit
// later with a lower id than what the fetch returned); memory mode delivers
// the head of pending only once it is stored. So the cursor only moves over
// ids that can no longer appear below it.
//
// The drain after connect also respects the Puts whose ids were assigned
// before the connection attached (up to the drain horizon): they did not
// know the connection, so they are not in pending. While one of them is in
// flight the drain delivers nothing at or above its id (it could commit
// behind the cursor, unseen until the next reconnect), and the last fetch
// and QueueEmpty wait until all of them have finished.
//
// Doorbells from other relays (Redis routing) carry ids this relay did not
// assign; they switch the connection to fetch mode. Such an id may be below
// the cursor: the other relay's clock may lag, its Put may have been slower
// than this relay's later ones, or a client's retry may just have finished
// an earlier attempt under its original id (a Cassandra take-over). A
// fetch after the cursor would never see it. So a bell whose id is at or
// below the cursor, and not among the ids delivered and still unacked,
// starts a rescan: the next fetches read from just below that id and hand
// over every envelope up to the cursor that this connection has not
// delivered. The queue holds exactly the unacked delivered envelopes and
// the undelivered ones (acks delete), so "not delivered" is "not in
// unacked" — plus the ids acked while that fetch was reading, which the
// fetch may still have seen (ackedDuring). A bell without an id (the
// router's fallback polling during a Redis outage, and its catch-up ring
// after one) rescans the whole queue, since bells may have been lost. The
// same can happen to this relay's own ids: one assigned after a fetch moved
// the cursor past it is delivered from memory as soon as it is stored (or,
// when the memory bound leaves it to the queue, by a rescan); pending
// entries leave the list only when delivered, never for being below the
// cursor. Late envelopes are counted in hush_late_deliveries_total. Across relays,
// server ids order only as well as the relays' clocks agree, which is why
// clients order a conversation by the sender's counter inside the
// ciphertext.
//
// Flow control: at most MaxUnacked envelopes are delivered and not yet
// acked; delivery pauses there until acks arrive. Live envelopes held in
// memory are bounded by MaxPendingBytes; beyond it they are left to the
// queue (fetch mode).

type pendingState uint8

const (
	inflight  pendingState = iota // Put not finished
	committed                     // stored; env holds the envelope
	dropped                       // stored, envelope not kept (memory bound): fetch it
)

type pendingEntry struct {
	id    uint64
	state pendingState
	size  int
	env   *protocol.Envelope
}

// addPending records that id is being stored for this device. It is
// called inside the sequencer's critical section, so ids arrive in
// increasing order.
func (c *conn) addPending(id uint64) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.dead {
		return false
	}
	c.pending = append(c.pending, pendingEntry{id: id})
	return true
}

func (c *conn) findPendingLocked(id uint64) int {
	i, ok := slices.BinarySearchFunc(c.pending, id, func(e pendingEntry, id uint64) int {
		switch {
		case e.id < id:
			return -1
		case e.id > id:
			return 1
		}
		return 0
	})
	if !ok {
		return -1
	}
	return i
}

// commitPending records that id was stored, with the envelope this device
// gets.
func (c *conn) commitPending(id uint64, env *protocol.Envelope) {
	c.mu.Lock()
	i := c.findPendingLocked(id)
	if i < 0 {
		c.mu.Unlock()
		return
	}
	e := &c.pending[i]
	size := len(env.Payload) + len(env.Sender) + 32
	if c.pendingBytes+size > c.r.cfg.MaxPendingBytes {
		e.state = dropped
		c.fetchNeeded = true
		c.fetchGen++
		if id <= c.cursor {
			// A fetch moved the cursor past it (another relay's higher
			// ids): only a rescan finds it in the queue.
			c.startRescanLocked(id - 1)
		}
	} else {
		e.state, e.env, e.size = committed, env, size
		c.pendingBytes += size
	}
	if c.blockedAt == id {
		c.blockedAt = 0
	}
	c.mu.Unlock()
	c.kick()
}

// cancelPending forgets id: its Put failed or was a duplicate.
func (c *conn) cancelPending(id uint64) {
	c.mu.Lock()
	if i := c.findPendingLocked(id); i >= 0 {
		c.pendingBytes -= c.pending[i].size
		c.pending = slices.Delete(c.pending, i, i+1)
	}
	if c.blockedAt == id {
		c.blockedAt = 0
	}
	c.mu.Unlock()
	c.kick()
}

// bell switches the connection to fetch mode: its queue has something
// this relay did not put there, stored under id (0: unknown). An id at or
// below the cursor starts a rescan from just below it (see the file
// comment); an id already delivered needs nothing.
func (c *conn) bell(id uint64) {
	c.mu.Lock()
	if c.dead {
		c.mu.Unlock()
		return
	}
	if c.fetching {
		// The fetch in flight may already have read past id without
		// seeing it: look again when it ends.
		c.bellsDuring = append(c.bellsDuring, id)
	}
	if id == 0 || id <= c.cursor {
		if _, delivered := c.unacked[id]; delivered && id != 0 {
			c.mu.Unlock()
			return
		}
		after := uint64(0)
		if id > 0 {
			after = id - 1
		}
		c.startRescanLocked(after)
	}
	c.fetchNeeded = true
	c.fetchGen++
	c.mu.Unlock()
	c.kick()
}

// endFetchLocked clears what a fetch in flight records.
func (c *conn) endFetchLocked() {
	c.fetching, c.fetchRescan, c.ackedDuring = false, false, nil
	if cap(c.bellsDuring) > 64 {
		c.bellsDuring = nil // do not keep a burst's worth of memory
	}
}

// startRescanLocked makes the next fetches read from after (see the file
// comment), unless a rescan from lower down is already due.
func (c *conn) startRescanLocked(after uint64) {
	if !c.rescan || after < c.rescanAfter {
		c.rescan, c.rescanAfter = true, after
	}
}

// dropDeliveredLocked removes from pending the entries a fetch delivered
// (whatever their state: a rescan may deliver a Put whose commit has not
// been recorded yet, which then finds nothing to commit).
func (c *conn) dropDeliveredLocked(envs []*protocol.Envelope) {
	if len(c.pending) == 0 || len(envs) == 0 {
		return
	}
	ids := make(map[uint64]struct{}, len(envs))
	for _, e := range envs {
		ids[e.ServerId] = struct{}{}
	}
	keep := c.pending[:0]
	for _, e := range c.pending {
		if _, ok := ids[e.id]; ok {
			c.pendingBytes -= e.size
			continue
		}
		keep = append(keep, e)
	}
	clear(c.pending[len(keep):])
	c.pending = keep
	if len(c.pending) == 0 {
		c.pending = nil
	}
}

// lateLocalLocked reports whether pending starts with a stored entry at
// or below the cursor: an id this relay assigned after a fetch had moved
// the cursor past it (another relay's higher ids). Such entries are
// delivered from memory at once, below the cursor, in any mode.
func (c *conn) lateLocalLocked() bool {
	return len(c.pending) > 0 && c.pending[0].id <= c.cursor && c.pending[0].state == committed
}

func (c *conn) popPendingLocked(n int) {
	if n == 0 {
		return
	}
	clear(c.pending[:n])
	c.pending = c.pending[n:]
	if len(c.pending) == 0 {
		c.pending = nil
	}
}

func (c *conn) hasDroppedLocked() bool {
	for _, e := range c.pending {
		if e.state == dropped {
			return true
		}
	}
	return false
}

func (c *conn) windowLocked() int { return c.r.cfg.MaxUnacked - len(c.unacked) }

// hasDeliveryWorkLocked reports whether the pump can deliver something now.
func (c *conn) hasDeliveryWorkLocked() bool {
	if c.windowLocked() <= 0 {
		return false
	}
	if c.lateLocalLocked() {
		return true
	}
	if c.draining || c.fetchNeeded {
		return c.blockedAt == 0 && !c.waitingHorizon && !c.fetchBackoff
	}
	return len(c.pending) > 0 && c.pending[0].state != inflight
}

// deliverLocked does one step of delivery. It is called with c.mu held and
// returns with it released. more reports that another step may have work.
func (c *conn) deliverLocked() (frames [][]byte, queueEmpty, more bool) {
	if !c.hasDeliveryWorkLocked() {
		c.mu.Unlock()
		return nil, false, false
	}
	window := c.windowLocked()
	late := c.lateLocalLocked()
	if !late && (c.draining || c.fetchNeeded) {
		return c.fetchLocked()
	}
	var envs []*protocol.Envelope
	n := 0
	for n < len(c.pending) && len(envs) < protocol.MaxDeliverBatch && len(envs) < window {
		e := &c.pending[n]
		if e.state == inflight || late && e.id > c.cursor {
			break
		}
		if e.state == dropped {
			c.fetchNeeded = true
			c.fetchGen++
			break
		}
		envs = append(envs, e.env)
		c.cursor = max(c.cursor, e.id)
		c.pendingBytes -= e.size
		n++
	}
	c.popPendingLocked(n)
	c.markUnackedLocked(envs)
	c.mu.Unlock()
	if late {
		c.r.m.late.Add(float64(len(envs)))
	}
	return c.buildDeliver(envs), false, true
}

func (c *conn) markUnackedLocked(envs []*protocol.Envelope) {
	if len(envs) == 0 {
		return
	}
	if c.unacked == nil {
		c.unacked = make(map[uint64]struct{}, len(envs))
	}
	for _, e := range envs {
		c.unacked[e.ServerId] = struct{}{}
	}
}

// fetchLocked reads the next batch from the queue (see the file comment).
func (c *conn) fetchLocked() (frames [][]byte, queueEmpty, more bool) {
	var barrier uint64
	for _, e := range c.pending {
		if e.id > c.cursor && e.state == inflight {
			barrier = e.id
			break
		}
	}
	after, gen, draining, upTo := c.cursor, c.fetchGen, c.draining, c.drainUpTo
	rescan, rescanFrom := c.rescan, c.rescanAfter
	if rescan {
		after = rescanFrom
	}
	c.fetching, c.fetchRescan, c.ackedDuring, c.bellsDuring = true, rescan, nil, c.bellsDuring[:0]
	limit := min(protocol.MaxDeliverBatch, c.windowLocked())
	c.mu.Unlock()

	// Read the horizon before the fetch: only a fetch that started after
	// every earlier Put finished may end the drain. And while the drain
	// lasts, no id at or above the lowest Put still in flight from before
	// the attach may be delivered: that Put may commit below what the
	// fetch returns, and it never told this connection it was coming.
	var floor uint64
	if draining {
		floor = c.r.seq.lowestInflight(upTo)
	}
	horizonOK := floor == 0
	ctx, cancel := context.WithTimeout(c.r.ctx, c.r.cfg.SendTimeout)
	msgs, err := c.r.store.Fetch(ctx, c.dev, after, limit)
	cancel()
	if err != nil {
		c.r.log.Warn("queue fetch failed; retrying", "account", c.dev.Account, "device", c.dev.ID, "err", err)
		c.mu.Lock()
		c.fetchBackoff = true
		c.endFetchLocked()
		c.mu.Unlock()
		time.AfterFunc(time.Second, func() {
			c.mu.Lock()
			c.fetchBackoff = false
			c.mu.Unlock()
			c.kick()
		})
		return nil, false, false
	}

	c.mu.Lock()
	ackedDuring, bellsDuring := c.ackedDuring, c.bellsDuring
	c.endFetchLocked()
	if c.dead {
		c.mu.Unlock()
		return nil, false, false
	}
	cut, horizonCut := false, false
	envs := make([]*protocol.Envelope, 0, len(msgs))
	top := c.cursor // the rescan covers ids up to here
	late := 0
	rescanDone := rescan && len(msgs) < limit
	for _, m := range msgs {
		if m.ServerID <= top {
			if !rescan {
				continue
			}
			rescanFrom = m.ServerID
			_, unacked := c.unacked[m.ServerID]
			_, acked := ackedDuring[m.ServerID]
			if !unacked && !acked {
				envs = append(envs, envelopeOf(m))
				late++
			}
			continue
		}
		rescanDone = rescan // past the rescanned range
		if m.ServerID <= c.cursor {
			continue
		}
		if floor != 0 && m.ServerID >= floor {
			cut, horizonCut = true, true
			break
		}
		if barrier != 0 && m.ServerID >= barrier {
			cut = true
			break
		}
		envs = append(envs, envelopeOf(m))
		c.cursor = m.ServerID
	}
	if rescan && c.rescanAfter == after {
		// No bell lowered the rescan's start while this fetch ran.
		if rescanDone {
			c.rescan = false
		} else {
			c.rescanAfter = rescanFrom
		}
	}
	c.markUnackedLocked(envs)
	c.dropDeliveredLocked(envs)
	// A bell that rang while this fetch ran may name an id the fetch did
	// not see (stored after it read that range) and that is now below the
	// cursor, or below where a rescan got to: rescan from there.
	for _, id := range bellsDuring {
		if id <= c.cursor {
			if _, ok := c.unacked[id]; !ok {
				c.startRescanLocked(max(id, 1) - 1)
			}
		}
	}
	wait, waitFor := false, upTo
	switch {
	case horizonCut:
		c.waitingHorizon = true
		wait, waitFor = true, floor
	case cut:
		// Wait for the barrier's Put, unless it finished meanwhile.
		if i := c.findPendingLocked(barrier); i >= 0 && c.pending[i].state == inflight {
			c.blockedAt = barrier
		}
	}
	if !cut && len(msgs) < limit {
		switch {
		case draining && !horizonOK:
			c.waitingHorizon = true
			wait = true
		case draining:
			c.draining = false
			queueEmpty = true
			fallthrough
		default:
			if c.fetchGen == gen && !c.hasDroppedLocked() {
				c.fetchNeeded = false
			}
		}
	}
	c.mu.Unlock()
	if late > 0 {
		c.r.m.late.Add(float64(late))
	}
	if wait {
		c.r.seq.waitDone(waitFor, func() {
			c.mu.Lock()
			c.waitingHorizon = false
			c.mu.Unlock()
			c.kick()
		})
	}
	return c.buildDeliver(envs), queueEmpty, true
}

func envelopeOf(m queue.Message) *protocol.Envelope {
	return &protocol.Envelope{
		ServerId:     m.ServerID,
		Sender:       m.Sender,
		SenderDevice: m.SenderDevice,
		Type:         protocol.EnvelopeType(m.Type),
		Payload:      m.Payload,
		ServerTimeMs: m.ServerTime.UnixMilli(),
	}
}

// deliverFrameBudget leaves room for the Deliver and Frame headers.
const deliverFrameBudget = protocol.MaxFrameSize - 64

// buildDeliver packs envelopes into as few Deliver frames as the frame and
// batch limits allow.
func (c *conn) buildDeliver(envs []*protocol.Envelope) [][]byte {
	if len(envs) == 0 {
		return nil
	}
	c.r.m.deliveries.WithLabelValues("stored").Add(float64(len(envs)))
	var frames [][]byte
	start, size := 0, 0
	for i, e := range envs {
		s := proto.Size(e) + 6 // field tag and length prefix
		if i > start && (size+s > deliverFrameBudget || i-start >= protocol.MaxDeliverBatch) {
			frames = append(frames, encodeDeliver(envs[start:i]))
			start, size = i, 0
		}
		size += s
	}
	return append(frames, encodeDeliver(envs[start:]))
}

func encodeDeliver(envs []*protocol.Envelope) []byte {
	return encode(&protocol.Frame{Body: &protocol.Frame_Deliver{Deliver: &protocol.Deliver{Envelopes: envs}}})
}
