package client

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"
)

// The crash test kills a real process between the commit of a received
// message and its ACK: the test binary re-runs itself as a child that
// opens bob's profile, and the hook that runs after the commit exits the
// process on the spot.

const (
	crashChildEnv     = "HUSH_CRASH_CHILD_HOME"
	crashChildExit    = 3
	crashChildTimeout = 4
)

func crashChild() {
	cfg := Config{Home: os.Getenv(crashChildEnv), BackoffMin: 20 * time.Millisecond, BackoffMax: 200 * time.Millisecond}
	cfg.testHookAfterCommit = func(uint64) bool {
		os.Exit(crashChildExit) // no deferred work, no ACK, no Close
		return true
	}
	c, err := Open(context.Background(), cfg)
	if err != nil {
		fmt.Fprintln(os.Stderr, "crash child:", err)
		os.Exit(1)
	}
	_ = c
	time.Sleep(30 * time.Second)
	os.Exit(crashChildTimeout)
}

// TestCrashBetweenCommitAndAck: the message is shown exactly once after
// the restart.
func TestCrashBetweenCommitAndAck(t *testing.T) {
	ts := startServer(t)
	alice := newParty(t, ts, "alice")
	bob := newParty(t, ts, "bob")
	alice.waitConnected()
	bob.waitConnected()
	// A first exchange, so the crash hits an established session.
	alice.send("bob", "warm up")
	bob.waitFor("warm up", 1, isText("alice", "warm up"))
	bob.Close()

	id := alice.send("bob", "exactly once")
	alice.waitSent(id)

	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), crashChildEnv+"="+bob.home)
	out, err := cmd.CombinedOutput()
	var ee *exec.ExitError
	if !errors.As(err, &ee) || ee.ExitCode() != crashChildExit {
		t.Fatalf("crash child: %v (want exit %d)\n%s", err, crashChildExit, out)
	}

	bob = bob.reopen()
	bob.waitConnected()
	// The relay delivered it again (no ACK); the redelivery was only
	// acknowledged. Wait until the queue is empty and the event consumed.
	bob.waitFor("the message", 1, isText("alice", "exactly once"))
	after := bob.send("alice", "after the crash")
	alice.waitFor("bob after crash", 1, isText("bob", "after the crash"))
	bob.waitSent(after)
	bob = bob.reopen() // and once more: nothing comes back
	bob.waitConnected()
	if n := bob.count(isText("alice", "exactly once")); n != 0 {
		t.Fatalf("message event repeated after a clean restart (%d)", n)
	}
	var seen int
	for _, m := range bob.history(Direct("alice")) {
		if m.Text == "exactly once" {
			seen++
		}
	}
	if seen != 1 {
		t.Fatalf("bob's history shows the message %d times", seen)
	}
	alice.waitFor("delivered", 1, receiptFor("bob", StatusDelivered, id))
}

// TestServerRestart: the server shuts down and starts again in the
// middle of a conversation; nothing is lost or duplicated.
func TestServerRestart(t *testing.T) {
	const n = 60
	ts := startServer(t)
	alice := newParty(t, ts, "alice")
	bob := newParty(t, ts, "bob")
	alice.waitConnected()
	bob.waitConnected()
	handshake(alice, bob)

	var wg sync.WaitGroup
	sendAll := func(p *party, to, prefix string) {
		defer wg.Done()
		for i := range n {
			if _, err := p.Send(context.Background(), to, fmt.Sprintf("%s%03d", prefix, i)); err != nil {
				t.Error(err)
				return
			}
			time.Sleep(5 * time.Millisecond)
		}
	}
	wg.Add(2)
	go sendAll(alice, "bob", "a")
	go sendAll(bob, "alice", "b")
	bob.waitFor("some of alice's", 10, hasPrefix("alice", "a"))
	ts.stop()
	time.Sleep(100 * time.Millisecond)
	ts.start()
	wg.Wait()

	bob.waitFor("all of alice's", n, hasPrefix("alice", "a"))
	alice.waitFor("all of bob's", n, hasPrefix("bob", "b"))
	check := func(p *party, from, prefix string) {
		var got []string
		for _, m := range p.history(Direct(from)) {
			if m.Sender == from && strings.HasPrefix(m.Text, prefix) {
				got = append(got, m.Text)
			}
		}
		want := make([]string, n)
		for i := range want {
			want[i] = fmt.Sprintf("%s%03d", prefix, i)
		}
		if !slices.Equal(got, want) {
			t.Fatalf("%s's history from %s:\n got %q\nwant %q", p.name, from, got, want)
		}
		if c := p.count(hasPrefix(from, prefix)); c != n {
			t.Fatalf("%s: %d message events from %s, want %d", p.name, c, from, n)
		}
	}
	check(bob, "alice", "a")
	check(alice, "bob", "b")
}
