// Command hush-bench is hush's load generator: it drives a running
// hush-server (or hush-relay nodes and a key server) on this machine over
// the real protocol, registers its own accounts, checks every message it
// sends, and prints the figures as a table or, with --json, one JSON
// object.
//
//	hush-bench SCENARIO [flags]
//
// Scenarios: throughput, latency, idle, fanout, offline, e2e, media (see
// package scenario). This file only parses flags; the scenarios live in
// internal/scenario and the protocol side in internal/loadgen.
package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"path/filepath"
	"runtime/pprof"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/hushchat/hush/cmd/hush-bench/internal/loadgen"
	"github.com/hushchat/hush/cmd/hush-bench/internal/procstat"
	"github.com/hushchat/hush/cmd/hush-bench/internal/scenario"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	code, err := run(ctx, os.Args[1:], os.Stdout, os.Stderr)
	if err != nil && !errors.Is(err, flag.ErrHelp) {
		fmt.Fprintln(os.Stderr, "hush-bench:", err)
	}
	os.Exit(code)
}

const usage = `Usage: hush-bench SCENARIO [flags]

Drives a hush-server on this machine's loopback over the real protocol and
reports figures. Every message is checked: lost and duplicated are exact.
Exit status: 0 ok, 1 a correctness failure (lost, duplicated, refused or
corrupted data), 2 bad usage or a run that could not complete.

Scenarios:
  throughput  N pairs send as fast as the relay acknowledges (durable)
  latency     the same pairs at a fixed rate (default: half a probed maximum)
  idle        K authenticated idle connections: server memory per connection
  fanout      a group of M members all online, one sender: time to the last
  offline     queue N messages for an offline device, then time the drain
  e2e         the full client core with real encryption on both sides
  media       encrypted vs raw upload+download through the media API

The server needs limits raised for load (hush-server flags):
  --anon-rate 100000000   registrations come from one machine
  --max-queue 200000      offline queues 100,000 messages for one device
and, for idle, an open-file limit above the connection count.

Run 'hush-bench SCENARIO --help' for a scenario's flags.

  hush-bench report [flags] RESULT.json...
renders --json results as the "## hush-bench" section of docs/benchmarks.md
(scripts/bench, which make bench runs, does all of this).
`

// common flags of every scenario.
type common struct {
	server, keyserver, relays string
	json                      bool
	sourceIPs, serverPID      int
	workers                   int
	quiet                     bool
	cpuProfile                string
}

func (c *common) register(fs *flag.FlagSet) {
	fs.StringVar(&c.server, "server", "http://127.0.0.1:8080", "hush-server base URL (loopback only)")
	fs.StringVar(&c.keyserver, "keyserver", "", "key server base URL if not --server (hush-relay deployments)")
	fs.StringVar(&c.relays, "relay", "", "comma-separated relay base URLs to spread devices over (default --server);\nwith several, each message's sender and recipient sit on different relays")
	fs.BoolVar(&c.json, "json", false, "print one JSON object instead of a table")
	fs.IntVar(&c.sourceIPs, "source-ips", loadgen.DefaultSourceIPs, "spread connections over this many source addresses 127.0.0.2 upwards")
	fs.IntVar(&c.serverPID, "server-pid", 0, "server process id for RSS, CPU and I/O figures (default: the process listening on the --server port, if readable; -1: none)")
	fs.IntVar(&c.workers, "workers", 8, "registrations in flight")
	fs.BoolVar(&c.quiet, "quiet", false, "no progress lines on stderr")
	fs.StringVar(&c.cpuProfile, "cpuprofile", "", "write a CPU profile of hush-bench itself (e.g. the e2e clients) to this file")
}

func run(ctx context.Context, args []string, stdout, stderr io.Writer) (int, error) {
	if len(args) == 0 || args[0] == "-h" || args[0] == "--help" || args[0] == "help" {
		fmt.Fprint(stderr, usage)
		if len(args) == 0 {
			return 2, errors.New("no scenario given")
		}
		return 0, flag.ErrHelp
	}
	name := args[0]
	if name == "report" {
		return report(args[1:], stdout, stderr)
	}
	fs := flag.NewFlagSet("hush-bench "+name, flag.ContinueOnError)
	fs.SetOutput(stderr)
	var c common
	c.register(fs)
	runScenario, ok := scenarios[name]
	if !ok {
		fmt.Fprint(stderr, usage)
		return 2, fmt.Errorf("unknown scenario %q", name)
	}
	exec := runScenario(fs)
	if err := fs.Parse(args[1:]); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0, err
		}
		return 2, err
	}
	if fs.NArg() > 0 {
		return 2, fmt.Errorf("unexpected arguments %q", fs.Args())
	}
	if _, err := procstat.RaiseOpenFileLimit(); err != nil {
		fmt.Fprintln(stderr, "hush-bench: warning:", err)
	}
	var relays []string
	if c.relays != "" {
		relays = strings.Split(c.relays, ",")
	}
	env, err := loadgen.New(loadgen.Config{Server: c.server, KeyServer: c.keyserver, Relays: relays, SourceIPs: c.sourceIPs})
	if err != nil {
		return 2, err
	}
	r := &scenario.Runner{Env: env, ServerPID: c.serverPID, Workers: c.workers, Command: "hush-bench " + strings.Join(args, " ")}
	if !c.quiet {
		r.Progress = stderr
	}
	if r.ServerPID == 0 {
		if port, err := strconv.Atoi(env.Base().Port()); err == nil {
			if pid, err := procstat.ListenerPID(port); err == nil {
				r.ServerPID = pid
			} else if !c.quiet {
				fmt.Fprintln(stderr, "hush-bench: no server-side figures:", err)
			}
		}
	} else if r.ServerPID < 0 {
		r.ServerPID = 0
	}
	if c.cpuProfile != "" {
		f, err := os.Create(c.cpuProfile)
		if err != nil {
			return 2, err
		}
		defer f.Close()
		if err := pprof.StartCPUProfile(f); err != nil {
			return 2, err
		}
		defer pprof.StopCPUProfile()
	}
	res, err := exec(ctx, r)
	if err != nil {
		err = fmt.Errorf("%s: %w", name, err)
		if c.json {
			scenario.WriteJSON(stdout, scenario.Failure{Scenario: name, Command: r.Command, Error: err.Error()})
		}
		return 2, err
	}
	if c.json {
		err = scenario.WriteJSON(stdout, res)
	} else {
		err = scenario.WriteTable(stdout, res)
	}
	if err != nil {
		return 2, err
	}
	if err := res.Err(); err != nil {
		return 1, fmt.Errorf("%s: correctness failure: %w", name, err)
	}
	return 0, nil
}

// scenarios register their flags and return the function that runs them.
var scenarios = map[string]func(fs *flag.FlagSet) func(context.Context, *scenario.Runner) (scenario.Result, error){
	"throughput": func(fs *flag.FlagSet) func(context.Context, *scenario.Runner) (scenario.Result, error) {
		o := pairsFlags(fs, 50, 10*time.Second)
		return func(ctx context.Context, r *scenario.Runner) (scenario.Result, error) { return r.Throughput(ctx, *o) }
	},
	"latency": func(fs *flag.FlagSet) func(context.Context, *scenario.Runner) (scenario.Result, error) {
		o := &scenario.LatencyOptions{}
		o.PairsOptions = *pairsFlags(fs, 50, 10*time.Second)
		p := &o.PairsOptions
		fs.Float64Var(&p.Rate, "rate", 0, "total messages/s (0: --rate-fraction of a throughput probe)")
		fs.Float64Var(&o.RateFraction, "rate-fraction", 0.5, "fraction of the probed maximum to offer when --rate is 0")
		fs.DurationVar(&o.Probe, "probe", 5*time.Second, "measured time of the throughput probe")
		return func(ctx context.Context, r *scenario.Runner) (scenario.Result, error) {
			o.PairsOptions = *p
			return r.Latency(ctx, *o)
		}
	},
	"idle": func(fs *flag.FlagSet) func(context.Context, *scenario.Runner) (scenario.Result, error) {
		o := &scenario.IdleOptions{}
		fs.IntVar(&o.Conns, "conns", 10_000, "idle authenticated connections")
		fs.IntVar(&o.Concurrency, "concurrency", 64, "dials in flight")
		fs.DurationVar(&o.Settle, "settle", 10*time.Second, "idle time before the server's memory is read")
		fs.StringVar(&o.Accounts, "accounts", "", "file of registered devices to connect (written by --register-only; holds bench tokens, mode 0600)")
		fs.BoolVar(&o.RegisterOnly, "register-only", false, "register --conns devices into --accounts and stop (restart the server, then measure)")
		return func(ctx context.Context, r *scenario.Runner) (scenario.Result, error) { return r.Idle(ctx, *o) }
	},
	"fanout": func(fs *flag.FlagSet) func(context.Context, *scenario.Runner) (scenario.Result, error) {
		o := &scenario.FanoutOptions{}
		fs.IntVar(&o.Members, "members", 1024, "group members, the sender included")
		fs.IntVar(&o.Sends, "sends", 200, "group messages, each after the previous reached every member")
		fs.DurationVar(&o.Gap, "gap", 0, "pause between sends")
		fs.IntVar(&o.Size, "size", 200, "shared payload bytes")
		fs.DurationVar(&o.Timeout, "timeout", 30*time.Second, "longest wait for one send to reach every member")
		return func(ctx context.Context, r *scenario.Runner) (scenario.Result, error) { return r.Fanout(ctx, *o) }
	},
	"offline": func(fs *flag.FlagSet) func(context.Context, *scenario.Runner) (scenario.Result, error) {
		o := &scenario.OfflineOptions{}
		fs.IntVar(&o.Messages, "messages", 100_000, "messages queued for the offline device (the server's --max-queue must allow them)")
		fs.IntVar(&o.Senders, "senders", 8, "sending devices filling the queue")
		fs.IntVar(&o.Size, "size", 200, "payload bytes per message")
		fs.IntVar(&o.Window, "window", 64, "Sends in flight per sender")
		fs.DurationVar(&o.Timeout, "timeout", 5*time.Minute, "longest fill and longest drain")
		return func(ctx context.Context, r *scenario.Runner) (scenario.Result, error) { return r.Offline(ctx, *o) }
	},
	"e2e": func(fs *flag.FlagSet) func(context.Context, *scenario.Runner) (scenario.Result, error) {
		o := &scenario.E2EOptions{}
		fs.IntVar(&o.Pairs, "pairs", 4, "client pairs (each client a full client core with its own profile)")
		fs.IntVar(&o.Messages, "messages", 2000, "messages per sender")
		fs.IntVar(&o.Window, "window", 64, "messages per pair sent and not yet received")
		fs.StringVar(&o.Home, "home", "", "directory for the client profiles (default: a temporary one, removed after)")
		fs.DurationVar(&o.Timeout, "timeout", 5*time.Minute, "longest run")
		return func(ctx context.Context, r *scenario.Runner) (scenario.Result, error) { return r.E2E(ctx, *o) }
	},
	"media": func(fs *flag.FlagSet) func(context.Context, *scenario.Runner) (scenario.Result, error) {
		o := &scenario.MediaOptions{}
		fs.Int64Var(&o.Size, "size", 0, "plaintext bytes (default: the largest whose encrypted object is 100 MiB, the relay's default limit)")
		fs.IntVar(&o.Rounds, "rounds", 2, "rounds of raw + encrypted transfers; the best of each counts")
		fs.StringVar(&o.Dir, "dir", "", "directory for downloaded files (default: a temporary one, removed after)")
		return func(ctx context.Context, r *scenario.Runner) (scenario.Result, error) { return r.Media(ctx, *o) }
	},
}

func pairsFlags(fs *flag.FlagSet, pairs int, dur time.Duration) *scenario.PairsOptions {
	o := &scenario.PairsOptions{}
	fs.IntVar(&o.Pairs, "pairs", pairs, "sender→receiver device pairs")
	fs.IntVar(&o.Size, "size", 200, "payload bytes per message (opaque ciphertext-sized random bytes)")
	fs.IntVar(&o.Window, "window", 64, "Sends in flight per sender")
	fs.DurationVar(&o.Duration, "duration", dur, "measured time")
	fs.DurationVar(&o.Warmup, "warmup", 2*time.Second, "time before the measured window")
	fs.DurationVar(&o.Drain, "drain", 30*time.Second, "longest wait for the last deliveries")
	return o
}

// report renders results as markdown.
func report(args []string, stdout, stderr io.Writer) (int, error) {
	fs := flag.NewFlagSet("hush-bench report", flag.ContinueOnError)
	fs.SetOutput(stderr)
	var in scenario.ReportInput
	var date, gobench string
	fs.StringVar(&in.Commit, "commit", "unknown", "git commit measured")
	fs.StringVar(&date, "date", "", "time of the run, RFC 3339 (default now)")
	fs.StringVar(&in.ServerCommand, "server-command", "", "how the bench server was started")
	fs.StringVar(&gobench, "gobench", "", "file with go test -bench output of crypto's Encrypt and Decrypt")
	fs.StringVar(&in.GoBenchCommand, "gobench-command", "", "the go test command that produced --gobench")
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0, err
		}
		return 2, err
	}
	in.Date = time.Now()
	if date != "" {
		t, err := time.Parse(time.RFC3339, date)
		if err != nil {
			return 2, fmt.Errorf("--date: %w", err)
		}
		in.Date = t
	}
	if gobench != "" {
		b, err := os.ReadFile(gobench)
		if err != nil {
			return 2, err
		}
		in.GoBench = string(b)
	}
	for _, f := range fs.Args() {
		b, err := os.ReadFile(f)
		if err != nil {
			return 2, err
		}
		if len(bytes.TrimSpace(b)) == 0 { // the scenario died before printing
			b, _ = json.Marshal(scenario.Failure{Scenario: strings.TrimSuffix(filepath.Base(f), ".json"),
				Error: "hush-bench printed no result; see " + strings.TrimSuffix(filepath.Base(f), ".json") + ".log"})
		}
		in.Results = append(in.Results, b)
	}
	if err := scenario.WriteMarkdown(stdout, in); err != nil {
		return 2, err
	}
	return 0, nil
}
