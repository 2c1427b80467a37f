package main

import (
	"bytes"
	"errors"
	"flag"
	"io"
	"strings"
	"testing"
	"time"
)

func TestHelpDocumentsEveryFlag(t *testing.T) {
	var out bytes.Buffer
	if _, err := parseFlags([]string{"--help"}, &out); !errors.Is(err, flag.ErrHelp) {
		t.Fatalf("--help: %v", err)
	}
	help := out.String()
	for _, name := range []string{"listen", "data", "node-id", "ttl", "max-queue", "sweep-interval", "ping-interval",
		"allow-private-push", "invite-code", "token-ttl", "anon-rate", "anon-rate-window", "bundle-rate",
		"bundle-rate-window", "shutdown-grace", "log-level", "log-format", "online-window", "media", "media-dir", "media-public-url",
		"max-upload", "media-quota", "media-retention", "s3-bucket", "s3-prefix", "s3-region", "s3-endpoint", "s3-path-style", "debug-listen", "gc-percent"} {
		i := strings.Index(help, "  -"+name+" ")
		if i < 0 {
			i = strings.Index(help, "  -"+name+"\n")
		}
		if i < 0 {
			t.Errorf("--help does not list -%s", name)
			continue
		}
		if !strings.Contains(help[i:], "(env HUSH_") {
			t.Errorf("-%s has no env variable in --help", name)
		}
	}
	if strings.Count(help, "(env HUSH_") != 31 {
		t.Errorf("--help names %d env variables, want one per flag (31)", strings.Count(help, "(env HUSH_"))
	}
}

func TestFlagsAndEnv(t *testing.T) {
	o, err := parseFlags(nil, io.Discard)
	if err != nil || o.cfg.Listen != "127.0.0.1:8080" || o.cfg.DataDir != ".hush-data" || o.cfg.Relay.TTL != 30*24*time.Hour {
		t.Fatalf("defaults: %+v, %v", o.cfg, err)
	}
	t.Setenv("HUSH_LISTEN", "127.0.0.1:9")
	t.Setenv("HUSH_DATA", "/tmp/x")
	t.Setenv("HUSH_NODE_ID", "7")
	t.Setenv("HUSH_TTL", "48h")
	t.Setenv("HUSH_MAX_QUEUE", "12")
	t.Setenv("HUSH_INVITE_CODE", "secret-invite")
	o, err = parseFlags(nil, io.Discard)
	if err != nil || o.cfg.Listen != "127.0.0.1:9" || o.cfg.DataDir != "/tmp/x" || o.cfg.Relay.NodeID != 7 ||
		o.cfg.Relay.TTL != 48*time.Hour || o.cfg.Relay.MaxQueue != 12 || o.cfg.InviteCode != "secret-invite" {
		t.Fatalf("env: %+v, %v", o.cfg, err)
	}
	o, err = parseFlags([]string{"--listen", "127.0.0.1:10", "--max-queue", "3"}, io.Discard)
	if err != nil || o.cfg.Listen != "127.0.0.1:10" || o.cfg.Relay.MaxQueue != 3 {
		t.Fatalf("flag over env: %+v, %v", o.cfg, err)
	}
	var out bytes.Buffer
	parseFlags([]string{"--help"}, &out)
	if strings.Contains(out.String(), "secret-invite") {
		t.Fatal("--help prints the invite code from the environment")
	}
	t.Setenv("HUSH_TTL", "forever")
	if _, err := parseFlags(nil, io.Discard); err == nil || !strings.Contains(err.Error(), "HUSH_TTL") {
		t.Fatalf("bad env value: %v", err)
	}
	if _, err := parseFlags([]string{"extra"}, io.Discard); err == nil {
		t.Fatal("positional argument accepted")
	}
}

func TestMediaFlags(t *testing.T) {
	o, err := parseFlags(nil, io.Discard)
	if err != nil || o.cfg.Relay.Media.Kind != "disk" || o.cfg.Relay.Media.MaxUpload != 100<<20 ||
		o.cfg.Relay.Media.QuotaBytes != 2<<30 || o.cfg.Relay.Media.Retention != 720*time.Hour {
		t.Fatalf("media defaults: %+v, %v", o.cfg.Relay.Media, err)
	}
	t.Setenv("HUSH_MAX_UPLOAD", "5MiB")
	t.Setenv("HUSH_S3_ENDPOINT", "http://127.0.0.1:7070")
	o, err = parseFlags([]string{"--media", "s3", "--s3-bucket", "b", "--s3-path-style", "--media-quota", "1G"}, io.Discard)
	m := o.cfg.Relay.Media
	if err != nil || m.Kind != "s3" || m.S3.Bucket != "b" || !m.S3.PathStyle || m.S3.Endpoint != "http://127.0.0.1:7070" ||
		m.MaxUpload != 5<<20 || m.QuotaBytes != 1e9 {
		t.Fatalf("media flags: %+v, %v", m, err)
	}
	for _, bad := range [][]string{
		{"--media", "s3"},                  // no bucket
		{"--media", "tape"},                // unknown backend
		{"--max-upload", "lots"},           // not a size
		{"--media-quota", "1MiB"},          // below the upload limit
		{"--media-retention", "-1h"},       // negative
		{"--max-upload", "99999999999GiB"}, // overflows
	} {
		if _, err := parseFlags(bad, io.Discard); err == nil {
			t.Errorf("%q accepted", bad)
		}
	}
}
