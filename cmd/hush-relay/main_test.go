package main

import (
	"bytes"
	"context"
	"errors"
	"flag"
	"io"
	"strings"
	"testing"
	"time"

	"github.com/gocql/gocql"
)

func TestHelpDocumentsEveryFlag(t *testing.T) {
	var out bytes.Buffer
	if _, err := parseFlags([]string{"--help"}, &out); !errors.Is(err, flag.ErrHelp) {
		t.Fatalf("--help: %v", err)
	}
	help := out.String()
	for _, name := range []string{"listen", "data", "keyserver", "internal-secret", "keyserver-key", "directory-ttl",
		"node-id", "ttl", "max-queue", "sweep-interval", "ping-interval", "allow-private-push", "shutdown-grace",
		"log-level", "log-format", "online-window", "node-id-lease", "redis", "redis-prefix", "redis-username", "redis-password",
		"cassandra", "keyspace", "consistency", "cassandra-local-dc", "cassandra-replication", "print-schema",
		"media", "media-dir", "media-public-url", "max-upload", "media-quota", "media-retention",
		"s3-bucket", "s3-prefix", "s3-region", "s3-endpoint", "s3-path-style", "debug-listen", "gc-percent"} {
		if !strings.Contains(help, "  -"+name+" ") && !strings.Contains(help, "  -"+name+"\n") {
			t.Errorf("--help does not list -%s", name)
		}
	}
	// Every flag but --print-schema has one.
	if strings.Count(help, "(env HUSH_") != 39 {
		t.Errorf("--help names %d env variables, want one per flag (39)", strings.Count(help, "(env HUSH_"))
	}
}

func TestFlagsAndEnv(t *testing.T) {
	if _, err := parseFlags(nil, io.Discard); err == nil || !strings.Contains(err.Error(), "internal-secret") {
		t.Fatalf("no internal secret: %v", err)
	}
	t.Setenv("HUSH_INTERNAL_SECRET", "s3cret")
	t.Setenv("HUSH_KEYSERVER_URL", "http://127.0.0.1:1")
	o, err := parseFlags(nil, io.Discard)
	if err != nil || o.cfg.InternalSecret != "s3cret" || o.cfg.KeyServer != "http://127.0.0.1:1" {
		t.Fatalf("env: %+v, %v", o.cfg, err)
	}
	var out bytes.Buffer
	parseFlags([]string{"--help"}, &out)
	if strings.Contains(out.String(), "s3cret") {
		t.Fatal("--help prints the secret")
	}
	if _, err := parseFlags([]string{"--keyserver-key", "AAAA"}, io.Discard); err == nil {
		t.Fatal("short key accepted")
	}
	o, err = parseFlags([]string{"--keyserver-key", "sRhlBaMcBqofqI0pvXD8aQTaUJcEXr0y+mc5Mz0JF+w="}, io.Discard)
	if err != nil || len(o.cfg.KeyServerKey) != 32 {
		t.Fatalf("key: %v", err)
	}
}

func TestClusterFlags(t *testing.T) {
	t.Setenv("HUSH_INTERNAL_SECRET", "s3cret")
	o, err := parseFlags(nil, io.Discard)
	cl := o.cfg.Cluster
	if err != nil || cl.NodeIDAuto || o.cfg.Relay.NodeID != 0 || len(cl.Redis) != 0 || len(cl.Cassandra) != 0 ||
		cl.Consistency != gocql.LocalQuorum || cl.RedisPrefix != "hush:" || o.cfg.Relay.ClockOffset != 0 {
		t.Fatalf("defaults: %+v, %v", cl, err)
	}
	o, err = parseFlags([]string{"--node-id", "auto", "--redis", "127.0.0.1:7000,127.0.0.1:7001", "--cassandra", "10.0.0.1, 10.0.0.2:9043",
		"--keyspace", "chat", "--consistency", "quorum", "--node-id-lease", "30s"}, io.Discard)
	cl = o.cfg.Cluster
	if err != nil || !cl.NodeIDAuto || len(cl.Redis) != 2 || len(cl.Cassandra) != 2 || cl.Cassandra[1] != "10.0.0.2:9043" ||
		cl.Keyspace != "chat" || cl.Consistency != gocql.Quorum || cl.NodeIDLease != 30*time.Second {
		t.Fatalf("cluster flags: %+v, %v", cl, err)
	}
	if o, err = parseFlags([]string{"--node-id", "17"}, io.Discard); err != nil || o.cfg.Relay.NodeID != 17 {
		t.Fatalf("fixed node id: %v, %v", o.cfg.Relay.NodeID, err)
	}
	for _, bad := range [][]string{
		{"--node-id", "auto"}, // no Redis to lease from
		{"--node-id", "1024"},
		{"--node-id", "-1"},
		{"--consistency", "MOSTLY"},
		{"--consistency", "ANY"},
		{"--cassandra", "127.0.0.1", "--keyspace", ""},
		{"--redis", "no-port"},
	} {
		if _, err := parseFlags(bad, io.Discard); err == nil {
			t.Errorf("%q accepted", bad)
		}
	}
	t.Setenv("HUSH_REDIS_PASSWORD", "redis-secret")
	t.Setenv("HUSH_TESTING_CLOCK_OFFSET", "-3s")
	o, err = parseFlags(nil, io.Discard)
	if err != nil || o.cfg.Cluster.RedisPassword != "redis-secret" || o.cfg.Relay.ClockOffset != -3*time.Second {
		t.Fatalf("env: %+v, %v", o.cfg.Cluster, err)
	}
	var out bytes.Buffer
	parseFlags([]string{"--help"}, &out)
	if strings.Contains(out.String(), "redis-secret") || strings.Contains(out.String(), "TESTING_CLOCK") {
		t.Fatal("--help shows the Redis password or the testing clock offset")
	}
	t.Setenv("HUSH_TESTING_CLOCK_OFFSET", "soon")
	if _, err := parseFlags(nil, io.Discard); err == nil {
		t.Fatal("bad clock offset accepted")
	}
}

func TestPrintSchema(t *testing.T) {
	var out bytes.Buffer
	if err := run(context.Background(), []string{"--print-schema"}, &out, io.Discard); err != nil {
		t.Fatal(err)
	}
	for _, table := range []string{"queue_messages", "queue_payloads", "queue_claims", "queue_done", "queue_commits",
		"queue_expiry", "queue_sweep", "push_endpoints"} {
		if !strings.Contains(out.String(), "CREATE TABLE IF NOT EXISTS "+table+" ") {
			t.Errorf("--print-schema lacks %s:\n%s", table, out.String())
		}
	}
}
