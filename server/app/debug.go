package app

import (
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/http/pprof"
	"runtime/debug"
	"time"

	"github.com/hushchat/hush/internal/envflag"
)

// Diagnostics of a server process: Go's profiler on a listener of its own
// and the garbage collector's target.
//
// The profiler is on a separate listener, never on the public one: its
// goroutine dumps and profiles describe the process's internals (and a
// CPU profile costs CPU while it runs), so it is something an operator
// reaches over SSH, not something a client can ask for. For the same
// reason it only binds to loopback addresses.

// DebugOptions are the diagnostics flags every server command shares.
type DebugOptions struct {
	// Listen is the address of the profiler (net/http/pprof under
	// /debug/pprof/); empty: none.
	Listen string
	// GCPercent is the garbage collector's target (runtime/debug.SetGCPercent);
	// 0 leaves the runtime's own (GOGC, default 100).
	GCPercent int
}

// DebugFlags registers --debug-listen and --gc-percent on fs with the given
// default GC target. Call the returned function after fs.Parse: it checks
// the values and fills o.
func DebugFlags(fs *flag.FlagSet, o *DebugOptions, defaultGCPercent int) func() error {
	var e envflag.Defaults
	fs.StringVar(&o.Listen, "debug-listen", e.String("HUSH_DEBUG_LISTEN", ""),
		"loopback address (e.g. 127.0.0.1:6060) serving Go's profiler under /debug/pprof/ for\n`go tool pprof`; empty: off. Reach it over SSH; never expose it (env HUSH_DEBUG_LISTEN)")
	fs.IntVar(&o.GCPercent, "gc-percent", e.Int("HUSH_GC_PERCENT", defaultGCPercent),
		"garbage-collector target: the heap may grow this many percent over live data before a\ncollection (Go's GOGC). Lower keeps less memory per connection for a little more CPU;\n0 leaves GOGC's value. GOMEMLIMIT is honoured as usual (env HUSH_GC_PERCENT)")
	return func() error {
		if err := e.Err(); err != nil {
			return err
		}
		if o.GCPercent < 0 {
			return fmt.Errorf("--gc-percent %d: want 0 (GOGC's value) or a positive percentage", o.GCPercent)
		}
		if o.Listen != "" {
			if err := checkLoopback(o.Listen); err != nil {
				return fmt.Errorf("--debug-listen: %w", err)
			}
		}
		return nil
	}
}

// checkLoopback accepts host:port where host is a loopback IP or
// "localhost".
func checkLoopback(addr string) error {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return err
	}
	if host == "localhost" {
		return nil
	}
	ip := net.ParseIP(host)
	if ip == nil || !ip.IsLoopback() {
		return fmt.Errorf("%q is not a loopback address: the profiler exposes the process's internals; bind it to 127.0.0.1 and tunnel over SSH", addr)
	}
	return nil
}

// DebugServer is a running profiler listener.
type DebugServer struct {
	ln  net.Listener
	srv *http.Server
}

// StartDiagnostics applies o's GC target and, when o.Listen is set, starts
// the profiler. The returned server is nil when there is no listener; its
// Close is safe on nil.
func StartDiagnostics(o DebugOptions, log *slog.Logger) (*DebugServer, error) {
	if o.GCPercent > 0 {
		debug.SetGCPercent(o.GCPercent)
	}
	if o.Listen == "" {
		return nil, nil
	}
	if err := checkLoopback(o.Listen); err != nil {
		return nil, fmt.Errorf("debug listener: %w", err)
	}
	ln, err := net.Listen("tcp", o.Listen)
	if err != nil {
		return nil, fmt.Errorf("debug listener: %w", err)
	}
	// An own mux: net/http/pprof also registers on http.DefaultServeMux,
	// which nothing here serves.
	mux := http.NewServeMux()
	mux.HandleFunc("/debug/pprof/", pprof.Index)
	mux.HandleFunc("/debug/pprof/cmdline", pprof.Cmdline)
	mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
	mux.HandleFunc("/debug/pprof/symbol", pprof.Symbol)
	mux.HandleFunc("/debug/pprof/trace", pprof.Trace)
	d := &DebugServer{ln: ln, srv: &http.Server{
		Handler:           mux,
		ReadHeaderTimeout: 10 * time.Second,
		ErrorLog:          slog.NewLogLogger(log.Handler(), slog.LevelWarn),
	}}
	go func() {
		if err := d.srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			log.Warn("debug listener stopped", "err", err)
		}
	}()
	log.Info("profiler listening", "addr", d.Addr(), "path", "/debug/pprof/")
	return d, nil
}

// Addr is the profiler's address.
func (d *DebugServer) Addr() string { return d.ln.Addr().String() }

// Close stops the profiler; a running profile request is cut.
func (d *DebugServer) Close() error {
	if d == nil {
		return nil
	}
	return d.srv.Close()
}

// DefaultGCPercent is hush-server's and hush-relay's default --gc-percent.
// A relay's memory is mostly per idle connection; Go's default of 100 lets
// the heap reach twice the live data between collections.
const DefaultGCPercent = 50
