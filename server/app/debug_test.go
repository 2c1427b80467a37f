package app

import (
	"flag"
	"io"
	"log/slog"
	"net/http"
	"runtime/debug"
	"strings"
	"testing"
)

func TestDebugFlags(t *testing.T) {
	for _, tc := range []struct {
		args    []string
		wantErr string
		want    DebugOptions
	}{
		{args: nil, want: DebugOptions{GCPercent: 50}},
		{args: []string{"--debug-listen", "127.0.0.1:6060", "--gc-percent", "0"}, want: DebugOptions{Listen: "127.0.0.1:6060"}},
		{args: []string{"--debug-listen", "localhost:6060"}, want: DebugOptions{Listen: "localhost:6060", GCPercent: 50}},
		{args: []string{"--debug-listen", "[::1]:6060"}, want: DebugOptions{Listen: "[::1]:6060", GCPercent: 50}},
		{args: []string{"--debug-listen", "0.0.0.0:6060"}, wantErr: "not a loopback address"},
		{args: []string{"--debug-listen", "10.0.0.1:6060"}, wantErr: "not a loopback address"},
		{args: []string{"--debug-listen", ":6060"}, wantErr: "not a loopback address"},
		{args: []string{"--debug-listen", "127.0.0.1"}, wantErr: "missing port"},
		{args: []string{"--gc-percent", "-5"}, wantErr: "--gc-percent -5"},
	} {
		fs := flag.NewFlagSet("t", flag.ContinueOnError)
		fs.SetOutput(io.Discard)
		var o DebugOptions
		finish := DebugFlags(fs, &o, 50)
		if err := fs.Parse(tc.args); err != nil {
			t.Fatalf("%v: parse: %v", tc.args, err)
		}
		err := finish()
		if tc.wantErr != "" {
			if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
				t.Errorf("%v: err %v, want one containing %q", tc.args, err, tc.wantErr)
			}
			continue
		}
		if err != nil || o != tc.want {
			t.Errorf("%v: %+v, %v; want %+v", tc.args, o, err, tc.want)
		}
	}
}

func TestDebugFlagsEnv(t *testing.T) {
	t.Setenv("HUSH_DEBUG_LISTEN", "127.0.0.1:7070")
	t.Setenv("HUSH_GC_PERCENT", "30")
	fs := flag.NewFlagSet("t", flag.ContinueOnError)
	var o DebugOptions
	finish := DebugFlags(fs, &o, 50)
	if err := fs.Parse(nil); err != nil {
		t.Fatal(err)
	}
	if err := finish(); err != nil || o.Listen != "127.0.0.1:7070" || o.GCPercent != 30 {
		t.Fatalf("%+v, %v", o, err)
	}
}

func TestStartDiagnostics(t *testing.T) {
	log := slog.New(slog.DiscardHandler)
	// No listener: nothing to close, and Close on nil is fine.
	d, err := StartDiagnostics(DebugOptions{}, log)
	if err != nil || d != nil {
		t.Fatalf("no listener: %v, %v", d, err)
	}
	if err := d.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := StartDiagnostics(DebugOptions{Listen: "0.0.0.0:0"}, log); err == nil {
		t.Fatal("a non-loopback profiler address was accepted")
	}

	prev := debug.SetGCPercent(100)
	defer debug.SetGCPercent(prev)
	d, err = StartDiagnostics(DebugOptions{Listen: "127.0.0.1:0", GCPercent: 37}, log)
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	if got := debug.SetGCPercent(100); got != 37 {
		t.Errorf("GC percent %d after StartDiagnostics, want 37", got)
	}
	for path, want := range map[string]string{
		"/debug/pprof/":                  "goroutine",
		"/debug/pprof/goroutine?debug=1": "goroutine profile:",
		"/debug/pprof/cmdline":           "",
	} {
		resp, err := http.Get("http://" + d.Addr() + path)
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK || !strings.Contains(string(b), want) {
			t.Errorf("GET %s: %d %.80q, want 200 containing %q", path, resp.StatusCode, b, want)
		}
	}
	if err := d.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := http.Get("http://" + d.Addr() + "/debug/pprof/"); err == nil {
		t.Error("the profiler still answers after Close")
	}
}
