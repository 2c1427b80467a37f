package redisroute

import (
	"bytes"
	"encoding/binary"
	"math"
	"strings"
	"testing"

	"google.golang.org/protobuf/proto"

	"github.com/hushchat/hush/protocol"
	"github.com/hushchat/hush/server/queue"
	"github.com/hushchat/hush/server/routing"
)

func TestBellsRoundTrip(t *testing.T) {
	env := &protocol.Envelope{ServerId: 3, Sender: "carol", SenderDevice: 2, Payload: []byte{1, 2, 3}, Ephemeral: true}
	in := []routing.Bell{
		{Device: alice1, ServerID: 1},
		{Device: queue.Device{Account: strings.Repeat("z", protocol.MaxAccountNameLen), ID: math.MaxUint32}, ServerID: math.MaxUint64},
		{Device: bob1, ServerID: 3, Envelope: env},
	}
	batches, err := encodeBells(in)
	if err != nil || len(batches) != 1 || batches[0].n != 3 {
		t.Fatalf("encodeBells = %d batches, %v", len(batches), err)
	}
	m, err := decodeMessage(batches[0].msg)
	if err != nil {
		t.Fatal(err)
	}
	if len(m.Bells) != 3 || len(m.Evictions) != 0 {
		t.Fatalf("decoded %+v", m)
	}
	for i := range in {
		if m.Bells[i].Device != in[i].Device || m.Bells[i].ServerID != in[i].ServerID {
			t.Fatalf("bell %d: %+v, want %+v", i, m.Bells[i], in[i])
		}
	}
	if m.Bells[0].Envelope != nil || !proto.Equal(m.Bells[2].Envelope, env) {
		t.Fatalf("envelopes: %v, %v", m.Bells[0].Envelope, m.Bells[2].Envelope)
	}
}

// Many bells, or large ephemeral envelopes, split into several messages
// that each stay within the bounds the decoder enforces, in order.
func TestBellsBatching(t *testing.T) {
	var in []routing.Bell
	for i := range 2*MaxBatch + 5 {
		in = append(in, routing.Bell{Device: alice1, ServerID: uint64(i)})
	}
	big := &protocol.Envelope{Payload: make([]byte, protocol.MaxPayloadSize)}
	for i := range 20 {
		in = append(in, routing.Bell{Device: bob1, ServerID: uint64(10_000 + i), Envelope: big})
	}
	batches, err := encodeBells(in)
	if err != nil {
		t.Fatal(err)
	}
	var out []routing.Bell
	for _, b := range batches {
		if len(b.msg) > MaxMessageSize {
			t.Fatalf("message of %d bytes", len(b.msg))
		}
		m, err := decodeMessage(b.msg)
		if err != nil {
			t.Fatal(err)
		}
		if len(m.Bells) != b.n {
			t.Fatalf("batch says %d bells, holds %d", b.n, len(m.Bells))
		}
		out = append(out, m.Bells...)
	}
	if len(out) != len(in) {
		t.Fatalf("%d bells out of %d", len(out), len(in))
	}
	for i := range in {
		if out[i].ServerID != in[i].ServerID {
			t.Fatalf("bell %d has id %d, want %d", i, out[i].ServerID, in[i].ServerID)
		}
	}
}

func TestEvictionsRoundTrip(t *testing.T) {
	in := make([]eviction, MaxBatch+1)
	for i := range in {
		in[i] = eviction{queue.Device{Account: "alice", ID: uint32(i % 128)}, uint64(i) << 40}
	}
	var out []eviction
	for _, msg := range encodeEvictions(in) {
		m, err := decodeMessage(msg)
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, m.Evictions...)
	}
	if len(out) != len(in) {
		t.Fatalf("%d evictions out of %d", len(out), len(in))
	}
	for i := range in {
		if out[i] != in[i] {
			t.Fatalf("eviction %d = %+v, want %+v", i, out[i], in[i])
		}
	}
}

func TestDecodeRejects(t *testing.T) {
	good, _ := encodeBells([]routing.Bell{{Device: alice1, ServerID: 1}})
	msg := good[0].msg
	long := append([]byte{kindBells, 1, byte(protocol.MaxAccountNameLen + 1)}, strings.Repeat("a", protocol.MaxAccountNameLen+1)...)
	cases := map[string][]byte{
		"empty":          {},
		"unknown kind":   append([]byte{9}, msg[1:]...),
		"zero entries":   {kindBells, 0},
		"too many":       binary.AppendUvarint([]byte{kindBells}, MaxBatch+1),
		"truncated":      msg[:len(msg)-1],
		"trailing":       append(bytes.Clone(msg), 0),
		"long account":   long,
		"empty account":  {kindEvict, 1, 0, 1, 1},
		"device too big": append([]byte{kindEvict, 1, 1, 'a'}, binary.AppendUvarint(nil, math.MaxUint32+1)...),
		"oversized":      make([]byte, MaxMessageSize+1),
		"bad envelope":   {kindBells, 1, 1, 'a', 1, 1, 2, 0xff, 0xff},
	}
	for name, b := range cases {
		if _, err := decodeMessage(b); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
}

func TestRegValue(t *testing.T) {
	for _, s := range []uint64{0, 1, 1 << 62, math.MaxUint64} {
		v := regValue(s, "node-1")
		got, node, err := parseRegValue(v)
		if err != nil || got != s || node != "node-1" {
			t.Fatalf("parse(%q) = %d, %q, %v", v, got, node, err)
		}
	}
	// Byte order is numeric order: the claim script relies on it.
	if !(regValue(99, "z")[:sessionDigits] < regValue(100, "a")[:sessionDigits]) {
		t.Fatal("registration values do not sort by session")
	}
	for _, bad := range []string{"", "123:x", "0000000000000000000a:x", "00000000000000000001x", "00000000000000000001:", "99999999999999999999:x"} {
		if _, _, err := parseRegValue(bad); err == nil {
			t.Errorf("parseRegValue(%q) accepted", bad)
		}
	}
}

func FuzzDecodeMessage(f *testing.F) {
	b, _ := encodeBells([]routing.Bell{{Device: alice1, ServerID: 1}, {Device: bob1, ServerID: 2, Envelope: &protocol.Envelope{Sender: "x", Payload: []byte("p")}}})
	f.Add(b[0].msg)
	for _, m := range encodeEvictions([]eviction{{alice1, 5}}) {
		f.Add(m)
	}
	f.Add([]byte{kindBells, 1})
	f.Fuzz(func(t *testing.T, data []byte) {
		m, err := decodeMessage(data)
		if err != nil {
			return
		}
		// What decodes re-encodes to a message that decodes the same.
		if len(m.Bells) > 0 {
			again, err := encodeBells(m.Bells)
			if err != nil {
				t.Fatal(err)
			}
			var n int
			for _, b := range again {
				m2, err := decodeMessage(b.msg)
				if err != nil {
					t.Fatalf("re-encoded bells do not decode: %v", err)
				}
				for i, bl := range m2.Bells {
					if bl.Device != m.Bells[n+i].Device || bl.ServerID != m.Bells[n+i].ServerID {
						t.Fatalf("bell %d changed in a round trip", n+i)
					}
				}
				n += len(m2.Bells)
			}
			if n != len(m.Bells) {
				t.Fatalf("%d bells after a round trip, want %d", n, len(m.Bells))
			}
		}
		for _, msg := range encodeEvictions(m.Evictions) {
			if _, err := decodeMessage(msg); err != nil {
				t.Fatalf("re-encoded evictions do not decode: %v", err)
			}
		}
	})
}

func FuzzParseRegValue(f *testing.F) {
	f.Add(regValue(12345, "node"))
	f.Add("")
	f.Fuzz(func(t *testing.T, v string) {
		s, node, err := parseRegValue(v)
		if err != nil {
			return
		}
		if regValue(s, node) != v {
			t.Fatalf("parse(%q) = %d, %q; re-encodes as %q", v, s, node, regValue(s, node))
		}
	})
}
