package scenario

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hushchat/hush/cmd/hush-bench/internal/loadgen"
	"github.com/hushchat/hush/protocol"
)

// FanoutOptions configure the fanout scenario.
type FanoutOptions struct {
	// Members of the group, the sender included (at most
	// protocol.MaxGroupMembers).
	Members int
	// Sends: group messages, one after another; each waits until every
	// member has the previous one (plus Gap).
	Sends int
	Gap   time.Duration
	// Size of the shared (sender-key) payload.
	Size int
	// Timeout for one send to reach every member.
	Timeout time.Duration
}

// FanoutResult is the fanout scenario's outcome.
type FanoutResult struct {
	Header
	Members int `json:"members"`
	Sends   int `json:"sends"`
	Size    int `json:"size"`
	// LastMemberMs: per send, the time until the last member had it.
	LastMemberMs loadgen.Percentiles `json:"last_member_ms"`
	// MemberMs: every member's delivery time, all sends.
	MemberMs loadgen.Percentiles `json:"member_ms"`
	// SendAckMs: send → SendAck (stored for every member).
	SendAckMs loadgen.Percentiles `json:"sendack_ms"`
	loadgen.Counts
	// Reordered: deliveries that came before an earlier send.
	Reordered int64 `json:"reordered"`
	// StorageBytesPerSend: bytes the server wrote to storage per send,
	// store, delivery and every member's ack included (write_bytes of
	// /proc/PID/io); WcharPerSend: all bytes it wrote, sockets included.
	StorageBytesPerSend float64 `json:"storage_bytes_per_send,omitempty"`
	WcharPerSend        float64 `json:"wchar_bytes_per_send,omitempty"`
	ServerCPUmsPerSend  float64 `json:"server_cpu_ms_per_send,omitempty"`
}

// Fanout runs the fanout scenario.
func (r *Runner) Fanout(ctx context.Context, o FanoutOptions) (*FanoutResult, error) {
	res := &FanoutResult{Header: r.header("fanout"), Members: o.Members, Sends: o.Sends, Size: o.Size}
	switch {
	case o.Members < 2 || o.Members > protocol.MaxGroupMembers:
		return nil, fmt.Errorf("--members %d: want 2–%d", o.Members, protocol.MaxGroupMembers)
	case o.Sends < 1:
		return nil, fmt.Errorf("--sends %d: need at least 1", o.Sends)
	case o.Size < loadgen.StampSize || o.Size > protocol.MaxPayloadSize:
		return nil, fmt.Errorf("--size %d: want %d–%d bytes", o.Size, loadgen.StampSize, protocol.MaxPayloadSize)
	}
	if o.Timeout <= 0 {
		o.Timeout = 30 * time.Second
	}
	devs, err := r.register(ctx, "m", o.Members)
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	conns, err := r.connectAll(ctx, devs, 32, func(i int) int { return i }, loadgen.DialOptions{}, nil)
	if err != nil {
		return nil, err
	}
	defer context.AfterFunc(ctx, func() {
		for _, c := range conns {
			c.Abort()
		}
	})()
	defer func() {
		for _, c := range conns {
			c.Abort()
		}
	}()
	sender, members := conns[0], conns[1:]
	n := len(members)

	clock := loadgen.NewClock()
	ledger := loadgen.NewLedger(n)
	type progress struct {
		remaining atomic.Int32
		last      atomic.Int64
		done      chan struct{}
	}
	sends := make([]*progress, o.Sends)
	for i := range sends {
		sends[i] = &progress{done: make(chan struct{})}
		sends[i].remaining.Store(int32(n))
	}
	var (
		memberLat loadgen.Latencies
		reordered atomic.Int64
		wg        sync.WaitGroup
	)
	fe := &firstError{cancel: cancel}
	fail := fe.set
	pings := make([]atomic.Uint64, n)
	for i, c := range members {
		wg.Add(1)
		go func() {
			defer wg.Done()
			var local []time.Duration
			defer func() { memberLat.AddAll(local) }()
			next := uint64(0)
			for {
				f, err := c.Read()
				if err != nil {
					if ctx.Err() == nil {
						fail(fmt.Errorf("member %s: %w", c.Device.Account, err))
					}
					return
				}
				switch b := f.Body.(type) {
				case *protocol.Frame_Deliver:
					now := clock.Now()
					ids := make([]uint64, 0, len(b.Deliver.Envelopes))
					for _, env := range b.Deliver.Envelopes {
						ids = append(ids, env.ServerId)
						st, err := loadgen.ReadStamp(env.Payload)
						if err != nil || env.Sender != sender.Device.Account || env.Type != protocol.EnvelopeType_ENVELOPE_TYPE_SENDER_KEY || st.Seq >= uint64(o.Sends) {
							ledger.Delivered(uint32(n), 0) // foreign
							continue
						}
						if !ledger.Delivered(uint32(i), st.Seq) {
							continue
						}
						if st.Seq < next {
							reordered.Add(1)
						}
						next = st.Seq + 1
						d := now - st.Sent
						local = append(local, d)
						p := sends[st.Seq]
						for {
							old := p.last.Load()
							if int64(d) <= old || p.last.CompareAndSwap(old, int64(d)) {
								break
							}
						}
						if p.remaining.Add(-1) == 0 {
							close(p.done)
						}
					}
					if err := c.Ack(ids); err != nil {
						fail(fmt.Errorf("member %s: ack: %w", c.Device.Account, err))
						return
					}
				case *protocol.Frame_Pong:
					if b.Pong.Nonce == pings[i].Load() {
						return
					}
				case *protocol.Frame_Error:
					fail(fmt.Errorf("member %s: relay error %v: %s", c.Device.Account, b.Error.Code, b.Error.Message))
					return
				}
			}
		}()
	}

	payload, err := loadgen.NewPayload(o.Size)
	if err != nil {
		return nil, err
	}
	rcpts := make([]*protocol.Recipient, n)
	for i, c := range members {
		rcpts[i] = &protocol.Recipient{Account: c.Device.Account, Device: c.Device.ID}
	}
	var lastLat, ackLat []time.Duration
	before := r.sampleServer(ctx, false)
	r.logf("%d members online; sending %d group messages", n, o.Sends)
	for seq := range o.Sends {
		sent := clock.Now()
		loadgen.Stamp{Stream: 0, Seq: uint64(seq), Sent: sent}.Put(payload)
		f := &protocol.Frame{Body: &protocol.Frame_Send{Send: &protocol.Send{
			ClientId:   loadgen.ClientID(0, uint32(seq), sent),
			Recipients: rcpts,
			Payload:    payload,
			Type:       protocol.EnvelopeType_ENVELOPE_TYPE_SENDER_KEY,
		}}}
		if err := sender.Write(f); err != nil {
			fail(fmt.Errorf("sender: %w", err))
			break
		}
		sender.SetReadDeadline(time.Now().Add(o.Timeout))
		for acked := false; !acked && fe.get() == nil; {
			g, err := sender.Read()
			if err != nil {
				fail(fmt.Errorf("sender: waiting for SendAck: %w", err))
				break
			}
			if a := g.GetSendAck(); a != nil {
				acked = true
				if a.Error != nil {
					fail(fmt.Errorf("group send refused: %v: %s", a.Error.Code, a.Error.Message))
					break
				}
				ackLat = append(ackLat, clock.Now()-sent)
				for i := range n {
					ledger.Acked(uint32(i), uint64(seq))
				}
			}
		}
		select {
		case <-sends[seq].done:
			lastLat = append(lastLat, time.Duration(sends[seq].last.Load()))
		case <-time.After(o.Timeout):
			fail(fmt.Errorf("send %d: %d of %d members still lack it after %v", seq, sends[seq].remaining.Load(), n, o.Timeout))
		case <-ctx.Done():
		}
		if fe.get() != nil || ctx.Err() != nil {
			break
		}
		if o.Gap > 0 {
			time.Sleep(o.Gap)
		}
	}
	if fe.get() != nil {
		return nil, fe.get()
	}
	// Every ack processed before the I/O is read.
	for i, c := range members {
		f, nonce := loadgen.PingFrame()
		pings[i].Store(nonce)
		if err := c.Write(f); err != nil {
			fail(err)
		}
	}
	wg.Wait()
	if fe.get() != nil {
		return nil, fe.get()
	}
	after := r.sampleServer(ctx, false)
	res.LastMemberMs = loadgen.PercentilesOf(lastLat)
	res.MemberMs = memberLat.Percentiles()
	res.SendAckMs = loadgen.PercentilesOf(ackLat)
	res.Counts = ledger.Counts()
	res.Reordered = reordered.Load()
	if after.io.WriteBytes > 0 || after.io.WChar > 0 {
		res.StorageBytesPerSend = round(float64(after.io.WriteBytes-before.io.WriteBytes)/float64(o.Sends), 0)
		res.WcharPerSend = round(float64(after.io.WChar-before.io.WChar)/float64(o.Sends), 0)
		res.ServerCPUmsPerSend = round((after.cpu-before.cpu)/float64(o.Sends)*1000, 2)
	}
	res.target(fmt.Sprintf("p99 time to the last of %d members", n), res.LastMemberMs.P99, "ms", "<", TargetFanoutP99ms)
	if o.Members != protocol.MaxGroupMembers {
		res.Notes = append(res.Notes, fmt.Sprintf("the target is stated for %d members; this run has %d", protocol.MaxGroupMembers, o.Members))
	}
	for _, c := range conns {
		c.Close(5 * time.Second)
	}
	res.finish()
	return res, nil
}

// Rows implements Result.
func (res *FanoutResult) Rows() [][2]string {
	rows := [][2]string{
		{"members (sender + recipients)", fmt.Sprintf("%d (1 + %d)", res.Members, res.Members-1)},
		{"sends × shared payload", fmt.Sprintf("%d × %d B", res.Sends, res.Size)},
		latencyRow("last member has it", res.LastMemberMs),
		latencyRow("each member has it", res.MemberMs),
		latencyRow("send→SendAck (stored for all)", res.SendAckMs),
		{"acked / delivered (member × send)", fmt.Sprintf("%d / %d", res.Acked, res.Delivered)},
		{"lost / duplicated / unexpected / reordered", fmt.Sprintf("%d / %d / %d / %d", res.Lost, res.Duplicated, res.Unexpected, res.Reordered)},
	}
	if res.WcharPerSend > 0 {
		rows = append(rows,
			[2]string{"storage bytes written per send", fmt.Sprintf("%s B (%s B per member; store + deliver + acks)", num(res.StorageBytesPerSend), num(res.StorageBytesPerSend/float64(res.Members-1)))},
			[2]string{"server CPU per send", num(res.ServerCPUmsPerSend) + " ms"})
	}
	return rows
}

// Err implements Result.
func (res *FanoutResult) Err() error {
	err := countsErr(res.Counts, 0)
	if res.Reordered > 0 && err == nil {
		err = fmt.Errorf("%d deliveries out of order", res.Reordered)
	}
	return err
}
