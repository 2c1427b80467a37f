package scenario

import (
	"context"
	"fmt"
	"sync"
	"time"

	"github.com/hushchat/hush/cmd/hush-bench/internal/loadgen"
	"github.com/hushchat/hush/protocol"
)

// OfflineOptions configure the offline scenario.
type OfflineOptions struct {
	// Messages queued for the offline device.
	Messages int
	// Senders share the filling (each its own account and connection).
	Senders int
	Size    int
	Window  int
	// Timeout bounds the fill and the drain each.
	Timeout time.Duration
}

// OfflineResult is the offline scenario's outcome.
type OfflineResult struct {
	Header
	Messages int `json:"messages"`
	Senders  int `json:"senders"`
	Size     int `json:"size"`
	// FillS and FillPerS: queuing every message (all SendAcks back).
	FillS    float64 `json:"fill_s"`
	FillPerS float64 `json:"fill_msgs_per_s"`
	// DrainS: from dialing the device until it holds every message;
	// DrainPerS is Messages/DrainS. AckedS: until its last ack was
	// processed (the queue is empty).
	DrainS    float64 `json:"drain_s"`
	DrainPerS float64 `json:"drain_msgs_per_s"`
	AckedS    float64 `json:"drained_and_acked_s"`
	// QueueEmptyAfter: envelopes delivered before QueueEmpty (all of
	// them, for a queue filled before the connection).
	QueueEmptyAfter int `json:"queue_empty_after"`
	loadgen.Counts
	Reordered int64 `json:"reordered"`
	Leftover  int   `json:"leftover"`
}

// Offline runs the offline scenario.
func (r *Runner) Offline(ctx context.Context, o OfflineOptions) (*OfflineResult, error) {
	res := &OfflineResult{Header: r.header("offline"), Messages: o.Messages, Senders: o.Senders, Size: o.Size}
	switch {
	case o.Messages < 1 || o.Senders < 1 || o.Window < 1:
		return nil, fmt.Errorf("--messages, --senders and --window must be positive")
	case o.Size < loadgen.StampSize || o.Size > protocol.MaxPayloadSize:
		return nil, fmt.Errorf("--size %d: want %d–%d bytes", o.Size, loadgen.StampSize, protocol.MaxPayloadSize)
	}
	if o.Timeout <= 0 {
		o.Timeout = 5 * time.Minute
	}
	devs, err := r.register(ctx, "o", o.Senders+1)
	if err != nil {
		return nil, err
	}
	rcv, senders := devs[0], devs[1:]
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	conns, err := r.connectAll(ctx, senders, 16, func(i int) int { return i }, loadgen.DialOptions{}, nil)
	if err != nil {
		return nil, err
	}
	defer func() {
		for _, c := range conns {
			c.Abort()
		}
	}()

	// Fill.
	clock := loadgen.NewClock()
	ledger := loadgen.NewLedger(o.Senders)
	fe := &firstError{cancel: cancel}
	fillCtx, fillCancel := context.WithTimeout(ctx, o.Timeout)
	defer fillCancel()
	stopAbort := context.AfterFunc(fillCtx, func() {
		for _, c := range conns {
			c.Abort()
		}
	})
	var wg sync.WaitGroup
	r.logf("queuing %d messages for an offline device", o.Messages)
	start := time.Now()
	for i, c := range conns {
		n := o.Messages / o.Senders
		if i < o.Messages%o.Senders {
			n++
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := sendN(c, uint32(i), n, o.Window, o.Size, rcv, ledger, clock); err != nil {
				fe.set(err)
			}
		}()
	}
	wg.Wait()
	fill := time.Since(start)
	if !stopAbort() {
		if err := fe.get(); err != nil {
			return nil, err
		}
		return nil, fmt.Errorf("filling the queue took longer than --timeout %v", o.Timeout)
	}
	if err := fe.get(); err != nil {
		return nil, err
	}
	for _, c := range conns {
		c.Close(5 * time.Second)
	}
	conns = nil
	res.FillS = round(fill.Seconds(), 2)
	res.FillPerS = round(float64(o.Messages)/fill.Seconds(), 0)

	// Drain.
	r.logf("queued in %v; connecting the device", fill.Round(time.Millisecond))
	next := make([]uint64, o.Senders)
	var got int64
	start = time.Now()
	c, err := r.Env.Dial(ctx, rcv, loadgen.DialOptions{ReadBufferSize: 64 << 10})
	if err != nil {
		return nil, err
	}
	defer c.Abort()
	var drained time.Duration
	var nonce uint64
	queueEmpty := false
	c.SetReadDeadline(time.Now().Add(o.Timeout))
	for {
		f, err := c.Read()
		if err != nil {
			return nil, fmt.Errorf("draining: %w (got %d of %d)", err, got, o.Messages)
		}
		switch b := f.Body.(type) {
		case *protocol.Frame_Deliver:
			ids := make([]uint64, 0, len(b.Deliver.Envelopes))
			for _, env := range b.Deliver.Envelopes {
				ids = append(ids, env.ServerId)
				st, err := loadgen.ReadStamp(env.Payload)
				if err != nil || int(st.Stream) >= o.Senders || env.Sender != senders[st.Stream].Account {
					ledger.Delivered(uint32(o.Senders), 0)
					continue
				}
				if ledger.Delivered(st.Stream, st.Seq) {
					got++
					if st.Seq < next[st.Stream] {
						res.Reordered++
					}
					next[st.Stream] = st.Seq + 1
				}
				if !queueEmpty {
					res.QueueEmptyAfter++
				}
			}
			if err := c.Ack(ids); err != nil {
				return nil, fmt.Errorf("draining: ack: %w", err)
			}
			if got == int64(o.Messages) && drained == 0 {
				drained = time.Since(start)
				f, n := loadgen.PingFrame()
				nonce = n
				if err := c.Write(f); err != nil {
					return nil, err
				}
			}
		case *protocol.Frame_QueueEmpty:
			queueEmpty = true
		case *protocol.Frame_Pong:
			if nonce != 0 && b.Pong.Nonce == nonce {
				res.AckedS = round(time.Since(start).Seconds(), 3)
			}
		case *protocol.Frame_Error:
			return nil, fmt.Errorf("draining: relay error %v: %s", b.Error.Code, b.Error.Message)
		}
		if res.AckedS > 0 && queueEmpty {
			break
		}
	}
	c.Close(5 * time.Second)
	res.DrainS = round(drained.Seconds(), 3)
	res.DrainPerS = round(float64(o.Messages)/drained.Seconds(), 0)
	res.Counts = ledger.Counts()

	// The queue must now be empty.
	c2, err := r.Env.Dial(ctx, rcv, loadgen.DialOptions{})
	if err != nil {
		return nil, err
	}
	backlog, err := c2.AwaitQueueEmpty(30 * time.Second)
	c2.Close(5 * time.Second)
	if err != nil {
		return nil, err
	}
	res.Leftover = len(backlog)
	res.finish()
	return res, nil
}

// sendN sends n messages of stream from c to device to, with window Sends
// in flight, and returns once every SendAck is in (recorded in ledger).
func sendN(c *loadgen.Conn, stream uint32, n, window, size int, to *loadgen.Device, ledger *loadgen.Ledger, clock loadgen.Clock) error {
	payload, err := loadgen.NewPayload(size)
	if err != nil {
		return err
	}
	slots := make(chan struct{}, window)
	errc := make(chan error, 1)
	go func() {
		for acks := 0; acks < n; {
			f, err := c.Read()
			if err != nil {
				errc <- fmt.Errorf("sender %s: waiting for SendAcks: %w", c.Device.Account, err)
				return
			}
			switch b := f.Body.(type) {
			case *protocol.Frame_SendAck:
				s, seq, _, ok := loadgen.ParseClientID(b.SendAck.ClientId)
				if !ok || s != stream {
					errc <- fmt.Errorf("sender %s: SendAck for a message it did not send", c.Device.Account)
					return
				}
				if e := b.SendAck.Error; e != nil {
					hint := ""
					if e.Code == protocol.ErrorCode_CODE_QUEUE_FULL {
						hint = " (start the server with a larger --max-queue)"
					}
					errc <- fmt.Errorf("sender %s: send refused: %v: %s%s", c.Device.Account, e.Code, e.Message, hint)
					return
				}
				ledger.Acked(stream, uint64(seq))
				acks++
				<-slots
			case *protocol.Frame_Error:
				errc <- fmt.Errorf("sender %s: relay error %v: %s", c.Device.Account, b.Error.Code, b.Error.Message)
				return
			}
		}
		errc <- nil
	}()
	rcpt := &protocol.Recipient{Account: to.Account, Device: to.ID, Type: protocol.EnvelopeType_ENVELOPE_TYPE_SIGNAL}
	for seq := range n {
		select {
		case slots <- struct{}{}:
		case err := <-errc:
			if err == nil {
				err = fmt.Errorf("sender %s: acks ended early", c.Device.Account)
			}
			return err
		}
		now := clock.Now()
		loadgen.Stamp{Stream: stream, Seq: uint64(seq), Sent: now}.Put(payload)
		rcpt.Payload = payload
		if err := c.Write(&protocol.Frame{Body: &protocol.Frame_Send{Send: &protocol.Send{
			ClientId: loadgen.ClientID(stream, uint32(seq), now), Recipients: []*protocol.Recipient{rcpt}}}}); err != nil {
			return fmt.Errorf("sender %s: %w", c.Device.Account, err)
		}
	}
	return <-errc
}

// Rows implements Result.
func (res *OfflineResult) Rows() [][2]string {
	return [][2]string{
		{"messages queued × payload", fmt.Sprintf("%d × %d B (%d senders)", res.Messages, res.Size, res.Senders)},
		{"fill (all SendAcks)", fmt.Sprintf("%s s (%s msgs/s into one queue)", num(res.FillS), num(res.FillPerS))},
		{"drain: connect → last message", fmt.Sprintf("%s s", num(res.DrainS))},
		{"drain rate", num(res.DrainPerS) + " msgs/s"},
		{"drain + last ack processed", fmt.Sprintf("%s s", num(res.AckedS))},
		{"delivered before QueueEmpty", fmt.Sprint(res.QueueEmptyAfter)},
		{"acked / delivered", fmt.Sprintf("%d / %d", res.Acked, res.Delivered)},
		{"lost / duplicated / unexpected / reordered", fmt.Sprintf("%d / %d / %d / %d", res.Lost, res.Duplicated, res.Unexpected, res.Reordered)},
		{"still queued after the run (found by a new connection)", fmt.Sprint(res.Leftover)},
	}
}

// Err implements Result.
func (res *OfflineResult) Err() error {
	err := countsErr(res.Counts, res.Leftover)
	if err == nil && res.Reordered > 0 {
		err = fmt.Errorf("%d deliveries out of order", res.Reordered)
	}
	if err == nil && res.QueueEmptyAfter != res.Messages {
		err = fmt.Errorf("QueueEmpty came after %d of %d queued messages", res.QueueEmptyAfter, res.Messages)
	}
	return err
}
