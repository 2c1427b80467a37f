package protocol

import (
	"bytes"
	"errors"
	"testing"

	"google.golang.org/protobuf/proto"
)

func TestPadding(t *testing.T) {
	for _, n := range []int{0, 1, 158, 159, 160, 161, 1000} {
		in := bytes.Repeat([]byte{0x80}, n) // worst case: payload ends in the marker byte
		p := Pad(in)
		if len(p)%PaddingBlock != 0 || len(p) <= n {
			t.Fatalf("Pad(%d bytes) = %d bytes, want a multiple of %d above %d", n, len(p), PaddingBlock, n)
		}
		out, err := Unpad(p)
		if err != nil || !bytes.Equal(out, in) {
			t.Fatalf("Unpad(Pad(%d bytes)) = %d bytes, %v", n, len(out), err)
		}
	}
	for _, bad := range [][]byte{nil, {0, 0, 0}, {1, 2, 3}, {0x80, 0x01}} {
		if _, err := Unpad(bad); !errors.Is(err, ErrBadPadding) {
			t.Errorf("Unpad(%x) = %v, want ErrBadPadding", bad, err)
		}
	}
}

func TestPaddingHidesLength(t *testing.T) {
	a, _ := EncodeContent(&Content{MessageId: id16(1), Body: &Content_Text{Text: &Text{Body: "hi"}}})
	b, _ := EncodeContent(&Content{MessageId: id16(1), Body: &Content_Text{Text: &Text{Body: "hello there, how are you"}}})
	if len(a) != len(b) {
		t.Fatalf("short texts padded to different sizes: %d and %d", len(a), len(b))
	}
}

func TestContentRoundTrip(t *testing.T) {
	contents := []*Content{
		{MessageId: id16(1), Counter: 1, SentAtMs: 1, Body: &Content_Text{Text: &Text{Body: "hello"}},
			Quote: &Quote{MessageId: id16(9), Author: "bob", Text: "hi"}},
		{MessageId: id16(2), GroupId: id16(7), Body: &Content_Attachment{Attachment: &AttachmentPointer{
			ObjectKey: "obj", Key: make([]byte, 64), Digest: make([]byte, 32), Size: 10, FileName: "a.png"}}},
		{MessageId: id16(3), Body: &Content_Receipt{Receipt: &Receipt{Type: Receipt_TYPE_READ, MessageIds: [][]byte{id16(1), id16(2)}}}},
		{MessageId: id16(4), Body: &Content_Typing{Typing: &Typing{Started: true}}},
		{MessageId: id16(5), GroupId: id16(7), Body: &Content_GroupUpdate{GroupUpdate: &GroupUpdate{
			GroupId: id16(7), Revision: 2, Name: "friends", Members: []*GroupMember{{Account: "alice", Admin: true}, {Account: "bob"}},
			Actor: "alice", Action: GroupUpdate_ACTION_ADD, Targets: []string{"bob"}}}},
		{MessageId: id16(6), Body: &Content_SenderKeyDistribution{SenderKeyDistribution: &SenderKeyDistribution{GroupId: id16(7), Distribution: []byte{1}}}},
		{MessageId: id16(7), Body: &Content_RetryRequest{RetryRequest: &RetryRequest{ServerId: 5}}},
		{MessageId: id16(8), Body: &Content_SyncSent{SyncSent: &SyncSent{Destination: "bob",
			Content: &Content{MessageId: id16(1), Body: &Content_Text{Text: &Text{Body: "x"}}}}}},
	}
	for _, c := range contents {
		b, err := EncodeContent(c)
		if err != nil {
			t.Fatalf("encode %v: %v", c, err)
		}
		got, err := DecodeContent(b)
		if err != nil {
			t.Fatalf("decode %v: %v", c, err)
		}
		if !proto.Equal(got, c) {
			t.Fatalf("round trip changed content:\n got %v\nwant %v", got, c)
		}
	}
}

func TestContentValidation(t *testing.T) {
	bad := map[string]*Content{
		"no id":          {Body: &Content_Text{Text: &Text{Body: "x"}}},
		"no body":        {MessageId: id16(1)},
		"short group id": {MessageId: id16(1), GroupId: []byte{1}, Body: &Content_Text{Text: &Text{}}},
		"text too long":  {MessageId: id16(1), Body: &Content_Text{Text: &Text{Body: string(make([]byte, MaxTextLen+1))}}},
		"attachment key": {MessageId: id16(1), Body: &Content_Attachment{Attachment: &AttachmentPointer{ObjectKey: "o", Key: []byte{1}, Digest: make([]byte, 32)}}},
		"receipt no ids": {MessageId: id16(1), Body: &Content_Receipt{Receipt: &Receipt{Type: Receipt_TYPE_DELIVERED}}},
		"group rev 0":    {MessageId: id16(1), Body: &Content_GroupUpdate{GroupUpdate: &GroupUpdate{GroupId: id16(1)}}},
		"dup member": {MessageId: id16(1), Body: &Content_GroupUpdate{GroupUpdate: &GroupUpdate{GroupId: id16(1), Revision: 1,
			Members: []*GroupMember{{Account: "bob"}, {Account: "bob"}}}}},
		"retry no id": {MessageId: id16(1), Body: &Content_RetryRequest{RetryRequest: &RetryRequest{}}},
	}
	for name, c := range bad {
		if _, err := EncodeContent(c); !errors.Is(err, ErrInvalid) {
			var le *LimitError
			if !errors.As(err, &le) {
				t.Errorf("%s: want ErrInvalid or LimitError, got %v", name, err)
			}
		}
	}
}
