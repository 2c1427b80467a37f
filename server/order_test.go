package server

import (
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hushchat/hush/protocol"
)

// Many concurrent senders pipeline messages to bob while bob connects and
// disconnects, so live deliveries race with drains and with Puts that
// commit out of order. On every connection bob must see strictly
// increasing server ids, and in the end every SendAcked message.
func TestOrderingUnderConcurrencyAndReconnects(t *testing.T) {
	e := newEnv(t)
	e.dir.set("bob", 1)
	const senders, perSender = 4, 400
	var wg sync.WaitGroup
	var mu sync.Mutex
	acked := map[uint64]string{}
	for s := range senders {
		name := fmt.Sprintf("sender%d", s)
		e.dir.set(name, 1)
		c := e.connect(name, 1)
		c.nextOf("QueueEmpty")
		wg.Add(1)
		go func() {
			defer wg.Done()
			// Pipeline: write everything, then read the acks.
			go func() {
				for i := range perSender {
					c.send(sendTo(newClientID(), fmt.Appendf(nil, "%s-%d", name, i), dev("bob", 1)))
				}
			}()
			for range perSender {
				f := c.nextOf("SendAck")
				ack := f.GetSendAck()
				if ack.Error != nil {
					t.Errorf("%s: %v", name, ack.Error)
					return
				}
				mu.Lock()
				acked[ack.ServerId] = name
				mu.Unlock()
			}
		}()
	}

	got := map[uint64]bool{}
	sendersDone := make(chan struct{})
	go func() { wg.Wait(); close(sendersDone) }()
	receive := func(c *client, until func() bool) {
		var last uint64
		lastSeq := map[string]int{} // per sender: its messages arrive in its send order
		for !until() {
			var f *protocol.Frame
			select {
			case f = <-c.frames:
			case <-time.After(20 * time.Millisecond):
				continue
			}
			d := f.GetDeliver()
			if d == nil {
				continue
			}
			var ids []uint64
			for _, env := range d.Envelopes {
				if env.ServerId <= last {
					t.Fatalf("out of order on one connection: %d after %d", env.ServerId, last)
				}
				last = env.ServerId
				var name string
				var seq int
				fmt.Sscanf(strings.Replace(string(env.Payload), "-", " ", 1), "%s %d", &name, &seq)
				if prev, ok := lastSeq[name]; ok && seq <= prev {
					t.Fatalf("%s's message %d arrived after its message %d", name, seq, prev)
				}
				lastSeq[name] = seq
				got[env.ServerId] = true
				ids = append(ids, env.ServerId)
			}
			// Ack only some, so reconnects redeliver the rest.
			if len(ids) > 1 {
				c.ack(ids[:len(ids)/2]...)
			}
		}
	}
	for round := 0; ; round++ {
		bob := e.connect("bob", 1)
		stop := time.Now().Add(30 * time.Millisecond)
		receive(bob, func() bool { return time.Now().After(stop) })
		bob.ws.Close()
		bob.waitClosed()
		select {
		case <-sendersDone:
		default:
			continue
		}
		if t.Failed() {
			return
		}
		// Senders finished: a final connection drains everything left.
		bob = e.connect("bob", 1)
		deadline := time.Now().Add(20 * time.Second)
		receive(bob, func() bool {
			mu.Lock()
			defer mu.Unlock()
			for id := range acked {
				if !got[id] {
					return time.Now().After(deadline)
				}
			}
			return true
		})
		break
	}
	missing := 0
	for id := range acked {
		if !got[id] {
			missing++
		}
	}
	if len(acked) != senders*perSender || missing > 0 {
		t.Fatalf("acked %d of %d, %d acked messages never delivered", len(acked), senders*perSender, missing)
	}
}
