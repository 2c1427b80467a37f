package loadgen

import (
	"crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"
	"math"
	"slices"
	"sync"
	"time"
)

// Clock measures time since a run began, on the monotonic clock, so that
// stamps made by one goroutine and read by another compare exactly.
type Clock struct{ start time.Time }

// NewClock starts a clock now.
func NewClock() Clock { return Clock{start: time.Now()} }

// Now is the time since the clock started.
func (c Clock) Now() time.Duration { return time.Since(c.start) }

// Start is when the clock started.
func (c Clock) Start() time.Time { return c.start }

// stampMagic marks a generator payload.
const stampMagic = 0x68627331 // "hbs1"

// StampSize is the bytes a stamp takes at the start of a payload.
const StampSize = 24

// Stamp is what the generator writes into each payload.
type Stamp struct {
	Stream uint32
	Seq    uint64
	// Sent is the clock time the message was (meant to be) sent.
	Sent time.Duration
}

// NewPayload returns a random payload of size bytes (at least StampSize),
// to be stamped with Put before each send. Random bytes cost the store what
// ciphertext costs it.
func NewPayload(size int) ([]byte, error) {
	if size < StampSize {
		return nil, fmt.Errorf("payload size %d is below the %d-byte stamp", size, StampSize)
	}
	b := make([]byte, size)
	rand.Read(b)
	return b, nil
}

// Put writes s into the first StampSize bytes of payload.
func (s Stamp) Put(payload []byte) {
	binary.BigEndian.PutUint32(payload[0:], stampMagic)
	binary.BigEndian.PutUint32(payload[4:], s.Stream)
	binary.BigEndian.PutUint64(payload[8:], s.Seq)
	binary.BigEndian.PutUint64(payload[16:], uint64(s.Sent))
}

// ErrNoStamp: a payload the generator did not make.
var ErrNoStamp = errors.New("payload carries no hush-bench stamp")

// ReadStamp reads the stamp of payload.
func ReadStamp(payload []byte) (Stamp, error) {
	if len(payload) < StampSize || binary.BigEndian.Uint32(payload) != stampMagic {
		return Stamp{}, ErrNoStamp
	}
	return Stamp{
		Stream: binary.BigEndian.Uint32(payload[4:]),
		Seq:    binary.BigEndian.Uint64(payload[8:]),
		Sent:   time.Duration(binary.BigEndian.Uint64(payload[16:])),
	}, nil
}

// Ledger accounts for every message of a run, per stream: which sequence
// numbers the relay acknowledged, which arrived, and how often. It is safe
// for concurrent use; each stream has its own lock, so senders and
// receivers of different streams do not contend.
type Ledger struct {
	streams []stream
}

type stream struct {
	mu      sync.Mutex
	acked   bitset
	seen    []uint8 // deliveries per seq, saturating at 255
	nAcked  int64
	nSeen   int64
	dups    int64
	refused int64
	foreign int64 // seq never sent / out of range
}

// NewLedger returns a ledger of n streams.
func NewLedger(n int) *Ledger { return &Ledger{streams: make([]stream, n)} }

// Streams is the number of streams.
func (l *Ledger) Streams() int { return len(l.streams) }

// Acked records that the relay acknowledged (stored) seq of stream.
func (l *Ledger) Acked(streamID uint32, seq uint64) {
	s := &l.streams[streamID]
	s.mu.Lock()
	if s.acked.set(seq) {
		s.nAcked++
	}
	s.mu.Unlock()
}

// Refused records a SendAck with an error.
func (l *Ledger) Refused(streamID uint32) {
	s := &l.streams[streamID]
	s.mu.Lock()
	s.refused++
	s.mu.Unlock()
}

// Delivered records an arrival of seq of stream and reports whether it was
// the first. An unknown stream counts as foreign.
func (l *Ledger) Delivered(streamID uint32, seq uint64) (first bool) {
	if int(streamID) >= len(l.streams) || seq > math.MaxInt32 {
		if len(l.streams) == 0 {
			return false
		}
		l.streams[0].mu.Lock()
		l.streams[0].foreign++
		l.streams[0].mu.Unlock()
		return false
	}
	s := &l.streams[streamID]
	s.mu.Lock()
	defer s.mu.Unlock()
	if int(seq) >= len(s.seen) {
		s.seen = growTo(s.seen, int(seq)+1)
	}
	switch s.seen[seq] {
	case 0:
		s.nSeen++
		s.seen[seq] = 1
		return true
	case math.MaxUint8:
	default:
		s.seen[seq]++
	}
	s.dups++
	return false
}

// Counts summarises a ledger.
type Counts struct {
	// Acked: messages the relay acknowledged as stored.
	Acked int64 `json:"acked"`
	// Delivered: distinct messages that arrived.
	Delivered int64 `json:"delivered"`
	// Lost: acknowledged and not delivered to the live connection before
	// the run ended (its drain time included). Scenarios then reconnect
	// and count what is still queued, which tells a stalled delivery
	// from a message gone for good.
	Lost int64 `json:"lost"`
	// Duplicated: arrivals beyond the first of a message.
	Duplicated int64 `json:"duplicated"`
	// Refused: Sends answered with an error.
	Refused int64 `json:"refused"`
	// Unexpected: arrivals that were never acknowledged, or that carry a
	// stream or stamp the run did not send.
	Unexpected int64 `json:"unexpected"`
}

// OK reports whether nothing was lost, duplicated, refused or unexpected.
func (c Counts) OK() bool {
	return c.Lost == 0 && c.Duplicated == 0 && c.Refused == 0 && c.Unexpected == 0 && c.Delivered == c.Acked
}

// Err describes what went wrong, or is nil.
func (c Counts) Err() error {
	if c.OK() {
		return nil
	}
	return fmt.Errorf("acked %d, delivered %d: lost %d, duplicated %d, refused %d, unexpected %d",
		c.Acked, c.Delivered, c.Lost, c.Duplicated, c.Refused, c.Unexpected)
}

// Delivered counts distinct deliveries so far (for progress and drain
// checks).
func (l *Ledger) DeliveredSoFar() (delivered, acked int64) {
	for i := range l.streams {
		s := &l.streams[i]
		s.mu.Lock()
		delivered += s.nSeen
		acked += s.nAcked
		s.mu.Unlock()
	}
	return delivered, acked
}

// Counts computes the exact counts: every acknowledged seq is checked
// against the arrivals.
func (l *Ledger) Counts() Counts {
	var c Counts
	for i := range l.streams {
		s := &l.streams[i]
		s.mu.Lock()
		c.Acked += s.nAcked
		c.Delivered += s.nSeen
		c.Duplicated += s.dups
		c.Refused += s.refused
		c.Unexpected += s.foreign
		for seq, n := range s.seen {
			if n > 0 && !s.acked.has(uint64(seq)) {
				c.Unexpected++
			}
		}
		for w, word := range s.acked {
			for bit := 0; word != 0; bit++ {
				if word&1 != 0 {
					seq := w*64 + bit
					if seq >= len(s.seen) || s.seen[seq] == 0 {
						c.Lost++
					}
				}
				word >>= 1
			}
		}
		s.mu.Unlock()
	}
	return c
}

// bitset is a growable set of small integers.
type bitset []uint64

// set adds v and reports whether it was new.
func (b *bitset) set(v uint64) bool {
	w := int(v / 64)
	if w >= len(*b) {
		*b = growTo(*b, w+1)
	}
	m := uint64(1) << (v % 64)
	if (*b)[w]&m != 0 {
		return false
	}
	(*b)[w] |= m
	return true
}

func (b bitset) has(v uint64) bool {
	w := int(v / 64)
	return w < len(b) && b[w]&(1<<(v%64)) != 0
}

// growTo lengthens s to at least n elements (doubling, so appends stay
// amortised O(1)); new elements are zero.
func growTo[S ~[]E, E any](s S, n int) S {
	want := max(n, 2*len(s))
	if cap(s) < want {
		s = slices.Grow(s, want-len(s))
	}
	return s[:want]
}
