package main

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/hushchat/hush/server/app/apptest"
)

// These tests run hush as a real process (this test binary re-executed
// as main) against an in-process hush-server, for what only a process
// has: signals and a stdout pipe that closes.

const childEnv = "HUSH_MAIN_TEST_AS_HUSH"

func TestMain(m *testing.M) {
	if os.Getenv(childEnv) == "1" {
		main()
		return
	}
	os.Exit(m.Run())
}

func startServer(t *testing.T) string {
	t.Helper()
	return apptest.Start(t).URL()
}

// hush returns a command running hush with args and HUSH_HOME=home.
func hush(home string, args ...string) *exec.Cmd {
	cmd := exec.Command(os.Args[0], args...)
	cmd.Env = append(os.Environ(), childEnv+"=1", "HUSH_HOME="+home)
	return cmd
}

func must(t *testing.T, home string, args ...string) string {
	t.Helper()
	var out, errb bytes.Buffer
	cmd := hush(home, args...)
	cmd.Stdout, cmd.Stderr = &out, &errb
	if err := cmd.Run(); err != nil {
		t.Fatalf("hush %s: %v\nstdout: %s\nstderr: %s", strings.Join(args, " "), err, out.String(), errb.String())
	}
	return out.String()
}

// exitCode waits for cmd and returns its exit code; a death by signal
// fails the test.
func exitCode(t *testing.T, cmd *exec.Cmd) int {
	t.Helper()
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	select {
	case err := <-done:
		var ee *exec.ExitError
		if errors.As(err, &ee) {
			if ws, ok := ee.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
				t.Fatalf("hush was killed by %v", ws.Signal())
			}
			return ee.ExitCode()
		}
		if err != nil {
			t.Fatal(err)
		}
		return 0
	case <-time.After(60 * time.Second):
		cmd.Process.Kill()
		t.Fatal("hush did not exit")
	}
	return -1
}

// readUntil reads JSON lines until one has the wanted type and state or
// text.
func readUntil(t *testing.T, r *bufio.Reader, key, want string) {
	t.Helper()
	for {
		line, err := r.ReadString('\n')
		if err != nil {
			t.Fatalf("waiting for %s=%s: %v", key, want, err)
		}
		var m map[string]any
		if err := json.Unmarshal([]byte(line), &m); err != nil {
			t.Fatalf("not a JSON line: %q", line)
		}
		if m[key] == want {
			return
		}
	}
}

// TestListenSIGTERM: listen prints what arrives and exits 0 on SIGTERM.
func TestListenSIGTERM(t *testing.T) {
	url := startServer(t)
	alice, bob := filepath.Join(t.TempDir(), "alice"), filepath.Join(t.TempDir(), "bob")
	must(t, alice, "register", "--server", url, "alice")
	must(t, bob, "register", "--server", url, "bob")

	var errb bytes.Buffer
	listen := hush(bob, "listen", "--json")
	listen.Stderr = &errb
	out, err := listen.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := listen.Start(); err != nil {
		t.Fatal(err)
	}
	r := bufio.NewReader(out)
	readUntil(t, r, "state", "connected")
	must(t, alice, "send", "bob", "are you there?")
	readUntil(t, r, "text", "are you there?")
	listen.Process.Signal(syscall.SIGTERM)
	io.Copy(io.Discard, r)
	if code := exitCode(t, listen); code != 0 {
		t.Fatalf("listen after SIGTERM: exit %d, stderr %q", code, errb.String())
	}
	if errb.Len() != 0 {
		t.Fatalf("listen wrote to stderr: %q", errb.String())
	}
}

// TestBrokenPipe: when stdout's reader goes away, hush exits 0 instead of
// dying of SIGPIPE, and the event it could not print is printed next time.
func TestBrokenPipe(t *testing.T) {
	url := startServer(t)
	alice, bob := filepath.Join(t.TempDir(), "alice"), filepath.Join(t.TempDir(), "bob")
	must(t, alice, "register", "--server", url, "alice")
	must(t, bob, "register", "--server", url, "bob")

	var errb bytes.Buffer
	listen := hush(bob, "listen", "--json")
	listen.Stderr = &errb
	out, err := listen.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := listen.Start(); err != nil {
		t.Fatal(err)
	}
	readUntil(t, bufio.NewReader(out), "state", "connected")
	out.Close() // the reader leaves (`hush listen --json | head -2`)
	must(t, alice, "send", "bob", "into the void")
	if code := exitCode(t, listen); code != 0 {
		t.Fatalf("listen into a closed pipe: exit %d, stderr %q", code, errb.String())
	}
	if got := must(t, bob, "receive", "--json", "--timeout", "1s"); !strings.Contains(got, `"text":"into the void"`) {
		t.Fatalf("the message that could not be printed is gone; receive printed:\n%s", got)
	}
}
