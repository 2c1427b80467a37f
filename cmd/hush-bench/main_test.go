package main

import (
	"bytes"
	"context"
	"encoding/json"
	"strings"
	"testing"

	"github.com/hushchat/hush/server/app/apptest"
)

func TestUsage(t *testing.T) {
	var out, errs bytes.Buffer
	if code, err := run(context.Background(), nil, &out, &errs); code != 2 || err == nil {
		t.Fatalf("no scenario: %d, %v", code, err)
	}
	if !strings.Contains(errs.String(), "throughput") || !strings.Contains(errs.String(), "--anon-rate") {
		t.Fatalf("usage lacks the scenarios or the server flags:\n%s", errs.String())
	}
	if code, _ := run(context.Background(), []string{"warp"}, &out, &errs); code != 2 {
		t.Fatalf("unknown scenario: exit %d", code)
	}
	if code, _ := run(context.Background(), []string{"throughput", "--server", "http://10.1.2.3:8080"}, &out, &errs); code != 2 {
		t.Fatalf("remote server: exit %d", code)
	}
	for name := range scenarios {
		errs.Reset()
		if code, _ := run(context.Background(), []string{name, "--help"}, &out, &errs); code != 0 || !strings.Contains(errs.String(), "-server") {
			t.Fatalf("%s --help: exit %d\n%s", name, code, errs.String())
		}
	}
}

// TestThroughputJSON runs the command as make bench does, briefly, against
// an in-process hush-server, and checks the JSON fields and the counts.
func TestThroughputJSON(t *testing.T) {
	a := apptest.Start(t)
	var out, errs bytes.Buffer
	code, err := run(context.Background(), []string{"throughput", "--server", a.URL(), "--json", "--quiet",
		"--pairs", "2", "--window", "8", "--warmup", "100ms", "--duration", "400ms"}, &out, &errs)
	if code != 0 || err != nil {
		t.Fatalf("exit %d: %v\n%s", code, err, errs.String())
	}
	var res struct {
		Scenario   string  `json:"scenario"`
		MsgsPerS   float64 `json:"msgs_per_s"`
		Acked      int64   `json:"acked"`
		Delivered  int64   `json:"delivered"`
		Lost       *int64  `json:"lost"`
		Duplicated *int64  `json:"duplicated"`
		LatencyMs  struct {
			N   int     `json:"n"`
			P50 float64 `json:"p50"`
		} `json:"latency_ms"`
		ServerPID int `json:"server_pid"`
	}
	if err := json.Unmarshal(out.Bytes(), &res); err != nil {
		t.Fatalf("output is not one JSON object: %v\n%s", err, out.String())
	}
	if res.Scenario != "throughput" || res.Lost == nil || *res.Lost != 0 || res.Duplicated == nil || *res.Duplicated != 0 ||
		res.Acked == 0 || res.Delivered != res.Acked || res.LatencyMs.N == 0 {
		t.Fatalf("figures: %s", out.String())
	}
	if res.ServerPID == 0 {
		t.Fatalf("the in-process server's pid was not found from its port: %s", out.String())
	}
}
