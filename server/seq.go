package server

import (
	"fmt"
	"sync"

	"github.com/bwmarrin/snowflake"
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
type sequencer struct {
	node *snowflake.Node

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

func newSequencer(nodeID int64) (*sequencer, error) {
	n, err := snowflake.NewNode(nodeID)
	if err != nil {
		return nil, fmt.Errorf("snowflake node %d: %w", nodeID, err)
	}
	return &sequencer{node: n}, nil
}

// nextLocked returns a fresh id, strictly above every earlier one.
func (s *sequencer) nextLocked() uint64 {
	id := uint64(s.node.Generate().Int64())
	if id <= s.last {
		id = s.last + 1 // never reorder, even if the clock misbehaves
	}
	s.last = id
	return id
}

// begin assigns an id for a Put and calls register(id) inside the critical
// section (see the type's doc). The Put must be finished with end.
func (s *sequencer) begin(register func(id uint64)) *inflightID {
	s.mu.Lock()
	e := &inflightID{id: s.nextLocked()}
	s.inflight = append(s.inflight, e)
	register(e.id)
	s.mu.Unlock()
	return e
}

// ephemeral assigns an id that is never stored.
func (s *sequencer) ephemeral() uint64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.nextLocked()
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

// doneUpTo reports whether every Put with an id ≤ id has finished.
func (s *sequencer) doneUpTo(id uint64) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.doneUpToLocked(id)
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
