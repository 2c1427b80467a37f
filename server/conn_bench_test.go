package server

import (
	"bufio"
	"crypto/rand"
	"encoding/base64"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/gorilla/websocket"

	"github.com/hushchat/hush/protocol"
)

// BenchmarkWriteFrames: a pump writing a burst of 200-byte frames (the
// SendAcks of one group commit, a batch of deliveries) to a client on
// loopback — by hand, several frames per write(2), against gorilla's
// WriteMessage, one write(2) per frame. ns/op is per frame.
func BenchmarkWriteFrames(b *testing.B) {
	for _, burst := range []int{1, 8, 64} {
		for _, how := range []string{"hand", "gorilla"} {
			b.Run(fmt.Sprintf("burst=%d/%s", burst, how), func(b *testing.B) {
				e := newEnv(b)
				serverSide := make(chan *websocket.Conn, 1)
				srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
					ws, err := e.relay.upgrader.Upgrade(w, r, nil)
					if err != nil {
						b.Error(err)
						return
					}
					serverSide <- ws
				}))
				defer srv.Close()
				client, _, err := websocket.DefaultDialer.Dial("ws"+strings.TrimPrefix(srv.URL, "http"), nil)
				if err != nil {
					b.Fatal(err)
				}
				defer client.Close()
				ws := <-serverSide
				defer ws.Close()
				go func() { // the client reads everything
					for {
						if _, _, err := client.NextReader(); err != nil {
							return
						}
					}
				}()
				c := &conn{r: e.relay, ws: ws, dev: dev("bob", 1)}
				frames := make([][]byte, burst)
				for i := range frames {
					frames[i] = make([]byte, 200)
				}
				b.ReportAllocs()
				b.ResetTimer()
				for i := 0; i < b.N; i += burst {
					if how == "hand" {
						if !c.writeFrames(frames, false) {
							b.Fatal("write failed")
						}
						continue
					}
					ws.SetWriteDeadline(time.Now().Add(10 * time.Second))
					for _, f := range frames {
						if err := ws.WriteMessage(websocket.BinaryMessage, f); err != nil {
							b.Fatal(err)
						}
					}
				}
			})
		}
	}
}

// BenchmarkIdleConnection: authenticated connections that have drained
// their (empty) queue and sit idle, as hush-bench idle holds them. Each
// op opens one; reported are the Go heap and goroutine stacks they hold
// after a GC, per connection — the relay's side and the minimal client
// side (a bare TCP socket after a hand-written handshake, no reader),
// which adds about 0.3 KiB. Run with e.g. -benchtime=2000x; connections
// are opened in rounds of at most 2,000 (file descriptors).
func BenchmarkIdleConnection(b *testing.B) {
	e := newEnv(b)
	addr := strings.TrimPrefix(e.srv.URL, "http://")
	const round = 2000
	var heap, stack float64
	b.ResetTimer()
	for done := 0; done < b.N; {
		n := min(round, b.N-done)
		b.StopTimer()
		before := memNow()
		b.StartTimer()
		conns := make([]net.Conn, 0, n)
		for i := range n {
			account := fmt.Sprintf("idle%06d", done+i)
			e.dir.set(account, 1)
			conns = append(conns, rawConnect(b, addr, e.token(account, 1)))
		}
		b.StopTimer()
		waitUntil2(b, func() bool { return e.relay.connCount() == n })
		after := memNow()
		heap += float64(after.heap - before.heap)
		stack += float64(after.stack - before.stack)
		for _, c := range conns {
			c.Close()
		}
		waitUntil2(b, func() bool { return e.relay.connCount() == 0 })
		done += n
		b.StartTimer()
	}
	b.StopTimer()
	b.ReportMetric(heap/float64(b.N)/1024, "heap-KiB/conn")
	b.ReportMetric(stack/float64(b.N)/1024, "stack-KiB/conn")
}

type memSample struct{ heap, stack int64 }

func memNow() memSample {
	runtime.GC()
	runtime.GC()
	var m runtime.MemStats
	runtime.ReadMemStats(&m)
	return memSample{int64(m.HeapAlloc), int64(m.StackInuse)}
}

func (r *Relay) connCount() int {
	r.hubMu.RLock()
	defer r.hubMu.RUnlock()
	return len(r.sessions)
}

func waitUntil2(b *testing.B, ok func() bool) {
	deadline := time.Now().Add(30 * time.Second)
	for !ok() {
		if time.Now().After(deadline) {
			b.Fatal("timed out")
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// rawConnect opens a WebSocket with a hand-written handshake and reads
// the relay's QueueEmpty, leaving nothing on the client side but the
// socket.
func rawConnect(b *testing.B, addr, token string) net.Conn {
	c, err := net.Dial("tcp", addr)
	if err != nil {
		b.Fatal(err)
	}
	var key [16]byte
	rand.Read(key[:])
	fmt.Fprintf(c, "GET %s HTTP/1.1\r\nHost: %s\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"+
		"Sec-WebSocket-Key: %s\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Protocol: %s\r\nAuthorization: Bearer %s\r\n\r\n",
		protocol.WSPath, addr, base64.StdEncoding.EncodeToString(key[:]), protocol.Subprotocol, token)
	br := bufio.NewReaderSize(c, 512)
	resp, err := http.ReadResponse(br, nil)
	if err != nil || resp.StatusCode != http.StatusSwitchingProtocols {
		b.Fatalf("handshake: %v %v", resp, err)
	}
	// QueueEmpty: a 2-byte header and a short payload.
	hdr := make([]byte, 2)
	if _, err := io.ReadFull(br, hdr); err != nil {
		b.Fatal(err)
	}
	if _, err := io.ReadFull(br, make([]byte, hdr[1]&0x7f)); err != nil {
		b.Fatal(err)
	}
	return c
}
