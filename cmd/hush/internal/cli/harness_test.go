package cli

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hushchat/hush/client"
	"github.com/hushchat/hush/server/app/apptest"
)

// The tests run the CLI in process (Main with buffers) against a real
// hush-server (key server + relay on SQLite, loopback) started in process,
// the same wiring `make run` uses.

// testServer is an in-process hush-server (server/app/apptest).
type testServer = apptest.Server

func startServer(t testing.TB) *testServer {
	t.Helper()
	return apptest.Start(t)
}

// fastClient shortens the client's timers so reconnects and held group
// messages do not slow the tests down.
func fastClient(cfg *client.Config) {
	cfg.BackoffMin = 20 * time.Millisecond
	cfg.BackoffMax = 300 * time.Millisecond
	cfg.HoldTimeout = 500 * time.Millisecond
	cfg.HandlerRetryMin = 10 * time.Millisecond
	cfg.HandlerRetryMax = 50 * time.Millisecond
	if os.Getenv("HUSH_TEST_LOG") == "" {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
}

// result is one CLI run.
type result struct {
	code           int
	stdout, stderr string
}

// user is a profile driven through the CLI.
type user struct {
	t    testing.TB
	name string
	home string
}

func newUser(t testing.TB, name string) *user {
	return &user{t: t, name: name, home: filepath.Join(t.TempDir(), name)}
}

// register creates the account on ts.
func register(t testing.TB, ts *testServer, name string) *user {
	t.Helper()
	u := newUser(t, strings.ToLower(name))
	r := u.run("register", "--server", ts.URL(), name)
	if r.code != 0 || !strings.HasPrefix(r.stdout, "registered "+u.name+" (device ") {
		t.Fatalf("register %s: %+v", name, r)
	}
	return u
}

// run runs `hush --home HOME args…` with empty stdin.
func (u *user) run(args ...string) result {
	u.t.Helper()
	return u.runIn(context.Background(), "", args...)
}

func (u *user) runIn(ctx context.Context, stdin string, args ...string) result {
	u.t.Helper()
	var out, errb bytes.Buffer
	code := runCLI(ctx, append([]string{"--home", u.home}, args...), strings.NewReader(stdin), &out, &errb)
	return result{code: code, stdout: out.String(), stderr: errb.String()}
}

func runCLI(ctx context.Context, args []string, stdin io.Reader, stdout, stderr io.Writer) int {
	return Main(ctx, args, Env{
		Stdin: stdin, Stdout: stdout, Stderr: stderr,
		Getenv:    func(string) string { return "" },
		Configure: fastClient,
	})
}

// must runs a command that must succeed.
func (u *user) must(args ...string) result {
	u.t.Helper()
	r := u.run(args...)
	if r.code != 0 {
		u.t.Fatalf("%s: hush %s: exit %d\nstdout: %s\nstderr: %s", u.name, strings.Join(args, " "), r.code, r.stdout, r.stderr)
	}
	return r
}

var hexID = regexp.MustCompile(`^[0-9a-f]{32}$`)

// send sends text to another user and returns the printed message id.
func (u *user) send(args ...string) string {
	u.t.Helper()
	r := u.must(append([]string{"send"}, args...)...)
	id := strings.TrimSpace(r.stdout)
	if !hexID.MatchString(id) {
		u.t.Fatalf("send printed %q, want a message id", r.stdout)
	}
	return id
}

// receive runs receive --json and returns its lines, decoded. Every line
// of stdout must be a JSON object with a type.
func (u *user) receive(extra ...string) []map[string]any {
	u.t.Helper()
	r := u.must(append([]string{"receive", "--json", "--timeout", "700ms"}, extra...)...)
	return jsonLines(u.t, r.stdout)
}

func jsonLines(t testing.TB, out string) []map[string]any {
	t.Helper()
	var lines []map[string]any
	for _, l := range strings.Split(strings.TrimSuffix(out, "\n"), "\n") {
		if l == "" {
			continue
		}
		var m map[string]any
		if err := json.Unmarshal([]byte(l), &m); err != nil {
			t.Fatalf("stdout line is not a JSON object: %q: %v", l, err)
		}
		lines = append(lines, m)
	}
	return lines
}

// ofType filters lines by type (and optional field=value pairs).
func ofType(lines []map[string]any, typ string, kv ...string) []map[string]any {
	var out []map[string]any
next:
	for _, l := range lines {
		if l["type"] != typ {
			continue
		}
		for i := 0; i+1 < len(kv); i += 2 {
			if s, _ := l[kv[i]].(string); s != kv[i+1] {
				continue next
			}
		}
		out = append(out, l)
	}
	return out
}

// receiveUntil runs receive until pred holds for the lines gathered so
// far (messages can take more than one receive to arrive, e.g. behind a
// sender-key hold), and returns all lines.
func (u *user) receiveUntil(what string, pred func([]map[string]any) bool) []map[string]any {
	u.t.Helper()
	var all []map[string]any
	deadline := time.Now().Add(30 * time.Second)
	for {
		all = append(all, u.receive()...)
		if pred(all) {
			return all
		}
		if time.Now().After(deadline) {
			u.t.Fatalf("%s: timed out waiting for %s; got %v", u.name, what, all)
		}
	}
}

func hasText(from, text string) func([]map[string]any) bool {
	return func(ls []map[string]any) bool { return len(ofType(ls, "message", "from", from, "text", text)) > 0 }
}

// syncBuffer is a goroutine-safe output buffer for commands that run in
// the background.
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

// waitOutput polls buf until cond holds.
func waitOutput(t testing.TB, buf *syncBuffer, what string, cond func(string) bool) string {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		s := buf.String()
		if cond(s) {
			return s
		}
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s; output so far:\n%s", what, s)
		}
		time.Sleep(20 * time.Millisecond)
	}
}
