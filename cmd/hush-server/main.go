// Command hush-server runs hush in one process: the key server and the
// blind relay on one listener, with embedded SQLite stores under one data
// directory. It is what `make run` starts.
//
// Every flag falls back to the environment variable named in --help; a
// flag on the command line wins. This file only parses flags; the wiring is
// server/app.StartAllInOne.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/hushchat/hush/internal/envflag"
	"github.com/hushchat/hush/keyserver"
	"github.com/hushchat/hush/keyserver/ratelimit"
	"github.com/hushchat/hush/server"
	"github.com/hushchat/hush/server/app"
	"github.com/hushchat/hush/server/presence"
	"github.com/hushchat/hush/server/queue"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, os.Args[1:], os.Stderr); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			os.Exit(0)
		}
		fmt.Fprintln(os.Stderr, "hush-server:", err)
		os.Exit(1)
	}
}

type options struct {
	cfg                      app.AllInOneConfig
	nodeID                   int
	anonBurst, bundleBurst   int
	anonWindow, bundleWindow time.Duration
	logLevel, logFormat      string
	debug                    app.DebugOptions
}

func parseFlags(args []string, stderr io.Writer) (options, error) {
	var o options
	var e envflag.Defaults
	fs := flag.NewFlagSet("hush-server", flag.ContinueOnError)
	fs.SetOutput(stderr)
	c := &o.cfg
	fs.StringVar(&c.Listen, "listen", e.String("HUSH_LISTEN", "127.0.0.1:8080"),
		"address to serve HTTP and WebSockets on (env HUSH_LISTEN)")
	fs.StringVar(&c.DataDir, "data", e.String("HUSH_DATA", ".hush-data"),
		"data directory, created with mode 0700: keys.db (accounts and keys), queue.db (envelopes\nwaiting for their ack), push.db (push endpoints) and signing.key (token-signing key) (env HUSH_DATA)")
	fs.IntVar(&o.nodeID, "node-id", e.Int("HUSH_NODE_ID", 0),
		"Snowflake node id 0–1023 for server ids; unique per relay sharing a queue store (env HUSH_NODE_ID)")
	fs.DurationVar(&c.Relay.TTL, "ttl", e.Duration("HUSH_TTL", server.DefaultTTL),
		"how long an envelope waits for its recipient's ack before it is deleted (env HUSH_TTL)")
	fs.IntVar(&c.Relay.MaxQueue, "max-queue", e.Int("HUSH_MAX_QUEUE", queue.DefaultMaxDepth),
		"most envelopes one device's queue holds; a send beyond it fails with CODE_QUEUE_FULL (env HUSH_MAX_QUEUE)")
	fs.DurationVar(&c.Relay.SweepInterval, "sweep-interval", e.Duration("HUSH_SWEEP_INTERVAL", server.DefaultSweepInterval),
		"how often expired envelopes are deleted (env HUSH_SWEEP_INTERVAL)")
	fs.DurationVar(&c.Relay.PingInterval, "ping-interval", e.Duration("HUSH_PING_INTERVAL", server.DefaultPingInterval),
		"how often the relay pings each connection; one silent for 2.5× this is dropped (env HUSH_PING_INTERVAL)")
	fs.DurationVar(&c.Relay.OnlineWindow, "online-window", e.Duration("HUSH_ONLINE_WINDOW", presence.DefaultOnlineWindow),
		"presence: an account counts as online this long after its last heartbeat (env HUSH_ONLINE_WINDOW)")
	fs.BoolVar(&c.Relay.AllowPrivatePush, "allow-private-push", e.Bool("HUSH_ALLOW_PRIVATE_PUSH", false),
		"allow push endpoints on loopback and private addresses (a push distributor on your own network) (env HUSH_ALLOW_PRIVATE_PUSH)")
	fs.StringVar(&c.InviteCode, "invite-code", "",
		"if set, registration requires this invite code; empty means open registration.\nPrefer the env var: flags are visible in ps (env HUSH_INVITE_CODE)")
	fs.DurationVar(&c.TokenTTL, "token-ttl", e.Duration("HUSH_TOKEN_TTL", keyserver.DefaultTokenTTL),
		"lifetime of an auth token; a connection is closed when its token expires (env HUSH_TOKEN_TTL)")
	fs.IntVar(&o.anonBurst, "anon-rate", e.Int("HUSH_ANON_RATE", keyserver.DefaultAnonRate.Burst),
		"unauthenticated key-server calls (challenge, login, register) per client IP per --anon-rate-window (env HUSH_ANON_RATE)")
	fs.DurationVar(&o.anonWindow, "anon-rate-window", e.Duration("HUSH_ANON_RATE_WINDOW", keyserver.DefaultAnonRate.Per),
		"window of --anon-rate (env HUSH_ANON_RATE_WINDOW)")
	fs.IntVar(&o.bundleBurst, "bundle-rate", e.Int("HUSH_BUNDLE_RATE", keyserver.DefaultBundleRate.Burst),
		"prekey bundle fetches per (requester, target) per --bundle-rate-window (env HUSH_BUNDLE_RATE)")
	fs.DurationVar(&o.bundleWindow, "bundle-rate-window", e.Duration("HUSH_BUNDLE_RATE_WINDOW", keyserver.DefaultBundleRate.Per),
		"window of --bundle-rate (env HUSH_BUNDLE_RATE_WINDOW)")
	fs.DurationVar(&c.ShutdownGrace, "shutdown-grace", e.Duration("HUSH_SHUTDOWN_GRACE", 15*time.Second),
		"on SIGINT/SIGTERM, how long clients and in-flight sends get to finish (env HUSH_SHUTDOWN_GRACE)")
	finishMedia := app.MediaFlags(fs, &c.Relay.Media)
	finishDebug := app.DebugFlags(fs, &o.debug, app.DefaultGCPercent)
	fs.StringVar(&o.logLevel, "log-level", e.String("HUSH_LOG_LEVEL", "info"), "debug, info, warn or error (env HUSH_LOG_LEVEL)")
	fs.StringVar(&o.logFormat, "log-format", e.String("HUSH_LOG_FORMAT", "text"), "text or json (env HUSH_LOG_FORMAT)")
	fs.Usage = func() {
		fmt.Fprint(fs.Output(), `Usage: hush-server [flags]

Runs hush in one process: the key server (accounts, devices, prekeys, auth
tokens; HTTP JSON under /v1/), the blind relay (WebSocket at /v1/ws) and
its media service (attachment upload slots and download URLs under
/v1/media/), on one address, with embedded stores under --data (media on
disk there, or in S3 with --media s3). Also serves /healthz,
/readyz and Prometheus /metrics. SIGINT or SIGTERM shuts down gracefully:
clients are told to reconnect and in-flight sends are finished.
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
	if v, ok := os.LookupEnv("HUSH_INVITE_CODE"); ok && !set["invite-code"] {
		c.InviteCode = v
	}
	if fs.NArg() > 0 {
		return o, fmt.Errorf("unexpected arguments %q (see --help)", fs.Args())
	}
	if err := e.Err(); err != nil {
		return o, err
	}
	if err := finishMedia(); err != nil {
		return o, err
	}
	if err := finishDebug(); err != nil {
		return o, err
	}
	c.Relay.NodeID = int64(o.nodeID)
	c.AnonRate = ratelimit.Rate{Burst: o.anonBurst, Per: o.anonWindow}
	c.BundleRate = ratelimit.Rate{Burst: o.bundleBurst, Per: o.bundleWindow}
	return o, nil
}

func run(ctx context.Context, args []string, stderr io.Writer) error {
	o, err := parseFlags(args, stderr)
	if err != nil {
		return err
	}
	if o.cfg.Logger, err = app.NewLogger(o.logLevel, o.logFormat, stderr); err != nil {
		return err
	}
	dbg, err := app.StartDiagnostics(o.debug, o.cfg.Logger)
	if err != nil {
		return err
	}
	defer dbg.Close()
	a, err := app.StartAllInOne(ctx, o.cfg)
	if err != nil {
		return err
	}
	return a.Wait(ctx)
}
