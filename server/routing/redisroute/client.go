package redisroute

import (
	"fmt"
	"net"
	"strconv"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"
)

// ClientOptions are what an operator sets about the Redis connection;
// everything else NewClient chooses for a relay's needs.
type ClientOptions struct {
	// Username and Password for Redis ACLs / requirepass (empty: none).
	Username, Password string
	// Timeout bounds dialing and each read and write (default 1s). The
	// router's own, shorter per-operation deadlines apply on top of it
	// because NewClient enables context deadlines.
	Timeout time.Duration
}

// ParseAddrs splits a --redis value, "host:port[,host:port...]", into
// addresses. Several addresses mean a Redis Cluster (they are seeds; the
// client discovers the rest).
func ParseAddrs(s string) ([]string, error) {
	var out []string
	for _, a := range strings.Split(s, ",") {
		a = strings.TrimSpace(a)
		host, port, err := net.SplitHostPort(a)
		if err != nil {
			return nil, fmt.Errorf("redis address %q: want host:port: %w", a, err)
		}
		if host == "" {
			return nil, fmt.Errorf("redis address %q: empty host", a)
		}
		if p, err := strconv.Atoi(port); err != nil || p < 1 || p > 65535 {
			return nil, fmt.Errorf("redis address %q: bad port %q", a, port)
		}
		out = append(out, a)
	}
	return out, nil
}

// NewClient returns a go-redis client for addrs: a *redis.Client for one
// address, a *redis.ClusterClient (sharded pub/sub, per-slot routing) for
// several. It is configured for a relay that must never wait long on
// Redis: context deadlines are honoured on every read and write, dialing
// and I/O are bounded by o.Timeout, and a failed command is retried at
// most once. The same client can serve the router, presence, rate limits
// and node-id leases.
func NewClient(addrs []string, o ClientOptions) (redis.UniversalClient, error) {
	if len(addrs) == 0 {
		return nil, fmt.Errorf("redis: no address")
	}
	if o.Timeout <= 0 {
		o.Timeout = time.Second
	}
	return redis.NewUniversalClient(&redis.UniversalOptions{
		Addrs:                 addrs,
		Username:              o.Username,
		Password:              o.Password,
		DialTimeout:           o.Timeout,
		ReadTimeout:           o.Timeout,
		WriteTimeout:          o.Timeout,
		PoolTimeout:           o.Timeout,
		ContextTimeoutEnabled: true,
		MaxRetries:            1,
		MinRetryBackoff:       10 * time.Millisecond,
		MaxRetryBackoff:       100 * time.Millisecond,
	}), nil
}

// contextDeadlines reports whether c honours context deadlines on reads
// and writes (unknown client types are assumed to).
func contextDeadlines(c redis.UniversalClient) bool {
	switch c := c.(type) {
	case *redis.Client:
		return c.Options().ContextTimeoutEnabled
	case *redis.ClusterClient:
		return c.Options().ContextTimeoutEnabled
	}
	return true
}
