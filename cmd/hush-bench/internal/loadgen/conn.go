package loadgen

import (
	"context"
	"crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"
	"net/http"
	"sync"
	"time"

	"github.com/gorilla/websocket"

	"github.com/hushchat/hush/protocol"
)

// DialOptions tunes a WebSocket.
type DialOptions struct {
	// ReadBufferSize and WriteBufferSize of the client side (default 4 KiB
	// each; idle connections use less).
	ReadBufferSize, WriteBufferSize int
	// Relay picks the relay (index modulo the number of relays).
	Relay int
}

// Conn is one device's relay WebSocket. One goroutine may read and one
// may write at a time (gorilla's rule); Write serialises writers.
type Conn struct {
	Device *Device
	ws     *websocket.Conn
	wmu    sync.Mutex
}

// Dial connects d to the relay with its token (Authorization: Bearer).
func (e *Env) Dial(ctx context.Context, d *Device, o DialOptions) (*Conn, error) {
	if o.ReadBufferSize == 0 {
		o.ReadBufferSize = 4096
	}
	if o.WriteBufferSize == 0 {
		o.WriteBufferSize = 4096
	}
	dl := websocket.Dialer{
		NetDialContext:   e.dialTCP,
		Subprotocols:     []string{protocol.Subprotocol},
		HandshakeTimeout: 30 * time.Second,
		ReadBufferSize:   o.ReadBufferSize,
		WriteBufferSize:  o.WriteBufferSize,
	}
	h := http.Header{protocol.AuthHeader: {protocol.AuthScheme + " " + d.Token}}
	ws, resp, err := dl.DialContext(ctx, e.wsURLs[o.Relay%len(e.wsURLs)], h)
	if err != nil {
		if resp != nil {
			return nil, fmt.Errorf("connect %s.%d: %w (HTTP %d)", d.Account, d.ID, err, resp.StatusCode)
		}
		return nil, fmt.Errorf("connect %s.%d: %w", d.Account, d.ID, err)
	}
	ws.SetReadLimit(protocol.MaxFrameSize + 1024)
	return &Conn{Device: d, ws: ws}, nil
}

// Write encodes (and validates) f and sends it as one binary message.
func (c *Conn) Write(f *protocol.Frame) error {
	b, err := protocol.EncodeFrame(f)
	if err != nil {
		return err
	}
	c.wmu.Lock()
	defer c.wmu.Unlock()
	return c.ws.WriteMessage(websocket.BinaryMessage, b)
}

// Read returns the next frame. A close by the relay is returned as a
// *websocket.CloseError.
func (c *Conn) Read() (*protocol.Frame, error) {
	mt, b, err := c.ws.ReadMessage()
	if err != nil {
		return nil, err
	}
	if mt != websocket.BinaryMessage {
		return nil, fmt.Errorf("%s.%d: relay sent a non-binary message", c.Device.Account, c.Device.ID)
	}
	f, err := protocol.DecodeFrame(b)
	if err != nil {
		return nil, fmt.Errorf("%s.%d: %w", c.Device.Account, c.Device.ID, err)
	}
	return f, nil
}

// SetReadDeadline bounds the next Read.
func (c *Conn) SetReadDeadline(t time.Time) error { return c.ws.SetReadDeadline(t) }

// AwaitQueueEmpty reads frames until QueueEmpty and returns the envelopes
// delivered before it (the backlog), without acking them.
func (c *Conn) AwaitQueueEmpty(timeout time.Duration) ([]*protocol.Envelope, error) {
	c.ws.SetReadDeadline(time.Now().Add(timeout))
	defer c.ws.SetReadDeadline(time.Time{})
	var backlog []*protocol.Envelope
	for {
		f, err := c.Read()
		if err != nil {
			return backlog, fmt.Errorf("%s.%d: waiting for QueueEmpty: %w", c.Device.Account, c.Device.ID, err)
		}
		switch b := f.Body.(type) {
		case *protocol.Frame_Deliver:
			backlog = append(backlog, b.Deliver.Envelopes...)
		case *protocol.Frame_QueueEmpty:
			return backlog, nil
		case *protocol.Frame_Error:
			return backlog, fmt.Errorf("%s.%d: relay error %v: %s", c.Device.Account, c.Device.ID, b.Error.Code, b.Error.Message)
		}
	}
}

// Ack acknowledges ids, in frames of at most protocol.MaxAckIDs.
func (c *Conn) Ack(ids []uint64) error {
	for len(ids) > 0 {
		n := min(len(ids), protocol.MaxAckIDs)
		if err := c.Write(&protocol.Frame{Body: &protocol.Frame_Ack{Ack: &protocol.Ack{ServerIds: ids[:n]}}}); err != nil {
			return err
		}
		ids = ids[n:]
	}
	return nil
}

// PingFrame returns a Ping frame with a random nonce. The relay handles a
// connection's frames in order, so its Pong proves every earlier frame
// (Acks included) was processed.
func PingFrame() (*protocol.Frame, uint64) {
	var b [8]byte
	rand.Read(b[:])
	n := binary.BigEndian.Uint64(b[:])
	return &protocol.Frame{Body: &protocol.Frame_Ping{Ping: &protocol.Ping{Nonce: n}}}, n
}

// Close ends the connection with a normal close and waits (up to timeout)
// for the relay to close its side, so that every frame written before was
// handled. Only call it when no other goroutine reads.
func (c *Conn) Close(timeout time.Duration) error {
	c.wmu.Lock()
	err := c.ws.WriteControl(websocket.CloseMessage,
		websocket.FormatCloseMessage(protocol.CloseNormal, "bench done"), time.Now().Add(timeout))
	c.wmu.Unlock()
	if err == nil {
		c.ws.SetReadDeadline(time.Now().Add(timeout))
		for {
			if _, _, rerr := c.ws.NextReader(); rerr != nil {
				var ce *websocket.CloseError
				if !errors.As(rerr, &ce) {
					err = fmt.Errorf("close %s.%d: %w", c.Device.Account, c.Device.ID, rerr)
				}
				break
			}
		}
	}
	c.ws.Close()
	return err
}

// Abort closes the TCP connection at once.
func (c *Conn) Abort() { c.ws.Close() }

// ClientID makes the 16-byte client id of message seq of stream, sent at
// clock time sent: the relay echoes it in the SendAck, which thus names
// its message and when it left without a lookup. Ids are unique per
// sending device (a stream has one sender), which is all the relay's
// deduplication needs.
func ClientID(stream, seq uint32, sent time.Duration) []byte {
	b := make([]byte, protocol.ClientIDSize)
	binary.BigEndian.PutUint32(b[0:], stream)
	binary.BigEndian.PutUint32(b[4:], seq)
	binary.BigEndian.PutUint64(b[8:], uint64(sent))
	return b
}

// ParseClientID returns what ClientID put in.
func ParseClientID(b []byte) (stream, seq uint32, sent time.Duration, ok bool) {
	if len(b) != protocol.ClientIDSize {
		return 0, 0, 0, false
	}
	return binary.BigEndian.Uint32(b[0:]), binary.BigEndian.Uint32(b[4:]), time.Duration(binary.BigEndian.Uint64(b[8:])), true
}
