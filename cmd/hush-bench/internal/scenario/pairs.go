package scenario

import (
	"context"
	"errors"
	"fmt"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hushchat/hush/cmd/hush-bench/internal/loadgen"
	"github.com/hushchat/hush/cmd/hush-bench/internal/procstat"
	"github.com/hushchat/hush/protocol"
)

// PairsOptions configure the throughput and latency scenarios.
type PairsOptions struct {
	// Pairs of sender and receiver devices (each its own account).
	Pairs int
	// Size of each payload in bytes (a 1-1 Signal ciphertext of a short
	// text is ~150–250 bytes).
	Size int
	// Window: Sends one sender has in flight (sent, SendAck not yet back).
	Window int
	// Warmup is excluded from the figures; Duration is the measured time
	// after it.
	Warmup, Duration time.Duration
	// Rate is the total send rate in messages/s, spread evenly over the
	// senders (0: as fast as the relay acknowledges).
	Rate float64
	// Drain bounds the wait for the last deliveries after the senders
	// stop.
	Drain time.Duration
}

func (o *PairsOptions) check() error {
	switch {
	case o.Pairs < 1:
		return fmt.Errorf("--pairs %d: need at least 1", o.Pairs)
	case o.Size < loadgen.StampSize || o.Size > protocol.MaxPayloadSize:
		return fmt.Errorf("--size %d: want %d–%d bytes", o.Size, loadgen.StampSize, protocol.MaxPayloadSize)
	case o.Window < 1:
		return fmt.Errorf("--window %d: need at least 1", o.Window)
	case o.Duration <= 0:
		return fmt.Errorf("--duration %v: must be positive", o.Duration)
	case o.Warmup < 0 || o.Rate < 0:
		return errors.New("--warmup and --rate must not be negative")
	}
	if o.Drain <= 0 {
		o.Drain = 30 * time.Second
	}
	return nil
}

// pairsOutcome is what one run of the pairs engine measured.
type pairsOutcome struct {
	counts   loadgen.Counts
	msgsPerS float64
	latency  loadgen.Percentiles
	sendAck  loadgen.Percentiles
	// leftover: envelopes still queued for receivers after everything was
	// acked (must be 0).
	leftover int
	// serverCPUus and genCPUus: server and generator CPU time per
	// delivered message in the window.
	serverCPUus, genCPUus float64
	// cores: CPU time of server and generator per second of the window
	// (out of runtime.NumCPU(); the rest went to other processes or idle).
	cores float64
	// lateSends: sends that left more than 1 ms after their schedule
	// (rate mode: the generator could not keep up).
	lateSends int64
	window    time.Duration
}

// runPairs runs the send→store→deliver→ack loop over o.Pairs pairs.
func (r *Runner) runPairs(ctx context.Context, o PairsOptions) (*pairsOutcome, error) {
	if err := o.check(); err != nil {
		return nil, err
	}
	senders, err := r.register(ctx, "s", o.Pairs)
	if err != nil {
		return nil, err
	}
	receivers, err := r.register(ctx, "r", o.Pairs)
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()

	sconns := make([]*loadgen.Conn, o.Pairs)
	rconns := make([]*loadgen.Conn, o.Pairs)
	defer func() {
		for _, c := range append(sconns, rconns...) {
			if c != nil {
				c.Abort()
			}
		}
	}()
	nrel := r.Env.Relays()
	for i := range o.Pairs {
		// With several relays a receiver sits on the relay after its
		// sender's, so every message crosses between nodes.
		if sconns[i], err = r.Env.Dial(ctx, senders[i], loadgen.DialOptions{Relay: i}); err != nil {
			return nil, err
		}
		if rconns[i], err = r.Env.Dial(ctx, receivers[i], loadgen.DialOptions{Relay: i + min(1, nrel-1)}); err != nil {
			return nil, err
		}
		for _, c := range []*loadgen.Conn{sconns[i], rconns[i]} {
			if backlog, err := c.AwaitQueueEmpty(30 * time.Second); err != nil {
				return nil, err
			} else if len(backlog) > 0 {
				return nil, fmt.Errorf("fresh device %s.%d has %d queued envelopes", c.Device.Account, c.Device.ID, len(backlog))
			}
		}
	}

	// A failure anywhere unblocks every reader at once.
	all := append(append([]*loadgen.Conn(nil), sconns...), rconns...)
	defer context.AfterFunc(ctx, func() {
		for _, c := range all {
			c.Abort()
		}
	})()

	clock := loadgen.NewClock()
	warmEnd := o.Warmup
	end := o.Warmup + o.Duration
	ledger := loadgen.NewLedger(o.Pairs)
	var (
		lat, ackLat loadgen.Latencies
		inWindow    atomic.Int64
		late        atomic.Int64
	)
	fe := &firstError{cancel: cancel}
	fail := fe.set

	// Receivers: ack every Deliver at once; stop at the Pong of the
	// final Ping (every Ack before it is then processed).
	var rwg sync.WaitGroup
	rpings := make([]atomic.Uint64, o.Pairs)
	for i, c := range rconns {
		rwg.Add(1)
		go func() {
			defer rwg.Done()
			want := senders[i].Account
			var local []time.Duration
			defer func() { lat.AddAll(local) }()
			ids := make([]uint64, 0, protocol.MaxDeliverBatch)
			for {
				f, err := c.Read()
				if err != nil {
					if ctx.Err() == nil {
						fail(fmt.Errorf("receiver %s: %w", c.Device.Account, err))
					}
					return
				}
				switch b := f.Body.(type) {
				case *protocol.Frame_Deliver:
					now := clock.Now()
					ids = ids[:0]
					for _, env := range b.Deliver.Envelopes {
						ids = append(ids, env.ServerId)
						st, err := loadgen.ReadStamp(env.Payload)
						if err != nil || env.Sender != want || st.Stream != uint32(i) {
							ledger.Delivered(uint32(o.Pairs), 0) // foreign
							continue
						}
						if ledger.Delivered(st.Stream, st.Seq) {
							if st.Sent >= warmEnd && st.Sent < end {
								local = append(local, now-st.Sent)
							}
							if now >= warmEnd && now < end {
								inWindow.Add(1)
							}
						}
					}
					if err := c.Ack(ids); err != nil {
						fail(fmt.Errorf("receiver %s: ack: %w", c.Device.Account, err))
						return
					}
				case *protocol.Frame_Pong:
					if b.Pong.Nonce == rpings[i].Load() {
						return
					}
				case *protocol.Frame_Error:
					fail(fmt.Errorf("receiver %s: relay error %v: %s", c.Device.Account, b.Error.Code, b.Error.Message))
					return
				}
			}
		}()
	}

	// Senders: a writer paced by a window of SendAcks (and by a schedule
	// in rate mode), and an ack reader.
	var swg sync.WaitGroup
	for i, c := range sconns {
		window := make(chan struct{}, o.Window)
		stopped := make(chan struct{})
		var sent atomic.Int64
		swg.Add(2)
		go func() { // writer
			defer swg.Done()
			defer func() {
				// The ack reader may be waiting in Read with every
				// SendAck in: a Pong wakes it to notice the end.
				close(stopped)
				f, _ := loadgen.PingFrame()
				c.Write(f)
			}()
			payload, err := loadgen.NewPayload(o.Size)
			if err != nil {
				fail(err)
				return
			}
			rcpt := &protocol.Recipient{Account: receivers[i].Account, Device: receivers[i].ID, Type: protocol.EnvelopeType_ENVELOPE_TYPE_SIGNAL}
			var interval time.Duration
			var next time.Duration
			timer := time.NewTimer(time.Hour)
			defer timer.Stop()
			if o.Rate > 0 {
				interval = time.Duration(float64(time.Second) * float64(o.Pairs) / o.Rate)
				next = interval * time.Duration(i) / time.Duration(o.Pairs) // stagger
			}
			for seq := uint32(0); ; seq++ {
				sentAt := clock.Now()
				if o.Rate > 0 {
					if d := next - sentAt; d > 0 {
						timer.Reset(d)
						select {
						case <-timer.C:
						case <-ctx.Done():
							return
						}
					} else if d < -time.Millisecond {
						late.Add(1)
					}
					sentAt = next
					next += interval
				}
				if sentAt >= end {
					return
				}
				select {
				case window <- struct{}{}:
				case <-ctx.Done():
					return
				}
				if o.Rate == 0 {
					sentAt = clock.Now()
				}
				loadgen.Stamp{Stream: uint32(i), Seq: uint64(seq), Sent: sentAt}.Put(payload)
				rcpt.Payload = payload
				f := &protocol.Frame{Body: &protocol.Frame_Send{Send: &protocol.Send{
					ClientId:   loadgen.ClientID(uint32(i), seq, sentAt),
					Recipients: []*protocol.Recipient{rcpt},
				}}}
				if err := c.Write(f); err != nil {
					fail(fmt.Errorf("sender %s: %w", c.Device.Account, err))
					return
				}
				sent.Add(1)
			}
		}()
		go func() { // SendAck reader
			defer swg.Done()
			var local []time.Duration
			defer func() { ackLat.AddAll(local) }()
			var acks int64
			done := func() bool {
				select {
				case <-stopped:
					return acks == sent.Load()
				default:
					return false
				}
			}
			for !done() {
				c.SetReadDeadline(time.Now().Add(o.Drain))
				f, err := c.Read()
				if err != nil {
					if ctx.Err() == nil {
						fail(fmt.Errorf("sender %s: waiting for SendAcks: %w", c.Device.Account, err))
					}
					return
				}
				switch b := f.Body.(type) {
				case *protocol.Frame_SendAck:
					stream, seq, sentAt, ok := loadgen.ParseClientID(b.SendAck.ClientId)
					if !ok || stream != uint32(i) {
						fail(fmt.Errorf("sender %s: SendAck for a message it did not send", c.Device.Account))
						return
					}
					acks++
					if b.SendAck.Error != nil {
						ledger.Refused(stream)
						if refusalIsFatal(b.SendAck.Error) {
							fail(fmt.Errorf("sender %s: send refused: %v: %s", c.Device.Account, b.SendAck.Error.Code, b.SendAck.Error.Message))
						}
					} else {
						ledger.Acked(stream, uint64(seq))
						if sentAt >= warmEnd && sentAt < end {
							local = append(local, clock.Now()-sentAt)
						}
					}
					<-window
				case *protocol.Frame_Error:
					fail(fmt.Errorf("sender %s: relay error %v: %s", c.Device.Account, b.Error.Code, b.Error.Message))
					return
				}
			}
		}()
	}

	// Server CPU over the measured window.
	var cpuStart, cpuEnd serverSample
	var genStart, genEnd float64
	select {
	case <-time.After(time.Until(clock.Start().Add(warmEnd))):
		cpuStart = r.sampleServer(ctx, false)
		genStart, _ = procstat.CPUTime(os.Getpid())
	case <-ctx.Done():
	}
	r.logf("measuring for %v", o.Duration)
	select {
	case <-time.After(time.Until(clock.Start().Add(end))):
		cpuEnd = r.sampleServer(ctx, false)
		genEnd, _ = procstat.CPUTime(os.Getpid())
	case <-ctx.Done():
	}
	swg.Wait()
	if fe.get() != nil {
		return nil, fe.get()
	}
	// Drain: every acknowledged message must arrive.
	drainBy := time.Now().Add(o.Drain)
	for {
		d, a := ledger.DeliveredSoFar()
		if d >= a || time.Now().After(drainBy) || ctx.Err() != nil {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	// Stop the receivers after their last acks were processed.
	for i, c := range rconns {
		f, nonce := loadgen.PingFrame()
		rpings[i].Store(nonce)
		if err := c.Write(f); err != nil {
			fail(fmt.Errorf("receiver %s: ping: %w", c.Device.Account, err))
		}
	}
	rdone := make(chan struct{})
	go func() { rwg.Wait(); close(rdone) }()
	select {
	case <-rdone:
	case <-time.After(o.Drain):
		fail(errors.New("receivers did not finish within --drain"))
		<-rdone
	}
	if fe.get() != nil {
		return nil, fe.get()
	}
	for i := range o.Pairs {
		sconns[i].Close(5 * time.Second)
		rconns[i].Close(5 * time.Second)
		sconns[i], rconns[i] = nil, nil
	}

	out := &pairsOutcome{counts: ledger.Counts(), latency: lat.Percentiles(), sendAck: ackLat.Percentiles(),
		lateSends: late.Load(), window: o.Duration}
	out.msgsPerS = float64(inWindow.Load()) / o.Duration.Seconds()
	if n := float64(inWindow.Load()); n > 0 {
		if cpuEnd.cpu > 0 {
			out.serverCPUus = (cpuEnd.cpu - cpuStart.cpu) / n * 1e6
		}
		if genEnd > 0 {
			out.genCPUus = (genEnd - genStart) / n * 1e6
		}
		if cpuEnd.cpu > 0 && genEnd > 0 {
			out.cores = (cpuEnd.cpu - cpuStart.cpu + genEnd - genStart) / o.Duration.Seconds()
		}
	}

	// Every receiver's queue must now be empty: acks deleted everything.
	for i, d := range receivers {
		c, err := r.Env.Dial(ctx, d, loadgen.DialOptions{Relay: i + min(1, nrel-1)})
		if err != nil {
			return nil, err
		}
		backlog, err := c.AwaitQueueEmpty(30 * time.Second)
		c.Close(5 * time.Second)
		if err != nil {
			return nil, err
		}
		out.leftover += len(backlog)
	}
	return out, nil
}

// refusalIsFatal: refusals that mean the run is misconfigured rather than
// a transient condition the figures should merely count.
func refusalIsFatal(e *protocol.Error) bool {
	switch e.Code {
	case protocol.ErrorCode_CODE_RATE_LIMITED, protocol.ErrorCode_CODE_UNAVAILABLE:
		return false
	}
	return true
}
