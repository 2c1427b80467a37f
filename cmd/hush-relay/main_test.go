package main

import (
	"bytes"
	"errors"
	"flag"
	"io"
	"strings"
	"testing"
)

func TestHelpDocumentsEveryFlag(t *testing.T) {
	var out bytes.Buffer
	if _, err := parseFlags([]string{"--help"}, &out); !errors.Is(err, flag.ErrHelp) {
		t.Fatalf("--help: %v", err)
	}
	help := out.String()
	for _, name := range []string{"listen", "data", "keyserver", "internal-secret", "keyserver-key", "directory-ttl",
		"node-id", "ttl", "max-queue", "sweep-interval", "ping-interval", "allow-private-push", "shutdown-grace",
		"log-level", "log-format"} {
		if !strings.Contains(help, "  -"+name+" ") && !strings.Contains(help, "  -"+name+"\n") {
			t.Errorf("--help does not list -%s", name)
		}
	}
	if strings.Count(help, "(env HUSH_") != 15 {
		t.Errorf("--help names %d env variables, want one per flag (15)", strings.Count(help, "(env HUSH_"))
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
