package protocol

import (
	"testing"

	"google.golang.org/protobuf/proto"
)

// FuzzDecodeFrame: any input yields a frame or an error, never a panic, and a
// frame that decodes re-encodes to something that decodes to the same frame.
func FuzzDecodeFrame(f *testing.F) {
	for _, fr := range []*Frame{
		validSend(),
		{Body: &Frame_Ack{Ack: &Ack{ServerIds: []uint64{1, 2}}}},
		{Body: &Frame_Deliver{Deliver: &Deliver{Envelopes: []*Envelope{{ServerId: 1, Sender: "bob", SenderDevice: 1, Type: EnvelopeType_ENVELOPE_TYPE_SIGNAL, Payload: []byte("x")}}}}},
		{Body: &Frame_PresenceSubscribe{PresenceSubscribe: &PresenceSubscribe{Accounts: []string{"bob"}}}},
		{Body: &Frame_Error{Error: &Error{Code: ErrorCode_CODE_QUEUE_FULL, Limit: 10}}},
	} {
		b, err := proto.Marshal(fr)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
	}
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, b []byte) {
		fr, err := DecodeFrame(b)
		if err != nil {
			return
		}
		again, err := EncodeFrame(fr)
		if err != nil {
			t.Fatalf("decoded frame does not re-encode: %v", err)
		}
		fr2, err := DecodeFrame(again)
		if err != nil {
			t.Fatalf("re-encoded frame does not decode: %v", err)
		}
		if !proto.Equal(fr, fr2) {
			t.Fatalf("frame changed on re-encode")
		}
	})
}

// FuzzDecodeContent covers the decrypted-content path: padding and parsing.
func FuzzDecodeContent(f *testing.F) {
	c := &Content{MessageId: id16(1), Body: &Content_Text{Text: &Text{Body: "hello"}}}
	b, err := EncodeContent(c)
	if err != nil {
		f.Fatal(err)
	}
	f.Add(b)
	raw, _ := proto.Marshal(&Content{MessageId: id16(2), Body: &Content_SyncSent{SyncSent: &SyncSent{Destination: "bob", Content: c}}})
	f.Add(Pad(raw))
	f.Add([]byte{0x80})
	f.Fuzz(func(t *testing.T, b []byte) {
		c, err := DecodeContent(b)
		if err != nil {
			return
		}
		again, err := EncodeContent(c)
		if err != nil {
			t.Fatalf("decoded content does not re-encode: %v", err)
		}
		if _, err := DecodeContent(again); err != nil {
			t.Fatalf("re-encoded content does not decode: %v", err)
		}
	})
}
