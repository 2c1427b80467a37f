package scenario

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hushchat/hush/cmd/hush-bench/internal/loadgen"
	"github.com/hushchat/hush/protocol"
)

// connectAll connects every device (concurrency dials in flight), waits
// for each one's QueueEmpty, and fails if a fresh device has a backlog.
// relay picks device i's relay; lat, if set, receives each connection's
// time from dial to QueueEmpty.
func (r *Runner) connectAll(ctx context.Context, devs []*loadgen.Device, concurrency int, relay func(i int) int, o loadgen.DialOptions, lat *loadgen.Latencies) ([]*loadgen.Conn, error) {
	conns := make([]*loadgen.Conn, len(devs))
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var (
		next    atomic.Int64
		done    atomic.Int64
		wg      sync.WaitGroup
		errOnce sync.Once
		err     error
	)
	step := max(len(devs)/10, 1000)
	for range min(concurrency, len(devs)) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				i := int(next.Add(1) - 1)
				if i >= len(devs) || ctx.Err() != nil {
					return
				}
				do := o
				do.Relay = relay(i)
				t0 := time.Now()
				c, derr := r.Env.Dial(ctx, devs[i], do)
				if derr == nil {
					var backlog []*protocol.Envelope
					backlog, derr = c.AwaitQueueEmpty(60 * time.Second)
					if derr == nil && len(backlog) > 0 {
						derr = fmt.Errorf("fresh device %s.%d has %d queued envelopes", devs[i].Account, devs[i].ID, len(backlog))
					}
					if derr != nil {
						c.Abort()
					}
				}
				if derr != nil {
					errOnce.Do(func() { err = derr; cancel() })
					return
				}
				conns[i] = c
				if lat != nil {
					lat.Add(time.Since(t0))
				}
				if k := done.Add(1); int(k)%step == 0 && int(k) < len(devs) {
					r.logf("connected %d/%d", k, len(devs))
				}
			}
		}()
	}
	wg.Wait()
	if err == nil {
		err = ctx.Err()
	}
	if err != nil {
		for _, c := range conns {
			if c != nil {
				c.Abort()
			}
		}
		return nil, err
	}
	return conns, nil
}

// savedDevice is a registered device as --accounts files keep it. The file
// holds bearer tokens of throw-away bench accounts; it is written 0600.
type savedDevice struct {
	Account string `json:"account"`
	Device  uint32 `json:"device"`
	Token   string `json:"token"`
}

// saveDevices writes devs to path.
func saveDevices(path string, devs []*loadgen.Device) error {
	out := make([]savedDevice, len(devs))
	for i, d := range devs {
		out[i] = savedDevice{Account: d.Account, Device: d.ID, Token: d.Token}
	}
	b, err := json.Marshal(out)
	if err != nil {
		return err
	}
	if err := os.WriteFile(path, b, 0o600); err != nil {
		return fmt.Errorf("save accounts: %w", err)
	}
	return nil
}

// loadDevices reads at least n devices from path. Their identity keys
// are not kept: a loaded device can connect (its token) but not log in.
func loadDevices(path string, n int) ([]*loadgen.Device, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("load accounts: %w", err)
	}
	var in []savedDevice
	if err := json.Unmarshal(b, &in); err != nil {
		return nil, fmt.Errorf("load accounts from %s: %w", path, err)
	}
	if len(in) < n {
		return nil, fmt.Errorf("load accounts: %s holds %d accounts, %d needed", path, len(in), n)
	}
	devs := make([]*loadgen.Device, n)
	for i := range n {
		if in[i].Account == "" || in[i].Token == "" {
			return nil, errors.New("load accounts: an entry lacks account or token")
		}
		devs[i] = &loadgen.Device{Account: in[i].Account, ID: in[i].Device, Token: in[i].Token}
	}
	return devs, nil
}
