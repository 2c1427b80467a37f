package protocol

import (
	"bytes"
	"errors"
	"strings"
	"testing"

	"google.golang.org/protobuf/proto"
)

func id16(b byte) []byte { return bytes.Repeat([]byte{b}, 16) }

func validSend() *Frame {
	return &Frame{Body: &Frame_Send{Send: &Send{
		ClientId: id16(1),
		Recipients: []*Recipient{
			{Account: "bob", Device: 1, Payload: []byte("ct-1"), Type: EnvelopeType_ENVELOPE_TYPE_PREKEY},
			{Account: "bob", Device: 2, Payload: []byte("ct-2"), Type: EnvelopeType_ENVELOPE_TYPE_SIGNAL},
		},
	}}}
}

func TestFrameRoundTrip(t *testing.T) {
	frames := []*Frame{
		validSend(),
		{Body: &Frame_SendAck{SendAck: &SendAck{ClientId: id16(2), ServerId: 42, ServerTimeMs: 1700000000000}}},
		{Body: &Frame_Deliver{Deliver: &Deliver{Envelopes: []*Envelope{{ServerId: 7, Sender: "alice", SenderDevice: 3, Type: EnvelopeType_ENVELOPE_TYPE_SIGNAL, Payload: []byte{1, 2, 3}}}}}},
		{Body: &Frame_Ack{Ack: &Ack{ServerIds: []uint64{1, 2, 3}}}},
		{Body: &Frame_QueueEmpty{QueueEmpty: &QueueEmpty{}}},
		{Body: &Frame_Ping{Ping: &Ping{Nonce: 9}}},
		{Body: &Frame_Error{Error: &Error{Code: ErrorCode_CODE_DEVICE_MISMATCH, Mismatches: []*DeviceMismatch{{Account: "bob", Missing: []uint32{3}, Extra: []uint32{2}}}}}},
		{Body: &Frame_Reconnect{Reconnect: &Reconnect{Reason: "shutdown", AfterMs: 500}}},
		{Body: &Frame_PresenceSubscribe{PresenceSubscribe: &PresenceSubscribe{Accounts: []string{"bob", "carol"}}}},
		{Body: &Frame_Presence{Presence: &Presence{Account: "bob", Online: true}}},
		{Body: &Frame_Heartbeat{Heartbeat: &Heartbeat{}}},
	}
	for _, f := range frames {
		b, err := EncodeFrame(f)
		if err != nil {
			t.Fatalf("encode %v: %v", f, err)
		}
		got, err := DecodeFrame(b)
		if err != nil {
			t.Fatalf("decode %v: %v", f, err)
		}
		if !proto.Equal(f, got) {
			t.Fatalf("round trip changed the frame:\n got %v\nwant %v", got, f)
		}
	}
}

func TestDecodeFrameRefusesOversize(t *testing.T) {
	_, err := DecodeFrame(make([]byte, MaxFrameSize+1))
	if !errors.Is(err, ErrFrameTooLarge) {
		t.Fatalf("want ErrFrameTooLarge, got %v", err)
	}
}

func TestValidateSend(t *testing.T) {
	cases := []struct {
		name   string
		mutate func(s *Send)
		want   string
	}{
		{"short client id", func(s *Send) { s.ClientId = s.ClientId[:15] }, "client_id must be 16 bytes"},
		{"no recipients", func(s *Send) { s.Recipients = nil }, "no recipients"},
		{"bad account", func(s *Send) { s.Recipients[0].Account = "Bob!" }, "account name"},
		{"device zero", func(s *Send) { s.Recipients[0].Device = 0 }, "device id 0"},
		{"device too big", func(s *Send) { s.Recipients[0].Device = 128 }, "device id 128"},
		{"duplicate device", func(s *Send) { s.Recipients[1].Device = 1 }, "named twice"},
		{"missing payload", func(s *Send) { s.Recipients[0].Payload = nil }, "has no payload"},
		{"missing type", func(s *Send) { s.Recipients[0].Type = 0 }, "no envelope type"},
		{"shared and own payload", func(s *Send) {
			s.Payload = []byte("group")
			s.Type = EnvelopeType_ENVELOPE_TYPE_SENDER_KEY
		}, "beside the shared one"},
		{"payload too large", func(s *Send) { s.Recipients[0].Payload = make([]byte, MaxPayloadSize+1) }, "payload size"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			f := validSend()
			tc.mutate(f.GetSend())
			err := ValidateFrame(f)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("want error containing %q, got %v", tc.want, err)
			}
			if _, err := EncodeFrame(f); err == nil {
				t.Fatal("EncodeFrame accepted an invalid frame")
			}
		})
	}
}

func TestSendRecipientLimit(t *testing.T) {
	s := &Send{ClientId: id16(1), Payload: []byte("x"), Type: EnvelopeType_ENVELOPE_TYPE_SENDER_KEY}
	for i := 0; i <= MaxRecipients; i++ {
		s.Recipients = append(s.Recipients, &Recipient{Account: "user" + itoa(i/100), Device: uint32(i%100) + 1})
	}
	err := ValidateFrame(&Frame{Body: &Frame_Send{Send: s}})
	var le *LimitError
	if !errors.As(err, &le) || le.Limit != MaxRecipients || le.Got != MaxRecipients+1 {
		t.Fatalf("want LimitError for recipients, got %v", err)
	}
	// A full 1,024-member group with shared payload fits in one frame.
	s.Recipients = s.Recipients[:1024]
	s.Payload = make([]byte, 4096)
	if _, err := EncodeFrame(&Frame{Body: &Frame_Send{Send: s}}); err != nil {
		t.Fatalf("1024-device group send refused: %v", err)
	}
}

func itoa(i int) string {
	const digits = "0123456789"
	if i == 0 {
		return "0"
	}
	var b []byte
	for ; i > 0; i /= 10 {
		b = append([]byte{digits[i%10]}, b...)
	}
	return string(b)
}

func TestAckLimits(t *testing.T) {
	if err := ValidateFrame(&Frame{Body: &Frame_Ack{Ack: &Ack{}}}); err == nil {
		t.Fatal("empty ack accepted")
	}
	ids := make([]uint64, MaxAckIDs+1)
	var le *LimitError
	if err := ValidateFrame(&Frame{Body: &Frame_Ack{Ack: &Ack{ServerIds: ids}}}); !errors.As(err, &le) {
		t.Fatalf("want LimitError, got %v", err)
	}
}

func TestAccountNames(t *testing.T) {
	good := []string{"bob", "a.b-c_d", "abcdefghijklmnopqrstuvwxyz012345"}
	bad := []string{"", "ab", "abcdefghijklmnopqrstuvwxyz0123456", "Bob", "bo b", "bob/", "ünï"}
	for _, n := range good {
		if err := ValidateAccountName(n); err != nil {
			t.Errorf("%q refused: %v", n, err)
		}
	}
	for _, n := range bad {
		if err := ValidateAccountName(n); err == nil {
			t.Errorf("%q accepted", n)
		}
	}
	if n, err := NormalizeAccountName("Alice.B"); err != nil || n != "alice.b" {
		t.Errorf("normalize: %q, %v", n, err)
	}
}

func TestDecodeFrameRejectsGarbage(t *testing.T) {
	for _, b := range [][]byte{{0xff}, {0x0a, 0x05, 0x01}, nil} {
		if _, err := DecodeFrame(b); err == nil {
			t.Errorf("decoded %x without error", b)
		}
	}
}

func TestDeepNestingRefused(t *testing.T) {
	// A Content nested in SyncSent beyond one level is refused.
	inner := &Content{MessageId: id16(1), Body: &Content_Text{Text: &Text{Body: "hi"}}}
	mid := &Content{MessageId: id16(2), Body: &Content_SyncSent{SyncSent: &SyncSent{Destination: "bob", Content: inner}}}
	outer := &Content{MessageId: id16(3), Body: &Content_SyncSent{SyncSent: &SyncSent{Destination: "bob", Content: mid}}}
	if _, err := EncodeContent(outer); err == nil {
		t.Fatal("nested sync_sent accepted")
	}
	// Hand-encoded deep nesting beyond the recursion limit fails to decode.
	b, err := proto.Marshal(outer)
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 10; i++ {
		c := &Content{MessageId: id16(4), Body: &Content_SyncSent{SyncSent: &SyncSent{Destination: "bob"}}}
		var inner Content
		if err := proto.Unmarshal(b, &inner); err != nil {
			t.Fatal(err)
		}
		c.GetSyncSent().Content = &inner
		if b, err = proto.Marshal(c); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := DecodeContent(Pad(b)); err == nil {
		t.Fatal("deeply nested content decoded")
	}
}
