// Command hush-keyserver runs hush's key server on its own: accounts,
// devices, prekeys and auth tokens over the HTTP JSON API of package
// keyserver (docs/api.md), with /healthz, /readyz and Prometheus /metrics.
//
// Every flag can also be set through the environment variable named in
// --help; a flag on the command line wins. This file only parses flags and
// wires packages together.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/signal"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/hushchat/hush/internal/envflag"
	"github.com/hushchat/hush/keyserver"
	"github.com/hushchat/hush/keyserver/ratelimit"
	"github.com/hushchat/hush/keyserver/ratelimit/redislimit"
	"github.com/hushchat/hush/server/app"
	"github.com/hushchat/hush/server/routing/redisroute"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, os.Args[1:], os.Stderr, nil); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			os.Exit(0)
		}
		fmt.Fprintln(os.Stderr, "hush-keyserver:", err)
		os.Exit(1)
	}
}

type options struct {
	listen, store, signingKey, inviteCode, internalSecret, replication, logLevel, logFormat string
	redis, redisPrefix, redisUsername, redisPassword                                        string
	tokenTTL, challengeTTL, bundleWindow, anonWindow, spkGrace, shutdownGrace               time.Duration
	bundleBurst, anonBurst, maxPreKeys, lowPreKeys                                          int
	debug                                                                                   app.DebugOptions
	finishDebug                                                                             func() error
}

// secretEnv names the environment variables of flags whose values are
// secrets: they are read after parsing, so --help never prints them as a
// default.
var secretEnv = map[string]string{"invite-code": "HUSH_INVITE_CODE", "internal-secret": "HUSH_INTERNAL_SECRET", "redis-password": "HUSH_REDIS_PASSWORD"}

func newFlagSet(o *options, e *envflag.Defaults, stderr io.Writer) *flag.FlagSet {
	fs := flag.NewFlagSet("hush-keyserver", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.StringVar(&o.listen, "listen", e.String("HUSH_KEYSERVER_LISTEN", "127.0.0.1:8081"),
		"address to serve HTTP on (env HUSH_KEYSERVER_LISTEN)")
	fs.StringVar(&o.store, "store", e.String("HUSH_KEYSERVER_STORE", "sqlite:hush-keyserver.db"),
		"where state lives: sqlite:PATH (one file, created if missing) or\ncassandra:HOST1,HOST2/KEYSPACE (keyspace and schema created if missing) (env HUSH_KEYSERVER_STORE)")
	fs.StringVar(&o.signingKey, "signing-key", e.String("HUSH_KEYSERVER_SIGNING_KEY", "hush-keyserver.key"),
		"Ed25519 token-signing key file (PEM PKCS#8); created with mode 0600 on first start,\nrefused if readable by others. Several key servers sharing a store must share it (env HUSH_KEYSERVER_SIGNING_KEY)")
	fs.StringVar(&o.inviteCode, "invite-code", "",
		"if set, registration requires this invite code; empty means open registration.\nPrefer the env var: flags are visible in ps (env HUSH_INVITE_CODE)")
	fs.StringVar(&o.internalSecret, "internal-secret", "",
		"shared secret enabling GET /v1/internal/accounts/{name}/devices for a separate relay\n(header X-Hush-Internal-Secret); empty disables it. Prefer the env var (env HUSH_INTERNAL_SECRET)")
	fs.DurationVar(&o.tokenTTL, "token-ttl", e.Duration("HUSH_KEYSERVER_TOKEN_TTL", keyserver.DefaultTokenTTL),
		"lifetime of an auth token (env HUSH_KEYSERVER_TOKEN_TTL)")
	fs.DurationVar(&o.challengeTTL, "challenge-ttl", e.Duration("HUSH_KEYSERVER_CHALLENGE_TTL", keyserver.DefaultChallengeTTL),
		"how long a login/registration challenge nonce stays usable (env HUSH_KEYSERVER_CHALLENGE_TTL)")
	fs.IntVar(&o.bundleBurst, "bundle-rate", e.Int("HUSH_KEYSERVER_BUNDLE_RATE", keyserver.DefaultBundleRate.Burst),
		"bundle fetches allowed per (requester, target) per --bundle-rate-window (env HUSH_KEYSERVER_BUNDLE_RATE)")
	fs.DurationVar(&o.bundleWindow, "bundle-rate-window", e.Duration("HUSH_KEYSERVER_BUNDLE_RATE_WINDOW", keyserver.DefaultBundleRate.Per),
		"window of --bundle-rate; tokens refill evenly over it (env HUSH_KEYSERVER_BUNDLE_RATE_WINDOW)")
	fs.IntVar(&o.anonBurst, "anon-rate", e.Int("HUSH_KEYSERVER_ANON_RATE", keyserver.DefaultAnonRate.Burst),
		"unauthenticated calls (challenge, login, register) allowed per client IP per --anon-rate-window (env HUSH_KEYSERVER_ANON_RATE)")
	fs.DurationVar(&o.anonWindow, "anon-rate-window", e.Duration("HUSH_KEYSERVER_ANON_RATE_WINDOW", keyserver.DefaultAnonRate.Per),
		"window of --anon-rate (env HUSH_KEYSERVER_ANON_RATE_WINDOW)")
	fs.DurationVar(&o.spkGrace, "signed-prekey-grace", e.Duration("HUSH_KEYSERVER_SIGNED_PREKEY_GRACE", keyserver.DefaultSignedPreKeyGrace),
		"how long a replaced signed prekey is reported as still in use (env HUSH_KEYSERVER_SIGNED_PREKEY_GRACE)")
	fs.IntVar(&o.maxPreKeys, "max-prekeys", e.Int("HUSH_KEYSERVER_MAX_PREKEYS", keyserver.DefaultMaxStoredPreKeys),
		"most one-time prekeys one device may have stored (env HUSH_KEYSERVER_MAX_PREKEYS)")
	fs.IntVar(&o.lowPreKeys, "low-prekeys", e.Int("HUSH_KEYSERVER_LOW_PREKEYS", keyserver.DefaultLowPreKeys),
		"a fetch leaving a device with fewer one-time prekeys counts in hush_keyserver_prekeys_low_total (env HUSH_KEYSERVER_LOW_PREKEYS)")
	fs.StringVar(&o.replication, "cassandra-replication", e.String("HUSH_KEYSERVER_CASSANDRA_REPLICATION", ""),
		"CQL replication map used if the Cassandra keyspace must be created, e.g.\n\"{'class': 'NetworkTopologyStrategy', 'dc1': 3}\"; default SimpleStrategy with 1 replica (env HUSH_KEYSERVER_CASSANDRA_REPLICATION)")
	fs.StringVar(&o.redis, "redis", e.String("HUSH_REDIS", ""),
		"Redis for the bundle and anonymous rate limits, shared by every key server: host:port, or\nhost:port,host:port for a Redis Cluster; empty: limits in this process only (env HUSH_REDIS)")
	fs.StringVar(&o.redisPrefix, "redis-prefix", e.String("HUSH_REDIS_PREFIX", "hush:"),
		"prefix of every Redis key; the same for all key servers and relays of a deployment (env HUSH_REDIS_PREFIX)")
	fs.StringVar(&o.redisUsername, "redis-username", e.String("HUSH_REDIS_USERNAME", ""),
		"Redis ACL user name; empty: the default user (env HUSH_REDIS_USERNAME)")
	fs.StringVar(&o.redisPassword, "redis-password", "",
		"Redis password (requirepass or ACL). Prefer the env var: flags are visible in ps (env HUSH_REDIS_PASSWORD)")
	fs.DurationVar(&o.shutdownGrace, "shutdown-grace", e.Duration("HUSH_KEYSERVER_SHUTDOWN_GRACE", 15*time.Second),
		"on SIGINT/SIGTERM, how long in-flight requests may finish (env HUSH_KEYSERVER_SHUTDOWN_GRACE)")
	fs.StringVar(&o.logLevel, "log-level", e.String("HUSH_LOG_LEVEL", "info"), "debug, info, warn or error (env HUSH_LOG_LEVEL)")
	fs.StringVar(&o.logFormat, "log-format", e.String("HUSH_LOG_FORMAT", "text"), "text or json (env HUSH_LOG_FORMAT)")
	// The key server's memory is not per connection: the runtime's GC
	// target is right for it.
	o.finishDebug = app.DebugFlags(fs, &o.debug, 0)
	fs.Usage = func() {
		fmt.Fprint(fs.Output(), `Usage: hush-keyserver [flags]

Runs hush's key server: accounts, devices, identity keys, signed, one-time
and last-resort prekeys, and auth tokens, over an HTTP JSON API under /v1/
(see docs/api.md), plus /healthz, /readyz and Prometheus /metrics.
Every flag falls back to the environment variable named with it.

Flags:
`)
		fs.PrintDefaults()
	}
	return fs
}

func parseFlags(args []string, stderr io.Writer) (options, error) {
	var o options
	var e envflag.Defaults
	fs := newFlagSet(&o, &e, stderr)
	if err := fs.Parse(args); err != nil {
		return o, err
	}
	set := map[string]bool{}
	fs.Visit(func(f *flag.Flag) { set[f.Name] = true })
	for name, envName := range secretEnv {
		if v, ok := os.LookupEnv(envName); ok && !set[name] {
			fs.Set(name, v)
		}
	}
	if fs.NArg() > 0 {
		return o, fmt.Errorf("unexpected arguments %q (see --help)", fs.Args())
	}
	if err := e.Err(); err != nil {
		return o, err
	}
	if err := o.finishDebug(); err != nil {
		return o, err
	}
	return o, nil
}

// run serves until ctx ends. ready, if not nil, receives the bound address.
func run(ctx context.Context, args []string, stderr io.Writer, ready chan<- string) error {
	o, err := parseFlags(args, stderr)
	if err != nil {
		return err
	}
	log, err := app.NewLogger(o.logLevel, o.logFormat, stderr)
	if err != nil {
		return err
	}
	dbg, err := app.StartDiagnostics(o.debug, log)
	if err != nil {
		return err
	}
	defer dbg.Close()
	spec, err := keyserver.ParseStoreSpec(o.store)
	if err != nil {
		return err
	}
	key, created, err := keyserver.LoadOrCreateSigningKey(o.signingKey)
	if err != nil {
		return err
	}
	if created {
		log.Info("created a new token-signing key", "file", o.signingKey)
	}
	st, err := keyserver.OpenStore(ctx, spec, keyserver.StoreOptions{CassandraReplication: o.replication, Logger: log})
	if err != nil {
		return err
	}
	defer st.Close()

	bundleRate := ratelimit.Rate{Burst: o.bundleBurst, Per: o.bundleWindow}
	anonRate := ratelimit.Rate{Burst: o.anonBurst, Per: o.anonWindow}
	var bundleLimiter, anonLimiter ratelimit.Limiter
	if o.redis != "" {
		addrs, err := redisroute.ParseAddrs(o.redis)
		if err != nil {
			return fmt.Errorf("--redis: %w", err)
		}
		rdb, err := redisroute.NewClient(addrs, redisroute.ClientOptions{Username: o.redisUsername, Password: o.redisPassword})
		if err != nil {
			return fmt.Errorf("redis: %w", err)
		}
		defer rdb.Close()
		pctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		err = rdb.Ping(pctx).Err()
		cancel()
		if err != nil {
			return fmt.Errorf("redis %v: %w", addrs, err)
		}
		if bundleLimiter, err = redislimit.New(rdb, redislimit.Options{Prefix: o.redisPrefix, Name: "bundle", Rate: bundleRate}); err != nil {
			return fmt.Errorf("bundle limiter: %w", err)
		}
		if anonLimiter, err = redislimit.New(rdb, redislimit.Options{Prefix: o.redisPrefix, Name: "anon", Rate: anonRate}); err != nil {
			return fmt.Errorf("anonymous-call limiter: %w", err)
		}
	}

	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	ks, err := keyserver.New(keyserver.Config{
		SigningKey:        key,
		TokenTTL:          o.tokenTTL,
		ChallengeTTL:      o.challengeTTL,
		InviteCode:        o.inviteCode,
		InternalSecret:    o.internalSecret,
		BundleRate:        bundleRate,
		AnonRate:          anonRate,
		BundleLimiter:     bundleLimiter,
		AnonLimiter:       anonLimiter,
		SignedPreKeyGrace: o.spkGrace,
		MaxStoredPreKeys:  o.maxPreKeys,
		LowPreKeys:        o.lowPreKeys,
		Logger:            log,
		Registerer:        reg,
	}, st)
	if err != nil {
		return err
	}

	var stopping atomic.Bool
	mux := http.NewServeMux()
	mux.Handle("/v1/", ks.Handler())
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "ok\n") })
	mux.HandleFunc("GET /readyz", func(w http.ResponseWriter, r *http.Request) {
		c, cancel := context.WithTimeout(r.Context(), 3*time.Second)
		defer cancel()
		if stopping.Load() {
			http.Error(w, "shutting down", http.StatusServiceUnavailable)
			return
		}
		if err := ks.Ready(c); err != nil {
			http.Error(w, "store unavailable", http.StatusServiceUnavailable)
			return
		}
		io.WriteString(w, "ready\n")
	})
	mux.Handle("GET /metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{Registry: reg}))

	ln, err := net.Listen("tcp", o.listen)
	if err != nil {
		return err
	}
	srv := &http.Server{
		Handler:           mux,
		ReadHeaderTimeout: 10 * time.Second,
		ReadTimeout:       30 * time.Second,
		WriteTimeout:      30 * time.Second,
		IdleTimeout:       2 * time.Minute,
		MaxHeaderBytes:    16 << 10,
		ErrorLog:          slog.NewLogLogger(log.Handler(), slog.LevelWarn),
	}
	log.Info("hush-keyserver listening", "addr", ln.Addr().String(), "store", spec.Kind, "shared_limits", o.redis != "",
		"open_registration", o.inviteCode == "", "internal_api", o.internalSecret != "")
	if ready != nil {
		ready <- ln.Addr().String()
	}
	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(ln) }()
	select {
	case err := <-errc:
		return err
	case <-ctx.Done():
	}
	stopping.Store(true)
	log.Info("shutting down", "grace", o.shutdownGrace)
	sctx, cancel := context.WithTimeout(context.Background(), o.shutdownGrace)
	defer cancel()
	if err := srv.Shutdown(sctx); err != nil {
		return fmt.Errorf("shutdown: %w", err)
	}
	log.Info("stopped")
	return nil
}
