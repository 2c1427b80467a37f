package redispresence

import (
	"encoding/binary"
	"errors"
	"fmt"

	"github.com/hushchat/hush/protocol"
	"github.com/hushchat/hush/server/presence"
)

// Event messages on the presence channel:
//
//	message = version:1 byte (1), origin:8 bytes, count:uvarint (1..maxEvents), count × event
//	event   = subject, viewer       (each: len:uvarint 0..MaxAccountNameLen, bytes)
//
// origin is the publishing tracker's random id: a tracker has already
// delivered its own events locally and skips them when they come back.
// The decoder is bounded and rejects trailing bytes.
const (
	wireVersion = 1
	originLen   = 8
	maxEvents   = 1024
)

func encodeEvents(origin [originLen]byte, evs []presence.Event) [][]byte {
	var out [][]byte
	for len(evs) > 0 {
		k := min(len(evs), maxEvents)
		b := append([]byte{wireVersion}, origin[:]...)
		b = binary.AppendUvarint(b, uint64(k))
		for _, e := range evs[:k] {
			b = binary.AppendUvarint(b, uint64(len(e.Subject)))
			b = append(b, e.Subject...)
			b = binary.AppendUvarint(b, uint64(len(e.Viewer)))
			b = append(b, e.Viewer...)
		}
		out = append(out, b)
		evs = evs[k:]
	}
	return out
}

var errTruncated = errors.New("truncated")

func decodeEvents(b []byte) (origin [originLen]byte, evs []presence.Event, err error) {
	if len(b) < 1+originLen {
		return origin, nil, fmt.Errorf("presence message of %d bytes: %w", len(b), errTruncated)
	}
	if b[0] != wireVersion {
		return origin, nil, fmt.Errorf("presence message version %d, want %d", b[0], wireVersion)
	}
	copy(origin[:], b[1:1+originLen])
	b = b[1+originLen:]
	n, k := binary.Uvarint(b)
	if k <= 0 {
		return origin, nil, fmt.Errorf("presence message count: %w", errTruncated)
	}
	b = b[k:]
	if n == 0 || n > maxEvents {
		return origin, nil, fmt.Errorf("presence message with %d events (want 1..%d)", n, maxEvents)
	}
	account := func() (string, error) {
		l, k := binary.Uvarint(b)
		if k <= 0 {
			return "", errTruncated
		}
		if l > protocol.MaxAccountNameLen {
			return "", fmt.Errorf("account of %d bytes exceeds %d", l, protocol.MaxAccountNameLen)
		}
		b = b[k:]
		if uint64(len(b)) < l {
			return "", errTruncated
		}
		s := string(b[:l])
		b = b[l:]
		return s, nil
	}
	evs = make([]presence.Event, 0, n)
	for i := range n {
		s, err := account()
		if err != nil {
			return origin, nil, fmt.Errorf("presence event %d subject: %w", i, err)
		}
		v, err := account()
		if err != nil {
			return origin, nil, fmt.Errorf("presence event %d viewer: %w", i, err)
		}
		if s == "" && v == "" {
			return origin, nil, fmt.Errorf("presence event %d names neither subject nor viewer", i)
		}
		evs = append(evs, presence.Event{Subject: s, Viewer: v})
	}
	if len(b) != 0 {
		return origin, nil, fmt.Errorf("presence message has %d trailing bytes", len(b))
	}
	return origin, evs, nil
}
