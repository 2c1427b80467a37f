package app

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"strconv"
	"time"

	"github.com/gocql/gocql"
	"github.com/redis/go-redis/v9"

	"github.com/hushchat/hush/server/nodeid"
	"github.com/hushchat/hush/server/push"
	"github.com/hushchat/hush/server/queue"
	"github.com/hushchat/hush/server/queue/cassandra"
	"github.com/hushchat/hush/server/routing/redisroute"
)

// DefaultRedisPrefix starts every Redis key and channel hush writes.
const DefaultRedisPrefix = "hush:"

// ClusterOptions connect hush-relay to the services several relays share.
// Both parts are optional: Redis alone gives shared routing, presence, rate
// limits and node-id leases over per-relay SQLite queues (useful only if
// each device always reaches the same relay); Cassandra alone gives shared
// queues with in-process routing (a device's relay learns of new envelopes
// only when it reconnects) — a real deployment of several relays uses both.
type ClusterOptions struct {
	// Redis is the list of Redis addresses: one for a single server,
	// several for the seeds of a Redis Cluster. Empty: no Redis.
	Redis []string
	// RedisUsername and RedisPassword authenticate to Redis (ACL user or
	// requirepass); empty: none.
	RedisUsername, RedisPassword string
	// RedisPrefix starts every key and channel (default "hush:"); every
	// relay and key server of one deployment uses the same.
	RedisPrefix string

	// Cassandra lists the contact points ("host" or "host:port", port
	// 9042 by default). Empty: queues in SQLite under the data directory.
	Cassandra []string
	// Keyspace holds the relay's tables (queue_*, push_endpoints); it may
	// be the key server's keyspace.
	Keyspace string
	// Replication, when set, creates the keyspace if it is missing with
	// this CQL replication map; otherwise it must exist.
	Replication string
	// Consistency of reads and writes (default LOCAL_QUORUM); LocalDC
	// keeps requests in one data centre.
	Consistency gocql.Consistency
	LocalDC     string

	// NodeIDAuto leases the Snowflake node id from Redis instead of using
	// RelayOptions.NodeID; it requires Redis. NodeIDLease is the lease
	// length (default nodeid.DefaultLease): how long the relay keeps
	// minting ids through a Redis outage, and how long a crashed relay's
	// id stays blocked.
	NodeIDAuto  bool
	NodeIDLease time.Duration
}

func (o *ClusterOptions) check() error {
	if o.RedisPrefix == "" {
		o.RedisPrefix = DefaultRedisPrefix
	}
	if o.NodeIDAuto && len(o.Redis) == 0 {
		return errors.New("--node-id auto needs --redis: node ids are leased from Redis")
	}
	if len(o.Cassandra) > 0 && !validKeyspace(o.Keyspace) {
		return fmt.Errorf("keyspace %q: want 1–48 of [a-z0-9_], starting with a letter", o.Keyspace)
	}
	return nil
}

func validKeyspace(s string) bool {
	if len(s) == 0 || len(s) > 48 || s[0] < 'a' || s[0] > 'z' {
		return false
	}
	for _, c := range s {
		if !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '_') {
			return false
		}
	}
	return true
}

// openRedis returns the one Redis client the relay's router, presence,
// rate limits and node-id lease share, closed last.
func openRedis(ctx context.Context, a *App, o ClusterOptions) (redis.UniversalClient, error) {
	rdb, err := redisroute.NewClient(o.Redis, redisroute.ClientOptions{Username: o.RedisUsername, Password: o.RedisPassword})
	if err != nil {
		return nil, fmt.Errorf("redis: %w", err)
	}
	a.closers = append(a.closers, rdb)
	pctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	if err := rdb.Ping(pctx).Err(); err != nil {
		return nil, fmt.Errorf("redis %v: %w", o.Redis, err)
	}
	return rdb, nil
}

// leaseNodeID leases a node id from Redis. The lease may still be warming
// (a Redis that lost its data); the relay serves meanwhile but refuses
// Sends and reports unready until it is valid.
func leaseNodeID(ctx context.Context, a *App, rdb redis.UniversalClient, o ClusterOptions, log *slog.Logger) (nodeid.Provider, error) {
	lctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	lease, err := nodeid.Acquire(lctx, rdb, nodeid.Options{Prefix: o.RedisPrefix, Lease: o.NodeIDLease, Logger: log})
	if err != nil {
		return nil, fmt.Errorf("lease a node id: %w", err)
	}
	a.closers = append(a.closers, closerFunc(func() error {
		cctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		return lease.Close(cctx)
	}))
	if err := lease.Valid(); err != nil {
		log.Warn("node id leased; sends wait until the lease is valid", "node_id", lease.ID(), "state", err)
	} else {
		log.Info("node id leased", "node_id", lease.ID())
	}
	return lease, nil
}

// openCassandra opens the relay's Cassandra session and, on it, the shared
// queue store and push endpoints. The session is configured as
// cassandra.Open configures its own (token-aware routing, no session retry
// policy: the store retries its idempotent statements itself), and in
// addition: contact points given with one common port make that the port of
// every node gocql discovers (a cluster on a non-default native port, or a
// proxy in front of it), and a node marked down is retried every second
// rather than every minute, so the relay stores again within about a second
// of Cassandra coming back.
func openCassandra(ctx context.Context, a *App, o ClusterOptions, maxQueue int, now func() time.Time, log *slog.Logger) (queue.Store, push.Endpoints, error) {
	hosts, port, err := splitHosts(o.Cassandra)
	if err != nil {
		return nil, nil, err
	}
	cc := gocql.NewCluster(hosts...)
	cc.Port = port
	cc.Timeout, cc.ConnectTimeout = cassandra.DefaultTimeout, cassandra.DefaultTimeout
	cc.Consistency = o.Consistency
	if cc.Consistency == gocql.Any {
		cc.Consistency = gocql.LocalQuorum
	}
	cc.SerialConsistency = gocql.LocalSerial
	// gocql refuses to share a token-aware policy between sessions, so each
	// session (the admin one below, then the relay's) gets its own.
	policy := func() gocql.HostSelectionPolicy {
		fallback := gocql.RoundRobinHostPolicy()
		if o.LocalDC != "" {
			fallback = gocql.DCAwareRoundRobinPolicy(o.LocalDC)
		}
		return gocql.TokenAwareHostPolicy(fallback)
	}
	cc.PoolConfig.HostSelectionPolicy = policy()
	cc.RetryPolicy = nil
	cc.ReconnectInterval = time.Second
	cc.Logger = slog.NewLogLogger(log.Handler(), slog.LevelWarn)
	octx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	if o.Replication != "" {
		admin, err := cc.CreateSession()
		if err != nil {
			return nil, nil, fmt.Errorf("cassandra %v: %w", o.Cassandra, err)
		}
		err = admin.Query(fmt.Sprintf("CREATE KEYSPACE IF NOT EXISTS %s WITH replication = %s", o.Keyspace, o.Replication)).
			WithContext(octx).Exec()
		admin.Close()
		if err != nil {
			return nil, nil, fmt.Errorf("create keyspace %s: %w", o.Keyspace, err)
		}
	}
	cc.Keyspace = o.Keyspace
	cc.PoolConfig.HostSelectionPolicy = policy()
	sess, err := cc.CreateSession()
	if err != nil {
		return nil, nil, fmt.Errorf("cassandra %v keyspace %s: %w", o.Cassandra, o.Keyspace, err)
	}
	a.closers = append(a.closers, closerFunc(func() error { sess.Close(); return nil }))
	st, err := cassandra.New(octx, sess, cassandra.Config{
		Consistency: cc.Consistency,
		Options:     queue.Options{MaxDepth: maxQueue, Clock: now},
		Logger:      log,
	})
	if err != nil {
		return nil, nil, err
	}
	a.closers = append(a.closers, st)
	if err := sess.Query(PushSchema).WithContext(octx).Exec(); err != nil {
		return nil, nil, fmt.Errorf("create push_endpoints: %w", err)
	}
	return st, &cassandraEndpoints{sess: sess}, nil
}

// splitHosts separates "host[:port]" contact points into hosts and the one
// port they share (9042 when none is given).
func splitHosts(list []string) ([]string, int, error) {
	port := 0
	hosts := make([]string, 0, len(list))
	for _, h := range list {
		host, p, err := net.SplitHostPort(h)
		if err != nil {
			hosts = append(hosts, h) // no port
			continue
		}
		n, err := strconv.Atoi(p)
		if err != nil || n < 1 || n > 65535 {
			return nil, 0, fmt.Errorf("cassandra host %q: bad port", h)
		}
		if port != 0 && n != port {
			return nil, 0, fmt.Errorf("cassandra hosts %v: every node must use the same native port", list)
		}
		port = n
		hosts = append(hosts, host)
	}
	if port == 0 {
		port = 9042
	}
	return hosts, port, nil
}

// PushSchema is the CQL of the push-endpoint table the relays share when
// their queues are in Cassandra (hush-relay creates it if missing).
const PushSchema = `CREATE TABLE IF NOT EXISTS push_endpoints (
    account  text,
    device   int,
    endpoint text,
    PRIMARY KEY ((account, device))
);`

// cassandraEndpoints keeps push endpoints in Cassandra, so that whichever
// relay stores an envelope for an offline device can wake it, not only
// the one the device registered with.
type cassandraEndpoints struct {
	sess *gocql.Session
}

// Get implements push.Endpoints.
func (e *cassandraEndpoints) Get(ctx context.Context, dev queue.Device) (string, error) {
	var ep string
	err := e.sess.Query(`SELECT endpoint FROM push_endpoints WHERE account = ? AND device = ?`, dev.Account, int(dev.ID)).
		WithContext(ctx).Idempotent(true).Scan(&ep)
	if errors.Is(err, gocql.ErrNotFound) {
		return "", nil
	}
	if err != nil {
		return "", fmt.Errorf("push endpoint of %s: %w", dev, err)
	}
	return ep, nil
}

// Set implements push.Endpoints.
func (e *cassandraEndpoints) Set(ctx context.Context, dev queue.Device, endpoint string) error {
	q := e.sess.Query(`INSERT INTO push_endpoints (account, device, endpoint) VALUES (?, ?, ?)`, dev.Account, int(dev.ID), endpoint)
	if endpoint == "" {
		q = e.sess.Query(`DELETE FROM push_endpoints WHERE account = ? AND device = ?`, dev.Account, int(dev.ID))
	}
	if err := q.WithContext(ctx).Idempotent(true).Exec(); err != nil {
		return fmt.Errorf("store push endpoint of %s: %w", dev, err)
	}
	return nil
}

// Close implements push.Endpoints; the session is closed with the app.
func (e *cassandraEndpoints) Close() error { return nil }

var _ push.Endpoints = (*cassandraEndpoints)(nil)
