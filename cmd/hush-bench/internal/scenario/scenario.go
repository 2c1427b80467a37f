// Package scenario holds hush-bench's load scenarios and the figures they
// report. Each scenario registers its own accounts (fresh names per run),
// drives a running hush-server (or relays plus a key server) over the real
// protocol through package loadgen, checks every message it sent, and
// returns a Result: one JSON object, or a table for people.
//
// The scenarios, and what each proves:
//
//   - throughput: N sender→receiver pairs, each sender pipelining Sends
//     (a window of them in flight) as fast as the relay acknowledges them;
//     every message is stored durably, delivered and acked. Sustained
//     messages/s over the measured window, send→deliver latency, and the
//     exact lost/duplicated counts; afterwards every receiver reconnects and
//     must find its queue empty (acks really deleted).
//   - latency: the same pairs at a fixed open-loop rate (by default half of
//     a short throughput probe); latency is measured from each message's
//     scheduled send time, so a stall is not hidden by a sender that waits
//     (no coordinated omission).
//   - idle: K authenticated connections that do nothing; the server's RSS
//     (and Go heap and stacks, from /metrics) per connection, and the time
//     to connect them all.
//   - fanout: a group of members all online; one sender sends shared
//     payloads to every other member; the time until the last member has
//     each message, and the bytes the server wrote to storage per send.
//   - offline: fill one offline device's queue, then connect it and time
//     the drain.
//   - e2e: the full client core (package client) on both sides, with real
//     Signal encryption and each client's SQLite store; messages/s and
//     latency from Send to the recipient's MessageEvent.
//   - media: the same bytes uploaded and downloaded raw and encrypted
//     (crypto's attachment cipher, streaming) through the relay's media
//     API; MB/s of both, their ratio, and the client's heap growth.
//
// Server-side figures (RSS, CPU time, bytes written) come from /proc of the
// server process when it runs on this machine (package procstat).
package scenario

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/hushchat/hush/cmd/hush-bench/internal/loadgen"
	"github.com/hushchat/hush/cmd/hush-bench/internal/procstat"
)

// Runner is what every scenario needs: the deployment and how to report
// progress.
type Runner struct {
	Env *loadgen.Env
	// ServerPID is the hush-server process on this machine (0: unknown;
	// server-side figures are then left out).
	ServerPID int
	// Progress receives progress lines (nil: none).
	Progress io.Writer
	// Workers is the number of registrations in flight (default 8).
	Workers int
	// Command is the command line, recorded in every result.
	Command string
}

func (r *Runner) logf(format string, args ...any) {
	if r.Progress != nil {
		fmt.Fprintf(r.Progress, "hush-bench: "+format+"\n", args...)
	}
}

func (r *Runner) workers() int {
	if r.Workers > 0 {
		return r.Workers
	}
	return 8
}

// register registers n accounts of a role, with progress.
func (r *Runner) register(ctx context.Context, role string, n int) ([]*loadgen.Device, error) {
	start := time.Now()
	step := max(n/10, 1000)
	devs, err := r.Env.RegisterMany(ctx, role, n, r.workers(), func(done int) {
		if done%step == 0 && done < n {
			r.logf("registered %d/%d %s accounts", done, n, role)
		}
	})
	if err != nil {
		return nil, err
	}
	if n >= 100 {
		r.logf("registered %d %s accounts in %v", n, role, time.Since(start).Round(time.Millisecond))
	}
	return devs, nil
}

// Header is what every result starts with.
type Header struct {
	Scenario string    `json:"scenario"`
	Command  string    `json:"command,omitempty"`
	Server   string    `json:"server"`
	Started  time.Time `json:"started"`
	// Seconds is the scenario's wall time, registration included.
	Seconds float64 `json:"seconds"`
	// LoadAvg is the 1-minute load average at the start and the end: the
	// machine is shared, so figures taken under load say so.
	LoadAvg [2]float64 `json:"load_avg"`
	// ServerPID is the server process the server-side figures are from (0:
	// none).
	ServerPID int `json:"server_pid,omitempty"`
	// Targets are the figures the project set itself, each met or not.
	Targets []Target `json:"targets,omitempty"`
	Notes   []string `json:"notes,omitempty"`
}

func (r *Runner) header(name string) Header {
	la, _ := procstat.LoadAvg()
	return Header{Scenario: name, Command: r.Command, Server: r.Env.Base().String(), Started: time.Now().UTC(), LoadAvg: [2]float64{la, 0}, ServerPID: r.ServerPID}
}

func (h *Header) finish() {
	h.Seconds = round(time.Since(h.Started).Seconds(), 1)
	h.LoadAvg[1], _ = procstat.LoadAvg()
}

// Target is one of issue 10's targets.
type Target struct {
	What   string  `json:"what"`
	Value  float64 `json:"value"`
	Unit   string  `json:"unit"`
	Target string  `json:"target"`
	Met    bool    `json:"met"`
}

func (h *Header) target(what string, value float64, unit, cmp string, limit float64) {
	met := false
	switch cmp {
	case ">=":
		met = value >= limit
	case "<":
		met = value < limit
	case "<=":
		met = value <= limit
	default:
		panic("scenario: bad comparison " + cmp)
	}
	sym := map[string]string{">=": "≥", "<": "<", "<=": "≤"}[cmp]
	h.Targets = append(h.Targets, Target{What: what, Value: value, Unit: unit, Target: sym + " " + num(limit) + " " + unit, Met: met})
}

// Result is a scenario's outcome.
type Result interface {
	// Head returns the common header.
	Head() *Header
	// Rows are the figures as (name, value) pairs for the table.
	Rows() [][2]string
	// Err reports a correctness failure (lost, duplicated or refused
	// messages, a corrupted file); figures of such a run are not valid.
	Err() error
}

// Head implements Result.
func (h *Header) Head() *Header { return h }

// Failure is the JSON object hush-bench prints with --json when a scenario
// could not run to the end (no figures).
type Failure struct {
	Scenario string `json:"scenario"`
	Command  string `json:"command,omitempty"`
	Error    string `json:"error"`
}

// WriteJSON writes res as one JSON object and a newline.
func WriteJSON(w io.Writer, res any) error {
	b, err := json.Marshal(res)
	if err != nil {
		return err
	}
	_, err = fmt.Fprintf(w, "%s\n", b)
	return err
}

// WriteTable writes res as an aligned table.
func WriteTable(w io.Writer, res Result) error {
	h := res.Head()
	rows := [][2]string{{"scenario", h.Scenario}, {"server", h.Server}}
	rows = append(rows, res.Rows()...)
	for _, t := range h.Targets {
		mark := "MET"
		if !t.Met {
			mark = "MISSED"
		}
		rows = append(rows, [2]string{"target: " + t.What, fmt.Sprintf("%s %s (target %s) %s", num(t.Value), t.Unit, t.Target, mark)})
	}
	rows = append(rows, [2]string{"load average (start, end)", fmt.Sprintf("%.2f, %.2f", h.LoadAvg[0], h.LoadAvg[1])},
		[2]string{"wall time", fmt.Sprintf("%.1f s", h.Seconds)})
	for _, n := range h.Notes {
		rows = append(rows, [2]string{"note", n})
	}
	if err := res.Err(); err != nil {
		rows = append(rows, [2]string{"CORRECTNESS FAILURE", err.Error()})
	}
	wide := 0
	for _, r := range rows {
		wide = max(wide, len([]rune(r[0])))
	}
	bw := bufio.NewWriter(w)
	for _, r := range rows {
		fmt.Fprintf(bw, "%-*s  %s\n", wide, r[0], r[1])
	}
	return bw.Flush()
}

// num formats a figure with at most 3 significant decimals and thousands
// separators for large values.
func num(v float64) string {
	switch {
	case v >= 1000 || v <= -1000:
		s := strconv.FormatFloat(v, 'f', 0, 64)
		neg := strings.HasPrefix(s, "-")
		s = strings.TrimPrefix(s, "-")
		var b strings.Builder
		for i, c := range s {
			if i > 0 && (len(s)-i)%3 == 0 {
				b.WriteByte(',')
			}
			b.WriteRune(c)
		}
		if neg {
			return "-" + b.String()
		}
		return b.String()
	case v >= 100 || v <= -100:
		return strconv.FormatFloat(v, 'f', 1, 64)
	case v >= 1 || v <= -1:
		return strconv.FormatFloat(v, 'f', 2, 64)
	default:
		return strconv.FormatFloat(v, 'g', 3, 64)
	}
}

func round(v float64, digits int) float64 {
	p := 1.0
	for range digits {
		p *= 10
	}
	if v < 0 {
		return -float64(int64(-v*p+0.5)) / p
	}
	return float64(int64(v*p+0.5)) / p
}

func latencyRow(name string, p loadgen.Percentiles) [2]string {
	return [2]string{name, fmt.Sprintf("p50 %s  p90 %s  p99 %s  p99.9 %s  max %s ms (n=%d)",
		num(p.P50), num(p.P90), num(p.P99), num(p.P999), num(p.Max), p.N)}
}

// serverSample is the server-side state at one moment, from /proc and
// /metrics; fields it could not read stay zero.
type serverSample struct {
	at      time.Time
	cpu     float64 // seconds
	rss     int64
	io      procstat.IO
	metrics map[string]float64
}

func (r *Runner) sampleServer(ctx context.Context, withMetrics bool) serverSample {
	s := serverSample{at: time.Now()}
	if r.ServerPID > 0 {
		s.cpu, _ = procstat.CPUTime(r.ServerPID)
		s.rss, _ = procstat.RSS(r.ServerPID)
		s.io, _ = procstat.ReadIO(r.ServerPID)
	}
	if withMetrics {
		s.metrics, _ = r.scrape(ctx)
	}
	return s
}

// scrape reads the server's /metrics (Prometheus text format) into a map
// from series (name plus labels, as written) to value.
func (r *Runner) scrape(ctx context.Context) (map[string]float64, error) {
	u := *r.Env.Base()
	u.Path = strings.TrimSuffix(u.Path, "/") + "/metrics"
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u.String(), nil)
	if err != nil {
		return nil, err
	}
	resp, err := r.Env.HTTP().Do(req)
	if err != nil {
		return nil, fmt.Errorf("scrape %s: %w", u.String(), err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("scrape %s: HTTP %d", u.String(), resp.StatusCode)
	}
	m := map[string]float64{}
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if line == "" || line[0] == '#' {
			continue
		}
		i := strings.LastIndexByte(line, ' ')
		if i < 0 {
			continue
		}
		if v, err := strconv.ParseFloat(line[i+1:], 64); err == nil {
			m[line[:i]] = v
		}
	}
	return m, sc.Err()
}

// firstError keeps the first failure of a run and cancels the run with it.
type firstError struct {
	mu     sync.Mutex
	err    error
	cancel context.CancelFunc
}

func (f *firstError) set(err error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.err == nil {
		f.err = err
		f.cancel()
	}
}

func (f *firstError) get() error {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.err
}
