package redisroute

import (
	"encoding/binary"
	"errors"
	"fmt"
	"math"

	"google.golang.org/protobuf/proto"

	"github.com/hushchat/hush/protocol"
	"github.com/hushchat/hush/server/queue"
	"github.com/hushchat/hush/server/routing"
)

// Node-channel messages. One PUBLISH carries a batch of bells (or of
// evictions) for one node, so a Ring to many devices costs one message per
// node, not one per device:
//
//	message = kind:1 byte, count:uvarint, count × entry
//	bell    = account, device:uvarint, server_id:uvarint, envelope
//	evict   = account, device:uvarint, session:uvarint
//	account = len:uvarint (1..protocol.MaxAccountNameLen), bytes
//	envelope = len:uvarint (0: none; else ≤ protocol.MaxFrameSize), protobuf protocol.Envelope
//
// The decoder is bounded (MaxBatch entries, MaxMessageSize bytes) and
// rejects trailing bytes; only other relay nodes can publish, but a
// corrupt or hostile message must cost one error, not a crash or a
// memory blow-up.
const (
	kindBells byte = 1
	kindEvict byte = 2

	// MaxBatch bounds the entries of one message.
	MaxBatch = 1024
	// MaxMessageSize bounds one encoded message.
	MaxMessageSize = 4 << 20
	// batchBytes is where the encoder starts a new message.
	batchBytes = 1 << 20
)

var errShort = errors.New("truncated")

func appendAccount(b []byte, a string) []byte {
	b = binary.AppendUvarint(b, uint64(len(a)))
	return append(b, a...)
}

// batch is one encoded message and the number of bells in it.
type batch struct {
	msg []byte
	n   int
}

// encodeBells encodes bells, in order, into one or more messages.
func encodeBells(bells []routing.Bell) ([]batch, error) {
	var out []batch
	var cur []byte
	n := 0
	flush := func() {
		if n == 0 {
			return
		}
		msg := append([]byte{kindBells}, binary.AppendUvarint(nil, uint64(n))...)
		out = append(out, batch{append(msg, cur...), n})
		cur, n = nil, 0
	}
	for _, b := range bells {
		var env []byte
		if b.Envelope != nil {
			var err error
			if env, err = proto.Marshal(b.Envelope); err != nil {
				return nil, fmt.Errorf("encode ephemeral envelope for %s: %w", b.Device, err)
			}
			if len(env) > protocol.MaxFrameSize {
				return nil, fmt.Errorf("ephemeral envelope for %s: %d bytes exceeds %d", b.Device, len(env), protocol.MaxFrameSize)
			}
		}
		if n == MaxBatch || (n > 0 && len(cur)+len(env) > batchBytes) {
			flush()
		}
		cur = appendAccount(cur, b.Device.Account)
		cur = binary.AppendUvarint(cur, uint64(b.Device.ID))
		cur = binary.AppendUvarint(cur, b.ServerID)
		cur = binary.AppendUvarint(cur, uint64(len(env)))
		cur = append(cur, env...)
		n++
	}
	flush()
	return out, nil
}

// eviction names a superseded session.
type eviction struct {
	Device  queue.Device
	Session uint64
}

func encodeEvictions(ev []eviction) [][]byte {
	var out [][]byte
	for len(ev) > 0 {
		k := min(len(ev), MaxBatch)
		b := append([]byte{kindEvict}, binary.AppendUvarint(nil, uint64(k))...)
		for _, e := range ev[:k] {
			b = appendAccount(b, e.Device.Account)
			b = binary.AppendUvarint(b, uint64(e.Device.ID))
			b = binary.AppendUvarint(b, e.Session)
		}
		out = append(out, b)
		ev = ev[k:]
	}
	return out
}

// message is a decoded node-channel message: bells or evictions.
type message struct {
	Bells     []routing.Bell
	Evictions []eviction
}

type reader struct{ b []byte }

func (r *reader) uvarint() (uint64, error) {
	v, n := binary.Uvarint(r.b)
	if n <= 0 {
		return 0, errShort
	}
	r.b = r.b[n:]
	return v, nil
}

func (r *reader) bytes(max int) ([]byte, error) {
	l, err := r.uvarint()
	if err != nil {
		return nil, err
	}
	if l > uint64(max) {
		return nil, fmt.Errorf("field of %d bytes exceeds %d", l, max)
	}
	if uint64(len(r.b)) < l {
		return nil, errShort
	}
	v := r.b[:l]
	r.b = r.b[l:]
	return v, nil
}

func (r *reader) device() (queue.Device, error) {
	a, err := r.bytes(protocol.MaxAccountNameLen)
	if err != nil {
		return queue.Device{}, fmt.Errorf("account: %w", err)
	}
	if len(a) == 0 {
		return queue.Device{}, errors.New("empty account")
	}
	id, err := r.uvarint()
	if err != nil {
		return queue.Device{}, fmt.Errorf("device id: %w", err)
	}
	if id > math.MaxUint32 {
		return queue.Device{}, fmt.Errorf("device id %d out of range", id)
	}
	return queue.Device{Account: string(a), ID: uint32(id)}, nil
}

// decodeMessage parses one node-channel message.
func decodeMessage(b []byte) (message, error) {
	var m message
	if len(b) > MaxMessageSize {
		return m, fmt.Errorf("routing message of %d bytes exceeds %d", len(b), MaxMessageSize)
	}
	if len(b) == 0 {
		return m, errors.New("empty routing message")
	}
	kind := b[0]
	r := reader{b[1:]}
	n, err := r.uvarint()
	if err != nil {
		return m, fmt.Errorf("routing message count: %w", err)
	}
	if n == 0 || n > MaxBatch {
		return m, fmt.Errorf("routing message with %d entries (want 1..%d)", n, MaxBatch)
	}
	switch kind {
	case kindBells:
		m.Bells = make([]routing.Bell, 0, n)
		for i := range n {
			dev, err := r.device()
			if err != nil {
				return message{}, fmt.Errorf("bell %d: %w", i, err)
			}
			id, err := r.uvarint()
			if err != nil {
				return message{}, fmt.Errorf("bell %d server id: %w", i, err)
			}
			env, err := r.bytes(protocol.MaxFrameSize)
			if err != nil {
				return message{}, fmt.Errorf("bell %d envelope: %w", i, err)
			}
			b := routing.Bell{Device: dev, ServerID: id}
			if len(env) > 0 {
				b.Envelope = new(protocol.Envelope)
				if err := proto.Unmarshal(env, b.Envelope); err != nil {
					return message{}, fmt.Errorf("bell %d envelope: %w", i, err)
				}
			}
			m.Bells = append(m.Bells, b)
		}
	case kindEvict:
		m.Evictions = make([]eviction, 0, n)
		for i := range n {
			dev, err := r.device()
			if err != nil {
				return message{}, fmt.Errorf("eviction %d: %w", i, err)
			}
			s, err := r.uvarint()
			if err != nil {
				return message{}, fmt.Errorf("eviction %d session: %w", i, err)
			}
			m.Evictions = append(m.Evictions, eviction{dev, s})
		}
	default:
		return m, fmt.Errorf("unknown routing message kind %d", kind)
	}
	if len(r.b) != 0 {
		return message{}, fmt.Errorf("routing message has %d trailing bytes", len(r.b))
	}
	return m, nil
}

// Registration values: "<session, 20 decimal digits>:<node>". The fixed
// width makes byte order equal numeric order, which the claim script uses
// to let the newer session win after an outage.
const sessionDigits = 20

func regValue(session uint64, node string) string {
	return fmt.Sprintf("%020d:%s", session, node)
}

func parseRegValue(v string) (session uint64, node string, err error) {
	if len(v) < sessionDigits+2 || v[sessionDigits] != ':' {
		return 0, "", fmt.Errorf("malformed registration %q", v)
	}
	for _, c := range v[:sessionDigits] {
		if c < '0' || c > '9' {
			return 0, "", fmt.Errorf("malformed registration %q", v)
		}
		d := uint64(c - '0')
		if session > (math.MaxUint64-d)/10 {
			return 0, "", fmt.Errorf("registration session out of range in %q", v)
		}
		session = session*10 + d
	}
	return session, v[sessionDigits+1:], nil
}
