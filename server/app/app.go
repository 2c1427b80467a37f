// Package app wires hush's server processes together, so that the
// commands in cmd/ hold only flag parsing and tests can start the very same
// processes in-process:
//
//   - StartAllInOne is hush-server: the key server and the relay in one
//     process on one listener, embedded SQLite stores under one data
//     directory, the relay's device directory answered in-process by the key
//     server and invalidated by its device-change notifications;
//   - StartRelay is hush-relay: the relay alone, asking a separate key
//     server for device lists over its internal HTTP endpoint (cached
//     briefly) and for its token-verification key at start. On its own it
//     keeps its queues in SQLite; with ClusterOptions it is one node of a
//     scaled-out deployment: queues and push endpoints in Cassandra,
//     routing, presence, rate limits and its Snowflake node id in Redis.
//
// Both serve /healthz (the process is up), /readyz (stores answer, the node
// id is valid and the relay is not shutting down; an unhealthy Redis router
// does not count, since delivery goes on by polling), /metrics (Prometheus,
// hush_ metrics plus Go and process collectors), the relay's WebSocket at
// /v1/ws and the media service under /v1/media/ (upload slots and download
// URLs; the disk backend also serves the signed blob URLs). Shutdown first
// stops the relay gracefully (Reconnect to every client, in-flight Sends
// answered), then the HTTP server, then the media sweeper, router,
// presence and node-id lease, then closes the stores. A relay whose leased
// node id is lost for good (another node holds it) shuts down the same way
// and Wait reports ErrNodeIDLost, so the process exits non-zero and its
// restart leases a fresh id.
package app

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/hushchat/hush/protocol"
	"github.com/hushchat/hush/server"
	"github.com/hushchat/hush/server/push"
	"github.com/hushchat/hush/server/queue"
	"github.com/hushchat/hush/server/queue/sqlite"
)

// File names inside the data directory.
const (
	KeysDB     = "keys.db"
	QueueDB    = "queue.db"
	PushDB     = "push.db"
	SigningKey = "signing.key"
)

// RelayOptions are the relay settings both commands share.
type RelayOptions struct {
	// Media configures attachments (default: disk under the data
	// directory).
	Media MediaOptions
	// ClockOffset shifts this relay's clock (server ids, server times,
	// expiry, presence) — for tests of clock skew between relays only.
	ClockOffset time.Duration
	// NodeID is the Snowflake node id (0–1023).
	NodeID int64
	// TTL of queued envelopes (default 30 days); MaxQueue caps each
	// device's queue (default queue.DefaultMaxDepth).
	TTL      time.Duration
	MaxQueue int
	// SweepInterval: how often expired envelopes are deleted.
	SweepInterval time.Duration
	// PingInterval of the relay's WebSocket pings.
	PingInterval time.Duration
	// AllowPrivatePush permits push endpoints on loopback/private addresses.
	AllowPrivatePush bool
	// OnlineWindow: presence "online" window (default 10 s).
	OnlineWindow time.Duration
}

// ErrNodeIDLost is returned by Wait when the relay's leased node id was
// taken by another node: the relay has shut down and must be restarted.
var ErrNodeIDLost = errors.New("node id lease lost to another relay; restart to lease a new one")

// App is a running server process.
type App struct {
	log      *slog.Logger
	ln       net.Listener
	srv      *http.Server
	relay    *server.Relay
	reg      *prometheus.Registry
	grace    time.Duration
	closers  []io.Closer // closed in reverse order after shutdown
	serveErr chan error
	lost     <-chan struct{} // the node id is gone for good (nil: never)

	readyMu  sync.Mutex
	readyMsg string // the last readiness answer ("" ready), for logReadiness

	shutdownOnce sync.Once
	shutdownErr  error
}

// Addr is the address the process listens on.
func (a *App) Addr() string { return a.ln.Addr().String() }

// Relay returns the relay.
func (a *App) Relay() *server.Relay { return a.relay }

// Registry returns the metrics registry served at /metrics.
func (a *App) Registry() *prometheus.Registry { return a.reg }

// Wait blocks until ctx ends or the HTTP server fails, then shuts down
// gracefully (within the configured grace period).
func (a *App) Wait(ctx context.Context) error {
	var serveErr error
	select {
	case <-ctx.Done():
	case serveErr = <-a.serveErr:
	case <-a.lost:
		a.log.Error("node id lease lost to another relay: shutting down")
		serveErr = ErrNodeIDLost
	}
	sctx, cancel := context.WithTimeout(context.Background(), a.grace)
	defer cancel()
	return errors.Join(serveErr, a.Shutdown(sctx))
}

// Shutdown stops the process: relay first (clients are told to reconnect,
// in-flight Sends finish), then HTTP, then the stores.
func (a *App) Shutdown(ctx context.Context) error {
	a.shutdownOnce.Do(func() {
		a.log.Info("shutting down")
		var errs []error
		if err := a.relay.Shutdown(ctx); err != nil {
			errs = append(errs, err)
		}
		if err := a.srv.Shutdown(ctx); err != nil {
			errs = append(errs, fmt.Errorf("http shutdown: %w", err))
		}
		for i := len(a.closers) - 1; i >= 0; i-- {
			if err := a.closers[i].Close(); err != nil {
				errs = append(errs, err)
			}
		}
		a.shutdownErr = errors.Join(errs...)
		a.log.Info("stopped")
	})
	return a.shutdownErr
}

func (a *App) closeAll() {
	for i := len(a.closers) - 1; i >= 0; i-- {
		a.closers[i].Close()
	}
}

// prepareDataDir creates dir with mode 0700, or checks that an existing one
// is not open to other users: it holds the signing key and ciphertext.
func prepareDataDir(dir string) error {
	if dir == "" {
		return errors.New("no data directory given")
	}
	fi, err := os.Stat(dir)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		if err := os.MkdirAll(dir, 0o700); err != nil {
			return fmt.Errorf("create data directory: %w", err)
		}
		return os.Chmod(dir, 0o700) // whatever the umask
	case err != nil:
		return fmt.Errorf("data directory: %w", err)
	case !fi.IsDir():
		return fmt.Errorf("data directory %s is not a directory", dir)
	case fi.Mode().Perm()&0o077 != 0:
		return fmt.Errorf("data directory %s is accessible by other users (mode %04o); run chmod 700 %s", dir, fi.Mode().Perm(), dir)
	}
	return nil
}

func newRegistry() *prometheus.Registry {
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return reg
}

// clock returns the relay's clock: time.Now, shifted by ClockOffset.
func (o RelayOptions) clock() func() time.Time {
	if o.ClockOffset == 0 {
		return time.Now
	}
	off := o.ClockOffset
	return func() time.Time { return time.Now().Add(off) }
}

// openRelayStores opens the queue and push-endpoint stores: in Cassandra
// when cl names it, else SQLite databases in dir.
func openRelayStores(ctx context.Context, a *App, dir string, o RelayOptions, cl ClusterOptions, log *slog.Logger) (queue.Store, push.Notifier, error) {
	var q queue.Store
	var eps push.Endpoints
	var err error
	if len(cl.Cassandra) > 0 {
		if q, eps, err = openCassandra(ctx, a, cl, o.MaxQueue, o.clock(), log); err != nil {
			return nil, nil, err
		}
	} else {
		sq, err := sqlite.Open(filepath.Join(dir, QueueDB), queue.Options{MaxDepth: o.MaxQueue, Clock: o.clock()})
		if err != nil {
			return nil, nil, err
		}
		a.closers = append(a.closers, sq)
		q = sq
		if eps, err = push.OpenSQLiteEndpoints(filepath.Join(dir, PushDB)); err != nil {
			return nil, nil, err
		}
	}
	a.closers = append(a.closers, eps)
	wh := push.NewWebhook(eps, push.WebhookOptions{AllowPrivate: o.AllowPrivatePush, Logger: log, Registerer: a.reg})
	a.closers = append(a.closers, wh) // closed before the endpoint store
	return q, wh, nil
}

// logReadiness logs a change of readiness (a load balancer probes often;
// the same reason is logged once).
func (a *App) logReadiness(err error) {
	msg := ""
	if err != nil {
		msg = err.Error()
	}
	a.readyMu.Lock()
	changed := msg != a.readyMsg
	a.readyMsg = msg
	a.readyMu.Unlock()
	switch {
	case !changed:
	case err != nil:
		a.log.Warn("not ready", "err", err)
	default:
		a.log.Info("ready")
	}
}

// serve starts HTTP on listen with the relay, health, readiness and metrics
// routes added to mux.
func (a *App) serve(listen string, mux *http.ServeMux, ready func(context.Context) error) error {
	mux.Handle(protocol.WSPath, a.relay.Handler())
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) { io.WriteString(w, "ok\n") })
	mux.HandleFunc("GET /readyz", func(w http.ResponseWriter, r *http.Request) {
		ctx, cancel := context.WithTimeout(r.Context(), 3*time.Second)
		defer cancel()
		err := errors.Join(a.relay.Ready(ctx), ready(ctx))
		a.logReadiness(err)
		if err != nil {
			http.Error(w, "not ready", http.StatusServiceUnavailable)
			return
		}
		io.WriteString(w, "ready\n")
	})
	mux.Handle("GET /metrics", promhttp.HandlerFor(a.reg, promhttp.HandlerOpts{Registry: a.reg}))
	ln, err := net.Listen("tcp", listen)
	if err != nil {
		return err
	}
	a.ln = ln
	a.srv = &http.Server{
		Handler: mux,
		// No Read/WriteTimeout: they would also cut hijacked WebSockets,
		// which set their own deadlines. Request bodies of the key server
		// are bounded by its handlers.
		ReadHeaderTimeout: 10 * time.Second,
		IdleTimeout:       2 * time.Minute,
		MaxHeaderBytes:    16 << 10,
		ErrorLog:          slog.NewLogLogger(a.log.Handler(), slog.LevelWarn),
	}
	a.serveErr = make(chan error, 1)
	go func() {
		if err := a.srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			a.serveErr <- err
		}
	}()
	return nil
}

func (o RelayOptions) relayConfig() server.Config {
	return server.Config{
		NodeID:        o.NodeID,
		TTL:           o.TTL,
		SweepInterval: o.SweepInterval,
		PingInterval:  o.PingInterval,
		OnlineWindow:  o.OnlineWindow,
		Now:           o.clock(),
	}
}
