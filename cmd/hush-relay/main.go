// Command hush-relay runs hush's blind relay on its own, next to a
// separate hush-keyserver: it verifies tokens with the key server's public
// key (fetched at start, or given with --keyserver-key) and asks the key
// server's internal endpoint for device lists. Alone it keeps its queues in
// SQLite under --data; with --cassandra and --redis it is one node of a
// scaled-out deployment (docs/deploy.md).
//
// Every flag falls back to the environment variable named in --help; a
// flag on the command line wins. This file only parses flags; the wiring is
// server/app.StartRelay.
//
// For tests of clock skew between relays only, the environment variable
// HUSH_TESTING_CLOCK_OFFSET (a Go duration, e.g. -3s) shifts this relay's
// clock: server ids, server times, expiry and presence. It has no flag on
// purpose and is logged loudly when set; never set it in production.
package main

import (
	"context"
	"crypto/ed25519"
	"encoding/base64"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/gocql/gocql"

	"github.com/hushchat/hush/internal/envflag"
	"github.com/hushchat/hush/server"
	"github.com/hushchat/hush/server/app"
	"github.com/hushchat/hush/server/nodeid"
	"github.com/hushchat/hush/server/presence"
	"github.com/hushchat/hush/server/queue"
	"github.com/hushchat/hush/server/queue/cassandra"
	"github.com/hushchat/hush/server/routing/redisroute"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, os.Args[1:], os.Stdout, os.Stderr); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			os.Exit(0)
		}
		fmt.Fprintln(os.Stderr, "hush-relay:", err)
		os.Exit(1)
	}
}

type options struct {
	cfg                           app.RelayConfig
	nodeID                        string
	key                           string
	redis, cassandra, consistency string
	printSchema                   bool
	logLevel, logFormat           string
	debug                         app.DebugOptions
}

func parseFlags(args []string, stderr io.Writer) (options, error) {
	var o options
	var e envflag.Defaults
	fs := flag.NewFlagSet("hush-relay", flag.ContinueOnError)
	fs.SetOutput(stderr)
	c := &o.cfg
	fs.StringVar(&c.Listen, "listen", e.String("HUSH_RELAY_LISTEN", "127.0.0.1:8082"),
		"address to serve WebSockets (/v1/ws), media (/v1/media/), /healthz, /readyz and /metrics on (env HUSH_RELAY_LISTEN)")
	fs.StringVar(&c.DataDir, "data", e.String("HUSH_RELAY_DATA", ".hush-relay-data"),
		"data directory, created with mode 0700: queue.db (envelopes waiting for their ack) and\npush.db (push endpoints) unless --cassandra holds them, and media/ for --media disk (env HUSH_RELAY_DATA)")
	fs.StringVar(&c.KeyServer, "keyserver", e.String("HUSH_KEYSERVER_URL", "http://127.0.0.1:8081"),
		"base URL of the key server (env HUSH_KEYSERVER_URL)")
	fs.StringVar(&c.InternalSecret, "internal-secret", "",
		"the key server's --internal-secret, for its device-list endpoint. Prefer the env var:\nflags are visible in ps (env HUSH_INTERNAL_SECRET)")
	fs.StringVar(&o.key, "keyserver-key", e.String("HUSH_KEYSERVER_KEY", ""),
		"the key server's Ed25519 token key, base64 (as served at /v1/server-key); empty means\nfetch it from --keyserver at start — do that only over a channel you trust (env HUSH_KEYSERVER_KEY)")
	fs.DurationVar(&c.DirectoryTTL, "directory-ttl", e.Duration("HUSH_DIRECTORY_TTL", 10*time.Second),
		"how long a device list is cached; bounds how long a removed device may still connect (env HUSH_DIRECTORY_TTL)")
	fs.StringVar(&o.nodeID, "node-id", e.String("HUSH_NODE_ID", "0"),
		"Snowflake node id for server ids: a number 0–1023, unique per relay sharing a queue store,\nor auto to lease a free one from --redis (env HUSH_NODE_ID)")
	fs.DurationVar(&c.Cluster.NodeIDLease, "node-id-lease", e.Duration("HUSH_NODE_ID_LEASE", nodeid.DefaultLease),
		"with --node-id auto: how long a lease lets the relay mint ids without reaching Redis (a longer\nRedis outage suspends sends), and how long a crashed relay's id stays blocked (env HUSH_NODE_ID_LEASE)")
	fs.StringVar(&o.redis, "redis", e.String("HUSH_REDIS", ""),
		"Redis for routing between relays, presence, media rate limits and --node-id auto: host:port,\nor several host:port,host:port for a Redis Cluster; empty: this relay alone (env HUSH_REDIS)")
	fs.StringVar(&c.Cluster.RedisPrefix, "redis-prefix", e.String("HUSH_REDIS_PREFIX", app.DefaultRedisPrefix),
		"prefix of every Redis key and channel; the same for all relays and key servers of a deployment (env HUSH_REDIS_PREFIX)")
	fs.StringVar(&c.Cluster.RedisUsername, "redis-username", e.String("HUSH_REDIS_USERNAME", ""),
		"Redis ACL user name; empty: the default user (env HUSH_REDIS_USERNAME)")
	fs.StringVar(&c.Cluster.RedisPassword, "redis-password", "",
		"Redis password (requirepass or ACL). Prefer the env var: flags are visible in ps (env HUSH_REDIS_PASSWORD)")
	fs.StringVar(&o.cassandra, "cassandra", e.String("HUSH_CASSANDRA", ""),
		"Cassandra contact points host[:port],host[:port] for the shared queues and push endpoints;\nempty: SQLite under --data (env HUSH_CASSANDRA)")
	fs.StringVar(&c.Cluster.Keyspace, "keyspace", e.String("HUSH_KEYSPACE", "hush"),
		"Cassandra keyspace of the relay's tables (queue_*, push_endpoints); may be the key server's (env HUSH_KEYSPACE)")
	fs.StringVar(&o.consistency, "consistency", e.String("HUSH_CONSISTENCY", "LOCAL_QUORUM"),
		"Cassandra consistency of reads and writes: LOCAL_QUORUM, QUORUM, EACH_QUORUM, ALL, ONE… (env HUSH_CONSISTENCY)")
	fs.StringVar(&c.Cluster.LocalDC, "cassandra-local-dc", e.String("HUSH_CASSANDRA_LOCAL_DC", ""),
		"keep Cassandra requests in this data centre (DC-aware routing); empty: any (env HUSH_CASSANDRA_LOCAL_DC)")
	fs.StringVar(&c.Cluster.Replication, "cassandra-replication", e.String("HUSH_CASSANDRA_REPLICATION", ""),
		"if set, create the keyspace when missing with this CQL replication map, e.g.\n\"{'class': 'NetworkTopologyStrategy', 'dc1': 3}\"; empty: the keyspace must exist (env HUSH_CASSANDRA_REPLICATION)")
	fs.BoolVar(&o.printSchema, "print-schema", false,
		"print the CQL of the relay's Cassandra tables (run it in the keyspace) and exit; no other flag is needed")
	finishMedia := app.MediaFlags(fs, &c.Relay.Media)
	finishDebug := app.DebugFlags(fs, &o.debug, app.DefaultGCPercent)
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
		"allow push endpoints on loopback and private addresses (env HUSH_ALLOW_PRIVATE_PUSH)")
	fs.DurationVar(&c.ShutdownGrace, "shutdown-grace", e.Duration("HUSH_SHUTDOWN_GRACE", 15*time.Second),
		"on SIGINT/SIGTERM, how long clients and in-flight sends get to finish (env HUSH_SHUTDOWN_GRACE)")
	fs.StringVar(&o.logLevel, "log-level", e.String("HUSH_LOG_LEVEL", "info"), "debug, info, warn or error (env HUSH_LOG_LEVEL)")
	fs.StringVar(&o.logFormat, "log-format", e.String("HUSH_LOG_FORMAT", "text"), "text or json (env HUSH_LOG_FORMAT)")
	fs.Usage = func() {
		fmt.Fprint(fs.Output(), `Usage: hush-relay [flags]

Runs hush's blind relay (WebSocket at /v1/ws, media under /v1/media/,
/healthz, /readyz, Prometheus /metrics) next to a separate hush-keyserver
started with --internal-secret. Alone it stores envelopes under --data until
acknowledged; with --cassandra and --redis several relays behind one load
balancer share queues, routing, presence and limits (docs/deploy.md).
SIGINT or SIGTERM shuts down gracefully: clients are told to reconnect
elsewhere. A relay whose leased node id is taken by another exits with 1.
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
	if v, ok := os.LookupEnv("HUSH_REDIS_PASSWORD"); ok && !set["redis-password"] {
		c.Cluster.RedisPassword = v
	}
	if o.printSchema {
		return o, nil
	}
	if fs.NArg() > 0 {
		return o, fmt.Errorf("unexpected arguments %q (see --help)", fs.Args())
	}
	if err := e.Err(); err != nil {
		return o, err
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
	if err := finishMedia(); err != nil {
		return o, err
	}
	if err := finishDebug(); err != nil {
		return o, err
	}
	if o.nodeID == "auto" {
		c.Cluster.NodeIDAuto = true
	} else {
		n, err := strconv.Atoi(o.nodeID)
		if err != nil || n < 0 || n > nodeid.MaxID {
			return o, fmt.Errorf("--node-id %q: want auto or a number 0–%d", o.nodeID, nodeid.MaxID)
		}
		c.Relay.NodeID = int64(n)
	}
	var err error
	if o.redis != "" {
		if c.Cluster.Redis, err = redisroute.ParseAddrs(o.redis); err != nil {
			return o, fmt.Errorf("--redis: %w", err)
		}
	}
	if c.Cluster.NodeIDAuto && len(c.Cluster.Redis) == 0 {
		return o, errors.New("--node-id auto needs --redis")
	}
	if o.cassandra != "" {
		for _, h := range strings.Split(o.cassandra, ",") {
			if h = strings.TrimSpace(h); h != "" {
				c.Cluster.Cassandra = append(c.Cluster.Cassandra, h)
			}
		}
		if c.Cluster.Keyspace == "" {
			return o, errors.New("--cassandra needs --keyspace")
		}
	}
	if c.Cluster.Consistency, err = gocql.ParseConsistencyWrapper(strings.ToUpper(o.consistency)); err != nil || c.Cluster.Consistency == gocql.Any {
		return o, fmt.Errorf("--consistency %q: want a consistency level such as LOCAL_QUORUM", o.consistency)
	}
	if v, ok := os.LookupEnv("HUSH_TESTING_CLOCK_OFFSET"); ok {
		d, err := time.ParseDuration(v)
		if err != nil {
			return o, fmt.Errorf("HUSH_TESTING_CLOCK_OFFSET=%q: %w", v, err)
		}
		c.Relay.ClockOffset = d
	}
	return o, nil
}

func run(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	o, err := parseFlags(args, stderr)
	if err != nil {
		return err
	}
	if o.printSchema {
		_, err := fmt.Fprintf(stdout, "-- hush-relay tables (queue schema version %d); run in the relay's keyspace\n%s\n\n%s\n",
			cassandra.SchemaVersion, strings.TrimSpace(cassandra.Schema()), app.PushSchema)
		return err
	}
	if o.cfg.Logger, err = app.NewLogger(o.logLevel, o.logFormat, stderr); err != nil {
		return err
	}
	if o.cfg.Relay.ClockOffset != 0 {
		o.cfg.Logger.Warn("HUSH_TESTING_CLOCK_OFFSET is set: this relay's clock is shifted, for skew tests only", "offset", o.cfg.Relay.ClockOffset)
	}
	dbg, err := app.StartDiagnostics(o.debug, o.cfg.Logger)
	if err != nil {
		return err
	}
	defer dbg.Close()
	a, err := app.StartRelay(ctx, o.cfg)
	if err != nil {
		return err
	}
	return a.Wait(ctx)
}
