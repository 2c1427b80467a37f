package crypto

import (
	"bytes"
	"math/rand/v2"
	"reflect"
	"testing"

	"go.mau.fi/libsignal/protocol"
	"go.mau.fi/libsignal/serialize"
)

// hush's SignalMessage encoder must be byte-for-byte the library's: peers
// running the library (and hush before it had its own) parse what it
// writes, and the MAC covers the encoding.

var libSignalMessage serialize.ProtoBufSignalMessageSerializer

func randomSignalMessage(r *rand.Rand) *protocol.SignalMessageStructure {
	bs := func() []byte {
		switch r.IntN(4) {
		case 0:
			return nil
		case 1:
			return []byte{}
		}
		b := make([]byte, r.IntN(300))
		for i := range b {
			b[i] = byte(r.Uint32())
		}
		return b
	}
	m := &protocol.SignalMessageStructure{
		RatchetKey: bs(), CipherText: bs(),
		Counter: r.Uint32() >> r.IntN(32), PreviousCounter: r.Uint32() >> r.IntN(32),
	}
	switch r.IntN(3) {
	case 1:
		m.Version = 3
	case 2:
		m.Version = r.IntN(40) - 5
	}
	if r.IntN(2) == 0 {
		m.Mac = bs()
	}
	return m
}

func TestSignalMessageSerializerMatchesLibrary(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 2))
	for i := range 3000 {
		m := randomSignalMessage(r)
		want := libSignalMessage.Serialize(m)
		got := signalMessageSerializer{}.Serialize(m)
		if !bytes.Equal(got, want) {
			t.Fatalf("message %d %+v:\n got %x\nwant %x", i, m, got, want)
		}
		// A complete message (version digit, MAC) decodes to the same
		// structure with either decoder.
		m.Version, m.Mac = 3, bytes.Repeat([]byte{byte(i)}, protocol.MacLength)
		wire := libSignalMessage.Serialize(m)
		ours, err1 := signalMessageSerializer{}.Deserialize(wire)
		theirs, err2 := libSignalMessage.Deserialize(wire)
		if err1 != nil || err2 != nil || !reflect.DeepEqual(ours, theirs) {
			t.Fatalf("message %d: decoded\n %+v, %v\nwant %+v, %v", i, ours, err1, theirs, err2)
		}
	}
}

// FuzzSignalMessageSerializer: on any input both decoders accept or refuse
// together and agree on the fields; encoding what was decoded gives the
// library's encoding.
func FuzzSignalMessageSerializer(f *testing.F) {
	r := rand.New(rand.NewPCG(3, 4))
	for range 8 {
		m := randomSignalMessage(r)
		m.Version, m.Mac = 3, make([]byte, protocol.MacLength)
		f.Add(libSignalMessage.Serialize(m))
	}
	fp := newFuzzPair(f)
	for _, m := range fp.signalMsgs {
		f.Add(m)
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		ours, err1 := signalMessageSerializer{}.Deserialize(b)
		theirs, err2 := libSignalMessage.Deserialize(b)
		if (err1 == nil) != (err2 == nil) {
			t.Fatalf("ours: %v, library: %v", err1, err2)
		}
		if err1 != nil {
			return
		}
		if !reflect.DeepEqual(ours, theirs) {
			t.Fatalf("decoded %+v, library %+v", ours, theirs)
		}
		if got, want := (signalMessageSerializer{}).Serialize(ours), libSignalMessage.Serialize(theirs); !bytes.Equal(got, want) {
			t.Fatalf("re-encoded %x, library %x", got, want)
		}
	})
}
