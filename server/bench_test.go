package server

import (
	"encoding/binary"
	"fmt"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/gorilla/websocket"

	"github.com/hushchat/hush/protocol"
)

// BenchmarkSendStoreDeliverAck measures the relay's whole path over real
// WebSockets on loopback with the real SQLite queue (WAL, fsync per group
// commit): senders pipeline 200-byte Sends (up to 64 unacknowledged each),
// receivers get them live and ack every Deliver. Reported: msgs/s and the
// send→deliver latency percentiles. Client and relay share the machine.
func BenchmarkSendStoreDeliverAck(b *testing.B) {
	for _, pairs := range []int{1, 16, 64} {
		b.Run(fmt.Sprintf("pairs=%d", pairs), func(b *testing.B) { benchPairs(b, pairs, 200) })
	}
}

func benchPairs(b *testing.B, pairs, size int) {
	e := newEnv(b, func(c *Config, q *queueOptions) {
		c.FrameRate, c.FrameBurst = 1<<30, 1<<30
		q.MaxDepth = 1 << 30 // the receivers may fall behind; never refuse
	})
	type pair struct{ s, r *websocket.Conn }
	ps := make([]pair, pairs)
	for i := range ps {
		sn, rn := fmt.Sprintf("snd%03d", i), fmt.Sprintf("rcv%03d", i)
		e.dir.set(sn, 1)
		e.dir.set(rn, 1)
		s, _, err := e.dialToken(e.token(sn, 1), nil)
		if err != nil {
			b.Fatal(err)
		}
		r, _, err := e.dialToken(e.token(rn, 1), nil)
		if err != nil {
			b.Fatal(err)
		}
		for _, c := range []*websocket.Conn{s, r} { // wait for QueueEmpty
			if _, _, err := c.ReadMessage(); err != nil {
				b.Fatal(err)
			}
		}
		ps[i] = pair{s, r}
	}
	per := max(1, b.N/pairs)
	var mu sync.Mutex
	var lat []time.Duration
	var wg sync.WaitGroup
	var progress atomic.Int64
	b.ResetTimer()
	start := time.Now()
	for i, p := range ps {
		wg.Add(2)
		rcpt := fmt.Sprintf("rcv%03d", i)
		go func() { // sender
			defer wg.Done()
			window := make(chan struct{}, 64)
			done := make(chan struct{})
			go func() {
				defer close(done)
				for range per {
					_, buf, err := p.s.ReadMessage()
					if err != nil {
						return
					}
					if f, err := protocol.DecodeFrame(buf); err != nil || f.GetSendAck().GetError() != nil {
						b.Errorf("send failed: %v %v", err, f)
						return
					}
					<-window
				}
			}()
			payload := make([]byte, size)
			for range per {
				window <- struct{}{}
				binary.BigEndian.PutUint64(payload, uint64(time.Now().UnixNano()))
				f := &protocol.Frame{Body: &protocol.Frame_Send{Send: &protocol.Send{ClientId: newClientID(),
					Recipients: []*protocol.Recipient{{Account: rcpt, Device: 1, Payload: payload, Type: protocol.EnvelopeType_ENVELOPE_TYPE_SIGNAL}}}}}
				buf, _ := protocol.EncodeFrame(f)
				if err := p.s.WriteMessage(websocket.BinaryMessage, buf); err != nil {
					return
				}
			}
			<-done
		}()
		go func() { // receiver
			defer wg.Done()
			var my []time.Duration
			for got := 0; got < per; {
				_, buf, err := p.r.ReadMessage()
				if err != nil {
					return
				}
				f, err := protocol.DecodeFrame(buf)
				if err != nil || f.GetDeliver() == nil {
					continue
				}
				now := time.Now().UnixNano()
				ids := make([]uint64, 0, len(f.GetDeliver().Envelopes))
				for _, env := range f.GetDeliver().Envelopes {
					my = append(my, time.Duration(now-int64(binary.BigEndian.Uint64(env.Payload))))
					ids = append(ids, env.ServerId)
				}
				got += len(ids)
				progress.Add(int64(len(ids)))
				ack, _ := protocol.EncodeFrame(&protocol.Frame{Body: &protocol.Frame_Ack{Ack: &protocol.Ack{ServerIds: ids}}})
				p.r.WriteMessage(websocket.BinaryMessage, ack)
			}
			mu.Lock()
			lat = append(lat, my...)
			mu.Unlock()
		}()
	}
	finished := make(chan struct{})
	go func() { wg.Wait(); close(finished) }()
	for last := int64(-1); ; {
		select {
		case <-finished:
		case <-time.After(15 * time.Second):
			if n := progress.Load(); n != last {
				last = n
				continue
			}
			b.Fatalf("stalled after %d deliveries; connections: %s\nrelay log:\n%s", progress.Load(), e.relay.debugState(), tail(e.logs.Bytes(), 3000))
		}
		break
	}
	elapsed := time.Since(start)
	b.StopTimer()
	total := per * pairs
	b.ReportMetric(float64(total)/elapsed.Seconds(), "msgs/s")
	st := e.store.Stats()
	b.ReportMetric(float64(st.Commits)/float64(total), "fsyncs/msg")
	if len(lat) > 0 {
		slices.Sort(lat)
		pct := func(q float64) float64 { return float64(lat[int(q*float64(len(lat)-1))].Microseconds()) / 1000 }
		b.ReportMetric(pct(0.5), "p50-ms")
		b.ReportMetric(pct(0.99), "p99-ms")
	}
	for _, p := range ps {
		p.s.Close()
		p.r.Close()
	}
}

func tail(b []byte, n int) []byte {
	if len(b) > n {
		return b[len(b)-n:]
	}
	return b
}

// debugState describes every connection's delivery state (for stalls).
func (r *Relay) debugState() string {
	var out []byte
	r.hubMu.RLock()
	defer r.hubMu.RUnlock()
	for d, c := range r.hub {
		c.mu.Lock()
		states := map[pendingState]int{}
		for _, p := range c.pending {
			states[p.state]++
		}
		var head string
		if len(c.pending) > 0 {
			head = fmt.Sprintf("head{id %d state %d}", c.pending[0].id, c.pending[0].state)
		}
		out = fmt.Appendf(out, "\n%s: cursor %d pending %v %s bytes %d unacked %d draining %v fetchNeeded %v blockedAt %d waitingHorizon %v backoff %v pumping %v out %d closeReq %d",
			d, c.cursor, states, head, c.pendingBytes, len(c.unacked), c.draining, c.fetchNeeded, c.blockedAt, c.waitingHorizon, c.fetchBackoff, c.pumping, len(c.out), c.closeReq)
		c.mu.Unlock()
	}
	return string(out)
}
