package server

import (
	"bytes"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/gorilla/websocket"
)

// writeFrames writes frames by hand; a standard client must read every one
// intact, whatever its header form (7-bit, 16-bit, 64-bit length), whether
// it shares a write with others, fills the pooled buffer exactly or
// exceeds it, and the ping that follows them.
func TestHandWrittenFramesReadIntact(t *testing.T) {
	e := newEnv(t)
	bufSize := e.relay.cfg.WriteBufferSize
	sizes := []int{0, 1, 125, 126, 127, 200, 65535, 65536, 70000,
		bufSize - maxFrameHeader - 1, bufSize - maxFrameHeader, bufSize - maxFrameHeader + 1, bufSize, 3, 4}
	var frames [][]byte
	for i, n := range sizes {
		f := bytes.Repeat([]byte{byte(i + 1)}, n)
		if n > 0 {
			f[0], f[n-1] = 0xAA, 0x55
		}
		frames = append(frames, f)
	}

	serverSide := make(chan *websocket.Conn, 1)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		ws, err := e.relay.upgrader.Upgrade(w, r, nil)
		if err != nil {
			t.Error(err)
			return
		}
		serverSide <- ws
	}))
	defer srv.Close()
	client, _, err := websocket.DefaultDialer.Dial("ws"+strings.TrimPrefix(srv.URL, "http"), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer client.Close()
	ws := <-serverSide
	defer ws.Close()
	c := &conn{r: e.relay, ws: ws, dev: dev("bob", 1)}

	done := make(chan bool, 1)
	go func() { done <- c.writeFrames(frames, true) && c.writeFrames(nil, true) }()
	var pings atomic.Int32
	client.SetPingHandler(func(string) error { pings.Add(1); return nil })
	client.SetReadDeadline(time.Now().Add(10 * time.Second))
	for i, want := range frames {
		mt, got, err := client.ReadMessage()
		if err != nil {
			t.Fatalf("frame %d (%d bytes): %v", i, len(want), err)
		}
		if mt != websocket.BinaryMessage || !bytes.Equal(got, want) {
			t.Fatalf("frame %d: type %d, %d bytes; want binary, %d bytes as written", i, mt, len(got), len(want))
		}
	}
	if !<-done {
		t.Fatal("writeFrames failed")
	}
	// The pings are control frames: the reader handles them while waiting
	// for the next message.
	go func() {
		time.Sleep(100 * time.Millisecond)
		c.writeFrames([][]byte{[]byte("last")}, false)
	}()
	if _, got, err := client.ReadMessage(); err != nil || string(got) != "last" {
		t.Fatalf("after the pings: %q, %v", got, err)
	}
	if n := pings.Load(); n != 2 {
		t.Fatalf("client saw %d pings, want 2", n)
	}
}

func TestFrameHeaderForms(t *testing.T) {
	for _, c := range []struct {
		n    int
		want string
	}{
		{0, "82 00"},
		{125, "82 7d"},
		{126, "82 7e 00 7e"},
		{65535, "82 7e ff ff"},
		{65536, "82 7f 00 00 00 00 00 01 00 00"},
	} {
		got := fmt.Sprintf("% x", appendFrameHeader(nil, websocket.BinaryMessage, c.n))
		if got != c.want {
			t.Errorf("header for %d bytes = %s, want %s", c.n, got, c.want)
		}
	}
}
