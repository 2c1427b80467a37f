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
		"bundle-rate-window", "shutdown-grace", "log-level", "log-format"} {
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
	if strings.Count(help, "(env HUSH_") != 17 {
		t.Errorf("--help names %d env variables, want one per flag (17)", strings.Count(help, "(env HUSH_"))
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
