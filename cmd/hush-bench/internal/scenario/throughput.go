package scenario

import (
	"context"
	"errors"
	"fmt"
	"runtime"
	"time"

	"github.com/hushchat/hush/cmd/hush-bench/internal/loadgen"
)

// Targets of issue 10.
const (
	TargetMsgsPerS      = 20_000 // durable messages/s, embedded store
	TargetLatencyP99ms  = 10     // at half the maximum rate
	TargetIdleKiB       = 10     // server memory per idle connection
	TargetFanoutP99ms   = 100    // last of 1,024 members
	TargetE2EMsgsPerS   = 5_000  // client core on both sides
	TargetMediaRatioPct = 80     // encrypted vs raw throughput
)

// ThroughputResult is the throughput scenario's outcome.
type ThroughputResult struct {
	Header
	Pairs  int `json:"pairs"`
	Size   int `json:"size"`
	Window int `json:"window"`
	// MeasuredS is the measured window (after the warm-up).
	MeasuredS float64 `json:"measured_s"`
	// MsgsPerS: messages delivered per second in the measured window
	// (each stored durably, delivered and acked).
	MsgsPerS float64 `json:"msgs_per_s"`
	loadgen.Counts
	// Leftover: envelopes still queued after every receiver acked all it
	// got (must be 0).
	Leftover int `json:"leftover"`
	// LatencyMs: send → delivery at the receiver.
	LatencyMs loadgen.Percentiles `json:"latency_ms"`
	// SendAckMs: send → SendAck (the durable store) at the sender.
	SendAckMs loadgen.Percentiles `json:"sendack_ms"`
	// ServerCPUus: server CPU time per message (µs) in the window, when
	// the server process is known.
	ServerCPUus float64 `json:"server_cpu_us_per_msg,omitempty"`
	// GeneratorCPUus: hush-bench's own CPU time per message (it shares
	// the machine with the server).
	GeneratorCPUus float64 `json:"generator_cpu_us_per_msg,omitempty"`
	// CoresUsed: server plus generator CPU seconds per second of the
	// window; below the machine's core count at saturation means other
	// processes took the rest.
	CoresUsed float64 `json:"cores_used,omitempty"`
}

// Throughput runs the throughput scenario.
func (r *Runner) Throughput(ctx context.Context, o PairsOptions) (*ThroughputResult, error) {
	res := &ThroughputResult{Header: r.header("throughput"), Pairs: o.Pairs, Size: o.Size, Window: o.Window}
	o.Rate = 0
	out, err := r.runPairs(ctx, o)
	if err != nil {
		return nil, err
	}
	res.fill(out)
	res.target("durable messages/s (embedded store)", round(res.MsgsPerS, 0), "msgs/s", ">=", TargetMsgsPerS)
	res.Notes = append(res.Notes, "server and load generator share this machine's CPUs")
	res.finish()
	return res, nil
}

func (res *ThroughputResult) fill(out *pairsOutcome) {
	res.MeasuredS = out.window.Seconds()
	res.MsgsPerS = round(out.msgsPerS, 0)
	res.Counts = out.counts
	res.Leftover = out.leftover
	res.LatencyMs = out.latency
	res.SendAckMs = out.sendAck
	res.ServerCPUus = round(out.serverCPUus, 1)
	res.GeneratorCPUus = round(out.genCPUus, 1)
	res.CoresUsed = round(out.cores, 2)
}

// Rows implements Result.
func (res *ThroughputResult) Rows() [][2]string {
	rows := [][2]string{
		{"pairs × window × payload", fmt.Sprintf("%d × %d × %d B", res.Pairs, res.Window, res.Size)},
		{"measured window", fmt.Sprintf("%.1f s", res.MeasuredS)},
		{"messages/s (durable, delivered, acked)", num(res.MsgsPerS)},
		{"acked / delivered", fmt.Sprintf("%d / %d", res.Acked, res.Delivered)},
		{"lost / duplicated / refused / unexpected", fmt.Sprintf("%d / %d / %d / %d", res.Lost, res.Duplicated, res.Refused, res.Unexpected)},
		{"still queued after the run (found by a new connection)", fmt.Sprint(res.Leftover)},
		latencyRow("latency send→deliver", res.LatencyMs),
		latencyRow("latency send→SendAck", res.SendAckMs),
	}
	if res.ServerCPUus > 0 {
		rows = append(rows, [2]string{"CPU per message: server / hush-bench", fmt.Sprintf("%s / %s µs", num(res.ServerCPUus), num(res.GeneratorCPUus))},
			[2]string{"cores used by server + hush-bench", fmt.Sprintf("%s of %d", num(res.CoresUsed), runtime.NumCPU())})
	}
	return rows
}

// Err implements Result.
func (res *ThroughputResult) Err() error {
	return countsErr(res.Counts, res.Leftover)
}

func countsErr(c loadgen.Counts, leftover int) error {
	err := c.Err()
	if leftover > 0 {
		err = errors.Join(err, fmt.Errorf("%d envelopes still queued after the run (stored, not delivered to the live connection)", leftover))
	}
	if c.Acked == 0 {
		err = errors.Join(err, errors.New("no message was acknowledged"))
	}
	return err
}

// LatencyOptions configure the latency scenario.
type LatencyOptions struct {
	PairsOptions
	// Rate in messages/s; 0 means RateFraction of a throughput probe.
	// RateFraction defaults to 0.5; Probe (default 5 s) is the probe's
	// measured time.
	RateFraction float64
	Probe        time.Duration
}

// LatencyResult is the latency scenario's outcome.
type LatencyResult struct {
	ThroughputResult
	// RatePerS is the offered rate; ProbeMsgsPerS the throughput probe it
	// was derived from (0 when the rate was given).
	RatePerS      float64 `json:"rate_per_s"`
	ProbeMsgsPerS float64 `json:"probe_msgs_per_s,omitempty"`
	// LateSends: messages the generator sent more than 1 ms after their
	// schedule (their latency counts from the schedule).
	LateSends int64 `json:"late_sends"`
}

// Latency runs the latency scenario.
func (r *Runner) Latency(ctx context.Context, o LatencyOptions) (*LatencyResult, error) {
	res := &LatencyResult{ThroughputResult: ThroughputResult{Header: r.header("latency"), Pairs: o.Pairs, Size: o.Size, Window: o.Window}}
	if o.Rate <= 0 {
		if o.RateFraction <= 0 {
			o.RateFraction = 0.5
		}
		if o.Probe <= 0 {
			o.Probe = 5 * time.Second
		}
		p := o.PairsOptions
		p.Rate, p.Duration, p.Warmup = 0, o.Probe, min(o.Warmup, 2*time.Second)
		r.logf("probing the maximum rate for %v", p.Duration)
		out, err := r.runPairs(ctx, p)
		if err != nil {
			return nil, fmt.Errorf("throughput probe: %w", err)
		}
		if err := countsErr(out.counts, out.leftover); err != nil {
			return nil, fmt.Errorf("throughput probe: %w", err)
		}
		res.ProbeMsgsPerS = round(out.msgsPerS, 0)
		o.Rate = round(out.msgsPerS*o.RateFraction, 0)
		r.logf("probe: %.0f msgs/s; offering %.0f msgs/s", out.msgsPerS, o.Rate)
	}
	res.RatePerS = o.Rate
	out, err := r.runPairs(ctx, o.PairsOptions)
	if err != nil {
		return nil, err
	}
	res.fill(out)
	res.LateSends = out.lateSends
	if res.ProbeMsgsPerS > 0 {
		res.target(fmt.Sprintf("p99 latency at %.0f%% of the maximum", o.RateFraction*100), res.LatencyMs.P99, "ms", "<", TargetLatencyP99ms)
	}
	res.Notes = append(res.Notes, "open-loop: latency counts from each message's scheduled send time")
	res.finish()
	return res, nil
}

// Rows implements Result.
func (res *LatencyResult) Rows() [][2]string {
	rows := [][2]string{{"offered rate", num(res.RatePerS) + " msgs/s"}}
	if res.ProbeMsgsPerS > 0 {
		rows = append(rows, [2]string{"probed maximum", num(res.ProbeMsgsPerS) + " msgs/s"})
	}
	rows = append(rows, res.ThroughputResult.Rows()...)
	rows = append(rows, [2]string{"sends behind schedule (>1 ms)", fmt.Sprint(res.LateSends)})
	return rows
}
