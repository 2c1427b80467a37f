// Command hush-relay runs hush's blind relay on its own, next to a
// separate hush-keyserver: it verifies tokens with the key server's public
// key (fetched at start, or given with --keyserver-key) and asks the key
// server's internal endpoint for device lists.
//
// Every flag falls back to the environment variable named in --help; a
// flag on the command line wins. This file only parses flags; the wiring is
// server/app.StartRelay.
package main

import (
	"context"
	"crypto/ed25519"
	"encoding/base64"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"strconv"
	"syscall"
	"time"

	"github.com/hushchat/hush/server"
	"github.com/hushchat/hush/server/app"
	"github.com/hushchat/hush/server/queue"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, os.Args[1:], os.Stderr); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			os.Exit(0)
		}
		fmt.Fprintln(os.Stderr, "hush-relay:", err)
		os.Exit(1)
	}
}

type env struct{ errs []error }

func (e *env) str(name, def string) string {
	if v, ok := os.LookupEnv(name); ok {
		return v
	}
	return def
}

func (e *env) dur(name string, def time.Duration) time.Duration {
	v, ok := os.LookupEnv(name)
	if !ok {
		return def
	}
	d, err := time.ParseDuration(v)
	if err != nil {
		e.errs = append(e.errs, fmt.Errorf("%s=%q: %w", name, v, err))
	}
	return d
}

func (e *env) int(name string, def int) int {
	v, ok := os.LookupEnv(name)
	if !ok {
		return def
	}
	n, err := strconv.Atoi(v)
	if err != nil {
		e.errs = append(e.errs, fmt.Errorf("%s=%q: %w", name, v, err))
	}
	return n
}

func (e *env) bool(name string, def bool) bool {
	v, ok := os.LookupEnv(name)
	if !ok {
		return def
	}
	b, err := strconv.ParseBool(v)
	if err != nil {
		e.errs = append(e.errs, fmt.Errorf("%s=%q: %w", name, v, err))
	}
	return b
}

type options struct {
	cfg                 app.RelayConfig
	nodeID              int
	key                 string
	logLevel, logFormat string
}

func parseFlags(args []string, stderr io.Writer) (options, error) {
	var o options
	var e env
	fs := flag.NewFlagSet("hush-relay", flag.ContinueOnError)
	fs.SetOutput(stderr)
	c := &o.cfg
	fs.StringVar(&c.Listen, "listen", e.str("HUSH_RELAY_LISTEN", "127.0.0.1:8082"),
		"address to serve WebSockets (/v1/ws), /healthz, /readyz and /metrics on (env HUSH_RELAY_LISTEN)")
	fs.StringVar(&c.DataDir, "data", e.str("HUSH_RELAY_DATA", ".hush-relay-data"),
		"data directory, created with mode 0700: queue.db (envelopes waiting for their ack) and\npush.db (push endpoints) (env HUSH_RELAY_DATA)")
	fs.StringVar(&c.KeyServer, "keyserver", e.str("HUSH_KEYSERVER_URL", "http://127.0.0.1:8081"),
		"base URL of the key server (env HUSH_KEYSERVER_URL)")
	fs.StringVar(&c.InternalSecret, "internal-secret", "",
		"the key server's --internal-secret, for its device-list endpoint. Prefer the env var:\nflags are visible in ps (env HUSH_INTERNAL_SECRET)")
	fs.StringVar(&o.key, "keyserver-key", e.str("HUSH_KEYSERVER_KEY", ""),
		"the key server's Ed25519 token key, base64 (as served at /v1/server-key); empty means\nfetch it from --keyserver at start — do that only over a channel you trust (env HUSH_KEYSERVER_KEY)")
	fs.DurationVar(&c.DirectoryTTL, "directory-ttl", e.dur("HUSH_DIRECTORY_TTL", 10*time.Second),
		"how long a device list is cached; bounds how long a removed device may still connect (env HUSH_DIRECTORY_TTL)")
	fs.IntVar(&o.nodeID, "node-id", e.int("HUSH_NODE_ID", 0),
		"Snowflake node id 0–1023 for server ids; unique per relay sharing a queue store (env HUSH_NODE_ID)")
	fs.DurationVar(&c.Relay.TTL, "ttl", e.dur("HUSH_TTL", server.DefaultTTL),
		"how long an envelope waits for its recipient's ack before it is deleted (env HUSH_TTL)")
	fs.IntVar(&c.Relay.MaxQueue, "max-queue", e.int("HUSH_MAX_QUEUE", queue.DefaultMaxDepth),
		"most envelopes one device's queue holds; a send beyond it fails with CODE_QUEUE_FULL (env HUSH_MAX_QUEUE)")
	fs.DurationVar(&c.Relay.SweepInterval, "sweep-interval", e.dur("HUSH_SWEEP_INTERVAL", server.DefaultSweepInterval),
		"how often expired envelopes are deleted (env HUSH_SWEEP_INTERVAL)")
	fs.DurationVar(&c.Relay.PingInterval, "ping-interval", e.dur("HUSH_PING_INTERVAL", server.DefaultPingInterval),
		"how often the relay pings each connection; one silent for 2.5× this is dropped (env HUSH_PING_INTERVAL)")
	fs.BoolVar(&c.Relay.AllowPrivatePush, "allow-private-push", e.bool("HUSH_ALLOW_PRIVATE_PUSH", false),
		"allow push endpoints on loopback and private addresses (env HUSH_ALLOW_PRIVATE_PUSH)")
	fs.DurationVar(&c.ShutdownGrace, "shutdown-grace", e.dur("HUSH_SHUTDOWN_GRACE", 15*time.Second),
		"on SIGINT/SIGTERM, how long clients and in-flight sends get to finish (env HUSH_SHUTDOWN_GRACE)")
	fs.StringVar(&o.logLevel, "log-level", e.str("HUSH_LOG_LEVEL", "info"), "debug, info, warn or error (env HUSH_LOG_LEVEL)")
	fs.StringVar(&o.logFormat, "log-format", e.str("HUSH_LOG_FORMAT", "text"), "text or json (env HUSH_LOG_FORMAT)")
	fs.Usage = func() {
		fmt.Fprint(fs.Output(), `Usage: hush-relay [flags]

Runs hush's blind relay alone (WebSocket at /v1/ws, /healthz, /readyz,
Prometheus /metrics) next to a separate hush-keyserver started with
--internal-secret. Envelopes are stored under --data until acknowledged.
SIGINT or SIGTERM shuts down gracefully.
Every flag falls back to the environment variable named with it.

Flags:
`)
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil {
		return o, err
	}
	set := map[string]bool{}
	fs.Visit(func(f *flag.Flag) { set[f.Name] = true })
	if v, ok := os.LookupEnv("HUSH_INTERNAL_SECRET"); ok && !set["internal-secret"] {
		c.InternalSecret = v
	}
	if fs.NArg() > 0 {
		return o, fmt.Errorf("unexpected arguments %q (see --help)", fs.Args())
	}
	if len(e.errs) > 0 {
		return o, errors.Join(e.errs...)
	}
	if o.key != "" {
		k, err := base64.StdEncoding.DecodeString(o.key)
		if err != nil || len(k) != ed25519.PublicKeySize {
			return o, fmt.Errorf("--keyserver-key: want %d bytes in base64", ed25519.PublicKeySize)
		}
		c.KeyServerKey = k
	}
	if c.InternalSecret == "" {
		return o, errors.New("--internal-secret (or HUSH_INTERNAL_SECRET) is required")
	}
	c.Relay.NodeID = int64(o.nodeID)
	return o, nil
}

func newLogger(level, format string, w io.Writer) (*slog.Logger, error) {
	var lvl slog.Level
	if err := lvl.UnmarshalText([]byte(level)); err != nil {
		return nil, fmt.Errorf("--log-level: %w", err)
	}
	hopts := &slog.HandlerOptions{Level: lvl}
	switch format {
	case "text":
		return slog.New(slog.NewTextHandler(w, hopts)), nil
	case "json":
		return slog.New(slog.NewJSONHandler(w, hopts)), nil
	}
	return nil, fmt.Errorf("--log-format %q: want text or json", format)
}

func run(ctx context.Context, args []string, stderr io.Writer) error {
	o, err := parseFlags(args, stderr)
	if err != nil {
		return err
	}
	if o.cfg.Logger, err = newLogger(o.logLevel, o.logFormat, stderr); err != nil {
		return err
	}
	a, err := app.StartRelay(ctx, o.cfg)
	if err != nil {
		return err
	}
	return a.Wait(ctx)
}
