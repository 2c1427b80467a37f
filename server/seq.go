package server

import (
	"fmt"
	"sync"
	"time"

	"github.com/bwmarrin/snowflake"

	"github.com/hushchat/hush/server/nodeid"
)

// sequencer assigns server ids and knows which of them are still being
// stored. Together with the hub it makes live delivery provably ordered:
//
//   - An id is assigned, and the recipients' local connections are told
//     "id X is coming" (conn.addPending), in one critical section, so every
//     connection learns its pending ids in increasing order.
//   - A connection that attaches records the last id assigned so far (its
//     drain horizon) in the same critical section: every later id will find
//     it in the hub, and every earlier one is awaited (doneUpTo) before the
//     connection reports QueueEmpty, so a Put that was in flight when the
//     device connected can never slip behind its drain.
//
// Ids are Snowflake ids in bwmarrin/snowflake's layout (41 bits of
// milliseconds since snowflake.Epoch, NodeBits of node id, StepBits of
// sequence), composed here rather than by snowflake.Node.Generate for two
// reasons: the time comes from the relay's clock (Config.Now), and an id is
// never allowed to go backwards. When the clock stands still or steps back,
// or 4,096 ids are minted in one millisecond, the next id takes the last
// one's time and sequence + 1, and a full sequence moves on to the next
// millisecond — borrowing from the future — so the node bits are never
// touched and two relays with different node ids can never mint the same id.
//
// Ids for stored envelopes are minted only while the node-id provider says
// the id is ours (nodeid.Provider.Valid): a relay whose Redis lease lapsed
// refuses Sends (retryably) instead of risking a duplicate id.
type sequencer struct {
	ids  nodeid.Provider
	node uint64 // ids.ID() shifted into place
	now  func() time.Time

	mu       sync.Mutex
	last     uint64
	inflight []*inflightID // ascending ids; done ones are popped from the front
	waiters  []horizonWaiter
}

type inflightID struct {
	id   uint64
	done bool
}

type horizonWaiter struct {
	upTo uint64
	fn   func()
}

// Snowflake layout (bwmarrin/snowflake's defaults).
var (
	seqStepBits  = uint(snowflake.StepBits)
	seqTimeShift = uint(snowflake.NodeBits) + uint(snowflake.StepBits)
	seqStepMask  = uint64(1)<<seqStepBits - 1
)

func newSequencer(ids nodeid.Provider, now func() time.Time) (*sequencer, error) {
	id := ids.ID()
	if id < 0 || id > nodeid.MaxID {
		return nil, fmt.Errorf("snowflake node %d outside 0–%d", id, nodeid.MaxID)
	}
	return &sequencer{ids: ids, node: uint64(id) << seqStepBits, now: now}, nil
}

// idTime returns the time encoded in a server id.
func idTime(id uint64) time.Time {
	return time.UnixMilli(int64(id>>seqTimeShift) + snowflake.Epoch)
}

// nextLocked returns a fresh id, strictly above every earlier one, with
// this node's bits (see the type's doc).
func (s *sequencer) nextLocked() uint64 {
	ms := s.now().UnixMilli() - snowflake.Epoch
	if ms < 0 {
		ms = 0
	}
	id := uint64(ms)<<seqTimeShift | s.node
	if id <= s.last {
		// Same millisecond, or the clock stepped back: continue from the
		// last id, carrying a full sequence into the time field.
		t, step := s.last>>seqTimeShift, s.last&seqStepMask
		if step == seqStepMask {
			t, step = t+1, 0
		} else {
			step++
		}
		id = t<<seqTimeShift | s.node | step
	}
	s.last = id
	return id
}

// begin assigns an id for a Put and calls register(id) inside the critical
// section (see the type's doc). The Put must be finished with end. It
// fails, assigning nothing, while the node id may not be used.
func (s *sequencer) begin(register func(id uint64)) (*inflightID, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if err := s.ids.Valid(); err != nil {
		return nil, err
	}
	e := &inflightID{id: s.nextLocked()}
	s.inflight = append(s.inflight, e)
	register(e.id)
	return e, nil
}

// ephemeral assigns an id that is never stored (it too needs a valid node
// id: clients may use it to tell envelopes apart).
func (s *sequencer) ephemeral() (uint64, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if err := s.ids.Valid(); err != nil {
		return 0, err
	}
	return s.nextLocked(), nil
}

// attach runs fn inside the critical section and returns the drain horizon:
// the last id assigned before fn ran.
func (s *sequencer) attach(fn func()) uint64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	fn()
	return s.last
}

// end marks a Put finished (stored or failed) and runs the waiters it
// releases, outside the lock.
func (s *sequencer) end(e *inflightID) {
	s.mu.Lock()
	e.done = true
	n := 0
	for n < len(s.inflight) && s.inflight[n].done {
		n++
	}
	var ready []func()
	if n > 0 {
		clear(s.inflight[:n])
		s.inflight = s.inflight[n:]
		if len(s.waiters) > 0 {
			keep := s.waiters[:0]
			for _, w := range s.waiters {
				if s.doneUpToLocked(w.upTo) {
					ready = append(ready, w.fn)
				} else {
					keep = append(keep, w)
				}
			}
			clear(s.waiters[len(keep):])
			s.waiters = keep
		}
	}
	s.mu.Unlock()
	for _, fn := range ready {
		fn()
	}
}

func (s *sequencer) doneUpToLocked(id uint64) bool {
	// inflight is ascending and its front is never done (end pops done
	// entries from the front), so the front is the lowest id in flight.
	return len(s.inflight) == 0 || s.inflight[0].id > id
}

// lowestInflight returns the lowest id ≤ upTo whose Put has not finished,
// or 0 when every Put with an id ≤ upTo has.
func (s *sequencer) lowestInflight(upTo uint64) uint64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(s.inflight) > 0 && s.inflight[0].id <= upTo {
		return s.inflight[0].id
	}
	return 0
}

// waitDone calls fn (outside any lock) once every Put with an id ≤ id has
// finished — at once if that is already so.
func (s *sequencer) waitDone(id uint64, fn func()) {
	s.mu.Lock()
	if s.doneUpToLocked(id) {
		s.mu.Unlock()
		fn()
		return
	}
	s.waiters = append(s.waiters, horizonWaiter{upTo: id, fn: fn})
	s.mu.Unlock()
}
