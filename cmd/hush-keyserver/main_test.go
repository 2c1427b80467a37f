package main

import (
	"bytes"
	"context"
	"errors"
	"flag"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/hushchat/hush/internal/envflag"

	"github.com/hushchat/hush/internal/testenv"
	"github.com/hushchat/hush/keyserver/ksclient"
	"github.com/hushchat/hush/keyserver/store/storetest"
)

func TestHelpDocumentsEveryFlag(t *testing.T) {
	var out bytes.Buffer
	_, err := parseFlags([]string{"--help"}, &out)
	if !errors.Is(err, flag.ErrHelp) {
		t.Fatalf("--help: %v", err)
	}
	help := out.String()
	var o options
	fs := newFlagSet(&o, &envflag.Defaults{}, io.Discard)
	n := 0
	fs.VisitAll(func(f *flag.Flag) {
		n++
		if !strings.Contains(help, "-"+f.Name+" ") && !strings.Contains(help, "-"+f.Name+"\n") {
			t.Errorf("--help does not list -%s", f.Name)
		}
		if len(f.Usage) < 15 || !strings.Contains(f.Usage, "(env HUSH_") {
			t.Errorf("-%s: usage %q does not explain the flag and its env var", f.Name, f.Usage)
		}
	})
	if n < 15 {
		t.Fatalf("only %d flags", n)
	}
}

func TestEnvFallback(t *testing.T) {
	t.Setenv("HUSH_KEYSERVER_LISTEN", "127.0.0.1:9999")
	t.Setenv("HUSH_KEYSERVER_TOKEN_TTL", "2h")
	t.Setenv("HUSH_INTERNAL_SECRET", "s3cret")
	o, err := parseFlags(nil, io.Discard)
	if err != nil || o.listen != "127.0.0.1:9999" || o.tokenTTL != 2*time.Hour || o.internalSecret != "s3cret" {
		t.Fatalf("env fallback: %+v, %v", o, err)
	}
	o, err = parseFlags([]string{"--listen", "127.0.0.1:1", "--internal-secret", "flag"}, io.Discard)
	if err != nil || o.listen != "127.0.0.1:1" || o.internalSecret != "flag" {
		t.Fatalf("flag over env: %+v, %v", o, err)
	}
	// Secrets from the environment never appear in --help.
	t.Setenv("HUSH_INVITE_CODE", "do-not-print")
	var out bytes.Buffer
	parseFlags([]string{"--help"}, &out)
	if strings.Contains(out.String(), "do-not-print") || strings.Contains(out.String(), "s3cret") {
		t.Fatal("--help prints a secret from the environment")
	}
	t.Setenv("HUSH_KEYSERVER_TOKEN_TTL", "soon")
	if _, err := parseFlags(nil, io.Discard); err == nil || !strings.Contains(err.Error(), "HUSH_KEYSERVER_TOKEN_TTL") {
		t.Fatalf("bad env value: %v", err)
	}
	if _, err := parseFlags([]string{"extra"}, io.Discard); err == nil {
		t.Fatal("positional argument accepted")
	}
}

func get(t *testing.T, url string) (int, string) {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

func TestServeSQLite(t *testing.T) {
	serveAndCheck(t, "sqlite:"+filepath.Join(t.TempDir(), "db", "keys.db"))
}

func TestServeCassandra(t *testing.T) {
	c := testenv.NeedCassandra(t)
	var hosts []string
	for _, h := range c.Hosts {
		hosts = append(hosts, net.JoinHostPort(h, strconv.Itoa(c.Port)))
	}
	serveAndCheck(t, "cassandra:"+strings.Join(hosts, ",")+"/"+c.Keyspace)
}

// serveAndCheck runs the server on store, registers and logs in through
// it, checks health, readiness and metrics, and restarts it.
func serveAndCheck(t *testing.T, store string) {
	dir := t.TempDir()
	args := []string{"--listen", "127.0.0.1:0", "--store", store,
		"--signing-key", filepath.Join(dir, "signing.key"), "--log-level", "warn"}
	start := func() (string, context.CancelFunc, chan error) {
		ctx, cancel := context.WithCancel(context.Background())
		ready := make(chan string, 1)
		done := make(chan error, 1)
		go func() { done <- run(ctx, args, io.Discard, ready) }()
		select {
		case addr := <-ready:
			return "http://" + addr, cancel, done
		case err := <-done:
			t.Fatalf("run: %v", err)
		}
		return "", cancel, done
	}
	base, cancel, done := start()
	for path, want := range map[string]string{"/healthz": "ok", "/readyz": "ready"} {
		if code, body := get(t, base+path); code != 200 || !strings.Contains(body, want) {
			t.Fatalf("%s: %d %q", path, code, body)
		}
	}
	c, err := ksclient.New(base)
	if err != nil {
		t.Fatal(err)
	}
	d := storetest.NewDevice(t, 1, 5)
	s, err := c.Register(context.Background(), "alice", "", d.Client(), d.Sign)
	if err != nil {
		t.Fatal(err)
	}
	if st, err := c.KeyStatus(context.Background(), s.Token); err != nil || st.OneTimePreKeys != 5 {
		t.Fatalf("status %+v, %v", st, err)
	}
	_, metrics := get(t, base+"/metrics")
	for _, m := range []string{`hush_keyserver_requests_total{route="/v1/accounts",status="201"} 1`, "go_goroutines", "hush_keyserver_prekeys_low_total"} {
		if !strings.Contains(metrics, m) {
			t.Errorf("/metrics lacks %s", m)
		}
	}
	key1, _ := c.ServerKey(context.Background())
	fi, err := os.Stat(filepath.Join(dir, "signing.key"))
	if err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("signing key mode %v, %v", fi.Mode().Perm(), err)
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatalf("shutdown: %v", err)
	}

	// A restart keeps the key and the data.
	base, cancel, done = start()
	defer func() { cancel(); <-done }()
	c, _ = ksclient.New(base)
	key2, _ := c.ServerKey(context.Background())
	if !key1.Equal(key2) {
		t.Fatal("signing key changed across restarts")
	}
	if _, err := c.Login(context.Background(), "alice", 1, d.Sign); err != nil {
		t.Fatalf("login after restart: %v", err)
	}
}

type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// TestSignalShutdown runs the real binary and stops it with SIGTERM.
func TestSignalShutdown(t *testing.T) {
	dir := t.TempDir()
	bin := filepath.Join(dir, "hush-keyserver")
	if out, err := exec.Command("go", "build", "-o", bin, ".").CombinedOutput(); err != nil {
		t.Fatalf("build: %v\n%s", err, out)
	}
	cmd := exec.Command(bin, "--listen", "127.0.0.1:0", "--store", "sqlite:"+filepath.Join(dir, "k.db"),
		"--signing-key", filepath.Join(dir, "k.key"))
	var logs syncBuffer
	cmd.Stderr = &logs
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(30 * time.Second)
	for !strings.Contains(logs.String(), "listening") {
		if time.Now().After(deadline) {
			cmd.Process.Kill()
			t.Fatalf("no listening line:\n%s", logs.String())
		}
		time.Sleep(20 * time.Millisecond)
	}
	cmd.Process.Signal(syscall.SIGTERM)
	if err := cmd.Wait(); err != nil {
		t.Fatalf("exit after SIGTERM: %v\n%s", err, logs.String())
	}
	if !strings.Contains(logs.String(), "stopped") {
		t.Fatalf("no orderly stop:\n%s", logs.String())
	}
}
