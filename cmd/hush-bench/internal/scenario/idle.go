package scenario

import (
	"context"
	"fmt"
	"sync"
	"time"

	"github.com/hushchat/hush/cmd/hush-bench/internal/loadgen"
	"github.com/hushchat/hush/cmd/hush-bench/internal/procstat"
)

// IdleTargetConns is the connection count issue 10's memory target is
// stated at.
const IdleTargetConns = 50_000

// IdleOptions configure the idle scenario.
type IdleOptions struct {
	// Conns is the number of idle authenticated connections.
	Conns int
	// Concurrency: dials in flight.
	Concurrency int
	// Settle: how long the connections sit idle before the memory is
	// read (the relay's first ping round included if it is longer than
	// the ping interval).
	Settle time.Duration
	// Accounts, if set, is a file of registered devices: with
	// RegisterOnly the scenario registers Conns devices, writes them there
	// and stops; without it, it connects the devices from the file instead
	// of registering. Registering first and restarting the server before
	// the measured run keeps the key server's registration garbage out of
	// the server's memory figures.
	Accounts     string
	RegisterOnly bool
}

// IdleResult is the idle scenario's outcome.
type IdleResult struct {
	Header
	Conns int `json:"conns"`
	// ConnectS: time to connect every device (WebSocket upgrade, token
	// check, attach, QueueEmpty).
	ConnectS        float64 `json:"connect_s"`
	ConnectsPerS    float64 `json:"connects_per_s"`
	ConnectP99ms    float64 `json:"connect_p99_ms"`
	ServerConnected float64 `json:"server_connections,omitempty"` // hush_connections
	// Server memory, when the server process is known: RSS before and
	// after, and per connection; Go heap-in-use plus goroutine stacks
	// (from /metrics) per connection; goroutines per connection.
	RSSBeforeMiB    float64 `json:"rss_before_mib,omitempty"`
	RSSAfterMiB     float64 `json:"rss_after_mib,omitempty"`
	RSSPerConnKiB   float64 `json:"rss_per_conn_kib,omitempty"`
	HeapPerConnKiB  float64 `json:"heap_per_conn_kib,omitempty"`
	StackPerConnKiB float64 `json:"stack_per_conn_kib,omitempty"`
	GoroutinesPerCn float64 `json:"goroutines_per_conn,omitempty"`
	// Registered: with RegisterOnly, the devices written to Accounts.
	Registered int `json:"registered,omitempty"`
}

// Idle runs the idle scenario.
func (r *Runner) Idle(ctx context.Context, o IdleOptions) (*IdleResult, error) {
	res := &IdleResult{Header: r.header("idle"), Conns: o.Conns}
	if o.Conns < 1 {
		return nil, fmt.Errorf("--conns %d: need at least 1", o.Conns)
	}
	if o.Concurrency < 1 {
		o.Concurrency = 64
	}
	if o.RegisterOnly {
		if o.Accounts == "" {
			return nil, fmt.Errorf("--register-only needs --accounts FILE")
		}
		devs, err := r.register(ctx, "i", o.Conns)
		if err != nil {
			return nil, err
		}
		if err := saveDevices(o.Accounts, devs); err != nil {
			return nil, err
		}
		res.Registered = len(devs)
		res.Notes = append(res.Notes, "registered only; run again with --accounts (after restarting the server) to measure")
		res.finish()
		return res, nil
	}

	// File descriptors: one per connection on each side.
	own, err := procstat.RaiseOpenFileLimit()
	if err == nil && own < uint64(o.Conns)+256 {
		return nil, fmt.Errorf("%d connections need %d open files here; RLIMIT_NOFILE is %d (raise the hard limit: ulimit -Hn, which needs root with CAP_SYS_RESOURCE)", o.Conns, o.Conns+256, own)
	}
	if r.ServerPID > 0 {
		if lim, err := procstat.OpenFileLimit(r.ServerPID); err == nil && lim < int64(o.Conns)+64 {
			return nil, fmt.Errorf("%d connections need %d open files in the server (pid %d), whose limit is %d: start it with a higher ulimit -n", o.Conns, o.Conns+64, r.ServerPID, lim)
		}
	}

	var devs []*loadgen.Device
	if o.Accounts != "" {
		if devs, err = loadDevices(o.Accounts, o.Conns); err != nil {
			return nil, err
		}
	} else if devs, err = r.register(ctx, "i", o.Conns); err != nil {
		return nil, err
	}

	before := r.sampleServer(ctx, true)
	start := time.Now()
	var connectLat loadgen.Latencies
	conns, err := r.connectAll(ctx, devs, o.Concurrency, func(i int) int { return i }, loadgen.DialOptions{ReadBufferSize: 512, WriteBufferSize: 512}, &connectLat)
	if err != nil {
		return nil, err
	}
	elapsed := time.Since(start)
	res.ConnectP99ms = connectLat.Percentiles().P99
	defer func() {
		for _, c := range conns {
			c.Abort()
		}
	}()
	// Each connection reads (and so answers the relay's pings) without
	// sending anything.
	var wg sync.WaitGroup
	dropped := make(chan error, 1)
	for _, c := range conns {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				if _, err := c.Read(); err != nil {
					if ctx.Err() == nil {
						select {
						case dropped <- fmt.Errorf("%s.%d dropped while idle: %w", c.Device.Account, c.Device.ID, err):
						default:
						}
					}
					return
				}
			}
		}()
	}
	r.logf("%d connections open after %v; idle for %v", len(conns), elapsed.Round(time.Millisecond), o.Settle)
	select {
	case <-time.After(o.Settle):
	case err := <-dropped:
		return nil, err
	case <-ctx.Done():
		return nil, ctx.Err()
	}
	after := r.sampleServer(ctx, true)
	select {
	case err := <-dropped:
		return nil, err
	default:
	}

	n := float64(o.Conns)
	res.ConnectS = round(elapsed.Seconds(), 2)
	res.ConnectsPerS = round(n/elapsed.Seconds(), 0)
	if before.rss > 0 && after.rss > 0 {
		res.RSSBeforeMiB = round(float64(before.rss)/(1<<20), 1)
		res.RSSAfterMiB = round(float64(after.rss)/(1<<20), 1)
		res.RSSPerConnKiB = round(float64(after.rss-before.rss)/n/1024, 2)
	}
	if before.metrics != nil && after.metrics != nil {
		per := func(name string) float64 {
			return round((after.metrics[name]-before.metrics[name])/n/1024, 2)
		}
		res.HeapPerConnKiB = per("go_memstats_heap_inuse_bytes")
		res.StackPerConnKiB = per("go_memstats_stack_inuse_bytes")
		res.GoroutinesPerCn = round((after.metrics["go_goroutines"]-before.metrics["go_goroutines"])/n, 2)
		res.ServerConnected = after.metrics["hush_connections"]
	}
	if res.RSSPerConnKiB > 0 {
		res.target(fmt.Sprintf("server RSS per idle connection at %d connections", o.Conns), res.RSSPerConnKiB, "KiB", "<=", TargetIdleKiB)
	}
	if o.Conns < IdleTargetConns {
		res.Notes = append(res.Notes, fmt.Sprintf("the target is stated at %d connections; this run holds %d", IdleTargetConns, o.Conns))
	}
	for _, c := range conns {
		c.Abort()
	}
	wg.Wait()
	res.finish()
	return res, nil
}

// Rows implements Result.
func (res *IdleResult) Rows() [][2]string {
	if res.Registered > 0 {
		return [][2]string{{"registered", fmt.Sprint(res.Registered)}}
	}
	rows := [][2]string{
		{"idle authenticated connections", fmt.Sprint(res.Conns)},
		{"time to connect all", fmt.Sprintf("%s s (%s connects/s; p99 of one %s ms)", num(res.ConnectS), num(res.ConnectsPerS), num(res.ConnectP99ms))},
	}
	if res.ServerConnected > 0 {
		rows = append(rows, [2]string{"server's hush_connections", num(res.ServerConnected)})
	}
	if res.RSSAfterMiB > 0 {
		rows = append(rows, [2]string{"server RSS before → after", fmt.Sprintf("%s → %s MiB", num(res.RSSBeforeMiB), num(res.RSSAfterMiB))},
			[2]string{"server RSS per connection", num(res.RSSPerConnKiB) + " KiB"})
	}
	if res.HeapPerConnKiB != 0 {
		rows = append(rows, [2]string{"Go heap in use / goroutine stacks per connection", num(res.HeapPerConnKiB) + " / " + num(res.StackPerConnKiB) + " KiB"},
			[2]string{"goroutines per connection", num(res.GoroutinesPerCn)})
	}
	return rows
}

// Err implements Result.
func (res *IdleResult) Err() error {
	if res.Registered == 0 && res.ServerConnected > 0 && int(res.ServerConnected) < res.Conns {
		return fmt.Errorf("the server counts %d connections of %d", int(res.ServerConnected), res.Conns)
	}
	return nil
}
