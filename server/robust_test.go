package server

import (
	"bytes"
	"runtime"
	"testing"
	"time"

	"github.com/gorilla/websocket"
	"google.golang.org/protobuf/proto"

	"github.com/hushchat/hush/protocol"
)

func TestMalformedFrames(t *testing.T) {
	e := newEnv(t)
	e.dir.set("alice", 1)
	e.dir.set("bob", 1)
	base := runtime.NumGoroutine()
	c := e.connect("alice", 1)
	c.nextOf("QueueEmpty")

	expectError := func(code protocol.ErrorCode) {
		t.Helper()
		f := c.nextOf("Error")
		if f.GetError().Code != code {
			t.Fatalf("error %v, want %v", f.GetError(), code)
		}
	}
	c.writeRaw(websocket.BinaryMessage, []byte{0xff, 0xff, 0xff})
	expectError(protocol.ErrorCode_CODE_BAD_FRAME)
	c.writeRaw(websocket.TextMessage, []byte("hello"))
	expectError(protocol.ErrorCode_CODE_BAD_FRAME)
	c.writeRaw(websocket.BinaryMessage, nil) // a frame without a body
	expectError(protocol.ErrorCode_CODE_BAD_FRAME)
	// A frame only the relay sends.
	b, _ := proto.Marshal(&protocol.Frame{Body: &protocol.Frame_QueueEmpty{QueueEmpty: &protocol.QueueEmpty{}}})
	c.writeRaw(websocket.BinaryMessage, b)
	expectError(protocol.ErrorCode_CODE_BAD_FRAME)

	// A Send that breaks a rule is answered by a SendAck naming its client
	// id, with the precise code.
	cid := newClientID()
	bad := &protocol.Frame{Body: &protocol.Frame_Send{Send: &protocol.Send{ClientId: cid,
		Recipients: []*protocol.Recipient{{Account: "bob", Device: 1, Payload: make([]byte, protocol.MaxPayloadSize+1), Type: protocol.EnvelopeType_ENVELOPE_TYPE_SIGNAL}}}}}
	b, _ = proto.Marshal(bad)
	c.writeRaw(websocket.BinaryMessage, b)
	ack := c.nextOf("SendAck").GetSendAck()
	if !bytes.Equal(ack.ClientId, cid) || ack.Error.GetCode() != protocol.ErrorCode_CODE_PAYLOAD_TOO_LARGE || ack.Error.Limit != protocol.MaxPayloadSize {
		t.Fatalf("SendAck = %v", ack)
	}
	many := &protocol.Send{ClientId: cid}
	for i := range protocol.MaxRecipients + 1 {
		many.Recipients = append(many.Recipients, &protocol.Recipient{Account: "bob", Device: uint32(i%127 + 1)})
	}
	b, _ = proto.Marshal(&protocol.Frame{Body: &protocol.Frame_Send{Send: many}})
	c.writeRaw(websocket.BinaryMessage, b)
	if ack := c.nextOf("SendAck").GetSendAck(); ack.Error.GetCode() != protocol.ErrorCode_CODE_TOO_MANY_RECIPIENTS || ack.Error.Limit != protocol.MaxRecipients {
		t.Fatalf("SendAck = %v", ack)
	}
	// The connection still works.
	if ack := c.sendAndAck(sendTo(newClientID(), []byte("ok"), dev("bob", 1))); ack.Error != nil {
		t.Fatal(ack.Error)
	}
	c.ws.Close()
	c.waitClosed()
	checkGoroutines(t, base)
}

func TestOversizedFrame(t *testing.T) {
	e := newEnv(t)
	e.dir.set("alice", 1)
	base := runtime.NumGoroutine()
	c := e.connect("alice", 1)
	c.nextOf("QueueEmpty")
	c.writeRaw(websocket.BinaryMessage, make([]byte, protocol.MaxFrameSize+1))
	f := c.nextOf("Error")
	if f.GetError().Code != protocol.ErrorCode_CODE_FRAME_TOO_LARGE || f.GetError().Limit != protocol.MaxFrameSize {
		t.Fatalf("error = %v", f.GetError())
	}
	if code := c.waitClosed(); code != protocol.CloseTooBig {
		t.Fatalf("closed with %d, want %d", code, protocol.CloseTooBig)
	}
	checkGoroutines(t, base)
}

func TestBadFrameFloodCloses(t *testing.T) {
	e := newEnv(t, func(c *Config, _ *queueOptions) { c.MaxBadFrames = 20 })
	e.dir.set("alice", 1)
	base := runtime.NumGoroutine()
	c := e.connect("alice", 1)
	c.nextOf("QueueEmpty")
	for range 1000 {
		if c.writeRaw(websocket.BinaryMessage, []byte{0xff}) != nil {
			break
		}
	}
	if code := c.waitClosed(); code != protocol.CloseProtocolViolation {
		t.Fatalf("closed with %d, want %d", code, protocol.CloseProtocolViolation)
	}
	checkGoroutines(t, base)
}

// A client that floods pings and never reads is cut off with
// CloseSlowReader; the relay's memory for it is bounded by MaxOutFrames.
func TestSlowReaderDisconnected(t *testing.T) {
	e := newEnv(t, func(c *Config, _ *queueOptions) { c.MaxOutFrames = 64; c.FrameRate = 100_000; c.FrameBurst = 100_000 })
	e.dir.set("alice", 1)
	base := runtime.NumGoroutine()
	ws, _, err := e.dialToken(e.token("alice", 1), nil)
	if err != nil {
		t.Fatal(err)
	}
	// Never read: shrink our receive window so pongs back up quickly.
	if tc, ok := ws.NetConn().(interface{ SetReadBuffer(int) error }); ok {
		tc.SetReadBuffer(4096)
	}
	ping, _ := protocol.EncodeFrame(&protocol.Frame{Body: &protocol.Frame_Ping{Ping: &protocol.Ping{Nonce: 1}}})
	deadline := time.Now().Add(20 * time.Second)
	closed := false
	for time.Now().Before(deadline) {
		ws.SetWriteDeadline(time.Now().Add(time.Second))
		if err := ws.WriteMessage(websocket.BinaryMessage, ping); err != nil {
			closed = true
			break
		}
	}
	if !closed {
		t.Fatal("relay kept a non-reading client for 20 s")
	}
	ws.Close()
	checkGoroutines(t, base)
	// The relay counted it as a slow-reader close, not as a client error.
	waitFor(t, func() bool { return counter(t, e, "hush_disconnects_total", "slow reader") == 1 })
}
