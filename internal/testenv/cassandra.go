package testenv

import (
	"context"
	"fmt"
	"io"
	"log"
	"net"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/gocql/gocql"
)

// Cassandra is the shared test Cassandra cluster and this test's keyspace.
type Cassandra struct {
	// Hosts are the contact points (IP addresses or names, no port).
	Hosts []string
	// Port is the CQL native protocol port every host listens on.
	Port int
	// Keyspace was created for this test (SimpleStrategy, replication
	// factor 1) and is dropped in t.Cleanup. Its name is a valid unquoted
	// CQL identifier: [a-z0-9_], at most 48 characters.
	Keyspace string
}

// defaultCQLPort is used for HUSH_TEST_CASSANDRA hosts given without a port.
const defaultCQLPort = 9042

// ddlTimeout bounds one schema change; Cassandra waits for schema agreement
// and a loaded CI box can take seconds.
const ddlTimeout = 60 * time.Second

// NeedCassandra returns the test Cassandra from HUSH_TEST_CASSANDRA with a
// keyspace created for this test. It fails the test under CI=true and skips
// it otherwise when the cluster is not configured or does not answer.
func NeedCassandra(t testing.TB) Cassandra {
	t.Helper()
	raw := lookup(t, "Cassandra", EnvCassandra)
	hosts, port, err := ParseCassandraHosts(raw)
	if err != nil {
		// A malformed value is a broken setup, never a reason to skip.
		t.Fatalf("testenv: %s=%q: %v", EnvCassandra, raw, err)
	}
	c := Cassandra{Hosts: hosts, Port: port, Keyspace: uniqueName(t, '_', 48)}

	adminCfg := c.cluster("system")
	adminCfg.Timeout = ddlTimeout // schema changes wait for agreement
	admin, err := adminCfg.CreateSession()
	if err != nil {
		unavailable(t, inCI(), "Cassandra", fmt.Sprintf("%s=%s does not answer: %v", EnvCassandra, raw, err))
	}
	t.Cleanup(admin.Close)

	ctx, cancel := context.WithTimeout(context.Background(), ddlTimeout)
	defer cancel()
	create := fmt.Sprintf(`CREATE KEYSPACE %s WITH replication = {'class': 'SimpleStrategy', 'replication_factor': 1}`, c.Keyspace)
	if err := admin.Query(create).WithContext(ctx).Exec(); err != nil {
		t.Fatalf("testenv: create keyspace %s: %v", c.Keyspace, err)
	}
	// Registered after admin.Close, so it runs before it (cleanups are LIFO),
	// and after every session the test opened through Session.
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), ddlTimeout)
		defer cancel()
		if err := admin.Query("DROP KEYSPACE IF EXISTS " + c.Keyspace).WithContext(ctx).Exec(); err != nil {
			t.Errorf("testenv: drop keyspace %s: %v", c.Keyspace, err)
		}
	})
	return c
}

// Cluster returns a gocql configuration for c with c.Keyspace as the
// session keyspace, for code under test that builds its own session.
func (c Cassandra) Cluster() *gocql.ClusterConfig {
	return c.cluster(c.Keyspace)
}

// Session returns a session on c.Keyspace, closed in t.Cleanup.
func (c Cassandra) Session(t testing.TB) *gocql.Session {
	t.Helper()
	s, err := c.Cluster().CreateSession()
	if err != nil {
		t.Fatalf("testenv: cassandra session on %s: %v", c.Keyspace, err)
	}
	t.Cleanup(s.Close)
	return s
}

func (c Cassandra) cluster(keyspace string) *gocql.ClusterConfig {
	cfg := gocql.NewCluster(c.Hosts...)
	cfg.Port = c.Port
	cfg.Keyspace = keyspace
	// One loopback node on a shared 2-core machine: a stalled JVM must
	// slow a test down, not fail it.
	cfg.Timeout = 20 * time.Second
	cfg.ConnectTimeout = 10 * time.Second
	cfg.NumConns = 1
	return cfg
}

// CheckCassandra reports whether a CQL node among hosts answers
// `SELECT release_version FROM system.local`, and returns that version.
func CheckCassandra(ctx context.Context, hosts []string, port int) (string, error) {
	cfg := gocql.NewCluster(hosts...)
	cfg.Port = port
	cfg.NumConns = 1
	cfg.ConnectTimeout = 5 * time.Second
	cfg.Timeout = 10 * time.Second
	cfg.DisableInitialHostLookup = true
	// A node that is still starting refuses connections; that is the
	// expected answer while up polls, not something to log.
	cfg.Logger = log.New(io.Discard, "", 0)
	s, err := cfg.CreateSession()
	if err != nil {
		return "", fmt.Errorf("connect to cassandra %s port %d: %w", strings.Join(hosts, ","), port, err)
	}
	defer s.Close()
	var version string
	if err := s.Query("SELECT release_version FROM system.local").WithContext(ctx).Scan(&version); err != nil {
		return "", fmt.Errorf("query cassandra release_version: %w", err)
	}
	return version, nil
}

// ParseCassandraHosts splits a HUSH_TEST_CASSANDRA value ("host:port",
// "h1:port,h2:port" or "h1,h2") into hosts and the one port they share;
// hosts without a port use 9042.
func ParseCassandraHosts(s string) ([]string, int, error) {
	port := 0
	var hosts []string
	for _, part := range strings.Split(s, ",") {
		part = strings.TrimSpace(part)
		if part == "" {
			return nil, 0, fmt.Errorf("empty host in list")
		}
		host, p := part, 0
		if h, ps, err := net.SplitHostPort(part); err == nil {
			n, err := strconv.Atoi(ps)
			if err != nil || n < 1 || n > 65535 {
				return nil, 0, fmt.Errorf("host %q: bad port %q", part, ps)
			}
			host, p = h, n
		} else if strings.Count(part, ":") == 1 {
			return nil, 0, fmt.Errorf("host %q: %v", part, err)
		}
		if host == "" {
			return nil, 0, fmt.Errorf("host %q: empty host name", part)
		}
		if p != 0 {
			if port != 0 && port != p {
				return nil, 0, fmt.Errorf("hosts use different ports (%d and %d); all must share one", port, p)
			}
			port = p
		}
		hosts = append(hosts, host)
	}
	if port == 0 {
		port = defaultCQLPort
	}
	return hosts, port, nil
}
