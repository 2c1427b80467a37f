package scenario

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hushchat/hush/client"
	"github.com/hushchat/hush/cmd/hush-bench/internal/loadgen"
	"github.com/hushchat/hush/cmd/hush-bench/internal/procstat"
)

// E2EOptions configure the e2e scenario.
type E2EOptions struct {
	// Pairs of clients (each a full client core with its own profile).
	Pairs int
	// Messages each sender sends.
	Messages int
	// Window: messages of one pair sent and not yet received; the sender
	// waits beyond it, so latency measures the pipeline, not a backlog.
	Window int
	// Home holds the profiles (default: a temporary directory, removed
	// afterwards).
	Home string
	// Timeout bounds the whole exchange.
	Timeout time.Duration
}

// E2EResult is the e2e scenario's outcome.
type E2EResult struct {
	Header
	Pairs    int `json:"pairs"`
	Messages int `json:"messages_per_pair"`
	Window   int `json:"window"`
	// MsgsPerS: messages received (decrypted and stored by the recipient's
	// client) per second, over the whole run.
	MsgsPerS float64 `json:"msgs_per_s"`
	loadgen.Counts
	// LatencyMs: Send called → MessageEvent at the recipient.
	LatencyMs loadgen.Percentiles `json:"latency_ms"`
	// ServerCPUus: the server's share of CPU per message.
	ServerCPUus float64 `json:"server_cpu_us_per_msg,omitempty"`
	// ClientCPUus: this process's CPU per message: both clients (crypto,
	// SQLite, protocol) of every pair.
	ClientCPUus float64 `json:"client_cpu_us_per_msg,omitempty"`
}

// E2E runs the e2e scenario.
func (r *Runner) E2E(ctx context.Context, o E2EOptions) (*E2EResult, error) {
	res := &E2EResult{Header: r.header("e2e"), Pairs: o.Pairs, Messages: o.Messages, Window: o.Window}
	if o.Pairs < 1 || o.Messages < 1 || o.Window < 1 {
		return nil, errors.New("--pairs, --messages and --window must be positive")
	}
	if o.Timeout <= 0 {
		o.Timeout = 5 * time.Minute
	}
	home := o.Home
	if home == "" {
		dir, err := os.MkdirTemp("", "hush-bench-e2e-")
		if err != nil {
			return nil, err
		}
		defer os.RemoveAll(dir)
		home = dir
	}
	ctx, cancel := context.WithTimeout(ctx, o.Timeout)
	defer cancel()

	open := func(name string) (*client.Client, error) {
		c, err := client.Open(ctx, client.Config{
			Home:        filepath.Join(home, name),
			Logger:      slog.New(slog.DiscardHandler),
			HTTPClient:  r.Env.HTTP(),
			EventBuffer: 4096,
		})
		if err != nil {
			return nil, err
		}
		if err := c.Register(ctx, r.Env.Base().String(), name); err != nil {
			c.Close()
			return nil, err
		}
		return c, nil
	}
	senders := make([]*client.Client, o.Pairs)
	receivers := make([]*client.Client, o.Pairs)
	defer func() {
		for _, c := range append(senders, receivers...) {
			if c != nil {
				c.Close()
			}
		}
	}()
	names := make([][2]string, o.Pairs)
	for i := range o.Pairs {
		names[i] = [2]string{r.Env.Name("es"), r.Env.Name("er")}
		var err error
		if senders[i], err = open(names[i][0]); err != nil {
			return nil, err
		}
		if receivers[i], err = open(names[i][1]); err != nil {
			return nil, err
		}
	}
	for _, c := range append(senders, receivers...) {
		if err := c.WaitSynced(ctx); err != nil {
			return nil, fmt.Errorf("wait for the relay: %w", err)
		}
	}

	// Events: receivers record messages; senders' events are drained so
	// nothing waits on a full channel.
	clock := loadgen.NewClock()
	ledger := loadgen.NewLedger(o.Pairs)
	var lat loadgen.Latencies
	var lastArrival atomic.Int64
	var warm sync.WaitGroup
	warm.Add(o.Pairs)
	windows := make([]chan struct{}, o.Pairs)
	fe := &firstError{cancel: cancel}
	var wg sync.WaitGroup
	for i := range o.Pairs {
		windows[i] = make(chan struct{}, o.Window)
		wg.Add(2)
		go func() {
			defer wg.Done()
			for range senders[i].Events() {
			}
		}()
		go func() {
			defer wg.Done()
			warmed := false
			for ev := range receivers[i].Events() {
				m, ok := ev.(*client.MessageEvent)
				if !ok || m.Message.Outgoing {
					continue
				}
				if m.Message.Text == "warm-up" && !warmed {
					warmed = true
					warm.Done()
					continue
				}
				now := clock.Now()
				seq, sent, err := parseE2EText(m.Message.Text)
				if err != nil || m.Message.Sender != names[i][0] {
					ledger.Delivered(uint32(o.Pairs), 0) // foreign
					continue
				}
				if ledger.Delivered(uint32(i), seq) {
					lat.Add(now - sent)
					lastArrival.Store(int64(now))
					select {
					case <-windows[i]:
					default:
					}
				}
			}
		}()
	}
	// Warm-up: the first message of each pair sets up the session (X3DH
	// with a prekey bundle) and its receipt the way back.
	for i := range o.Pairs {
		if _, err := senders[i].Send(ctx, names[i][1], "warm-up"); err != nil {
			return nil, fmt.Errorf("warm-up send: %w", err)
		}
	}
	warmDone := make(chan struct{})
	go func() { warm.Wait(); close(warmDone) }()
	select {
	case <-warmDone:
	case <-ctx.Done():
		return nil, fmt.Errorf("warm-up messages did not arrive: %w", ctx.Err())
	}
	time.Sleep(500 * time.Millisecond) // let the warm-up receipts settle

	r.logf("%d client pairs ready; sending %d messages each", o.Pairs, o.Messages)
	before := r.sampleServer(ctx, false)
	selfBefore, _ := procstat.CPUTime(os.Getpid())
	start := clock.Now()
	var swg sync.WaitGroup
	for i := range o.Pairs {
		swg.Add(1)
		go func() {
			defer swg.Done()
			for seq := range o.Messages {
				select {
				case windows[i] <- struct{}{}:
				case <-ctx.Done():
					return
				}
				sent := clock.Now()
				if _, err := senders[i].Send(ctx, names[i][1], formatE2EText(uint64(seq), sent)); err != nil {
					fe.set(fmt.Errorf("send: %w", err))
					return
				}
				ledger.Acked(uint32(i), uint64(seq))
			}
		}()
	}
	swg.Wait()
	total := int64(o.Pairs * o.Messages)
	for {
		d, _ := ledger.DeliveredSoFar()
		if d >= total || ctx.Err() != nil {
			break
		}
		time.Sleep(10 * time.Millisecond)
	}
	if err := fe.get(); err != nil {
		return nil, err
	}
	elapsed := time.Duration(lastArrival.Load()) - start
	after := r.sampleServer(ctx, false)
	selfAfter, _ := procstat.CPUTime(os.Getpid())
	res.Counts = ledger.Counts()
	res.LatencyMs = lat.Percentiles()
	if elapsed > 0 {
		res.MsgsPerS = round(float64(res.Delivered)/elapsed.Seconds(), 0)
	}
	if res.Delivered > 0 {
		if after.cpu > 0 {
			res.ServerCPUus = round((after.cpu-before.cpu)/float64(res.Delivered)*1e6, 1)
		}
		if selfAfter > 0 {
			res.ClientCPUus = round((selfAfter-selfBefore)/float64(res.Delivered)*1e6, 1)
		}
	}
	res.target("end-to-end messages/s (client core both sides)", res.MsgsPerS, "msgs/s", ">=", TargetE2EMsgsPerS)
	res.Notes = append(res.Notes, "clients, relay and key server share this machine's CPUs; each client stores every message in its SQLite profile and sends delivery receipts")
	cancel()
	for _, c := range append(senders, receivers...) {
		c.Close()
	}
	wg.Wait()
	res.finish()
	return res, nil
}

func formatE2EText(seq uint64, sent time.Duration) string {
	return "hush-bench " + strconv.FormatUint(seq, 10) + " " + strconv.FormatInt(int64(sent), 10)
}

func parseE2EText(s string) (uint64, time.Duration, error) {
	f := strings.Fields(s)
	if len(f) != 3 || f[0] != "hush-bench" {
		return 0, 0, errors.New("not a hush-bench message")
	}
	seq, err1 := strconv.ParseUint(f[1], 10, 64)
	sent, err2 := strconv.ParseInt(f[2], 10, 64)
	if err := errors.Join(err1, err2); err != nil {
		return 0, 0, err
	}
	return seq, time.Duration(sent), nil
}

// Rows implements Result.
func (res *E2EResult) Rows() [][2]string {
	rows := [][2]string{
		{"client pairs × messages (window)", fmt.Sprintf("%d × %d (%d)", res.Pairs, res.Messages, res.Window)},
		{"messages/s (encrypted, relayed, decrypted, stored)", num(res.MsgsPerS)},
		{"acked / delivered", fmt.Sprintf("%d / %d", res.Acked, res.Delivered)},
		{"lost / duplicated / unexpected", fmt.Sprintf("%d / %d / %d", res.Lost, res.Duplicated, res.Unexpected)},
		latencyRow("latency Send → MessageEvent", res.LatencyMs),
	}
	if res.ClientCPUus > 0 {
		rows = append(rows, [2]string{"CPU per message: clients / server", fmt.Sprintf("%s / %s µs", num(res.ClientCPUus), num(res.ServerCPUus))})
	}
	return rows
}

// Err implements Result.
func (res *E2EResult) Err() error { return countsErr(res.Counts, 0) }
