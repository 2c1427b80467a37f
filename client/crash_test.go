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
	crashChildModeEnv = "HUSH_CRASH_CHILD_MODE"
	crashChildExit    = 3
	crashChildTimeout = 4
)

// Crash points (crashChildModeEnv); the default is after the commit of a
// received batch, before its ACK.
const (
	// In the middle of a batch of received envelopes, before its commit.
	crashInReceiveBatch = "receive-batch"
	// In the middle of a batch of outbox rows being encrypted, before its
	// commit.
	crashInSendBatch = "send-batch"
	// After a batch of outbox rows committed their frames, before any is
	// sent.
	crashBeforeSend = "before-send"
)

func crashChild() {
	cfg := Config{Home: os.Getenv(crashChildEnv), BackoffMin: 20 * time.Millisecond, BackoffMax: 200 * time.Millisecond}
	crash := func() {
		os.Exit(crashChildExit) // no deferred work, no commit, no ACK, no Close
	}
	switch os.Getenv(crashChildModeEnv) {
	case crashInReceiveBatch:
		cfg.testHookInBatch = func(_ uint64, i, n int) bool {
			if n > 1 && i == n/2 {
				crash()
			}
			return false
		}
	case crashInSendBatch:
		cfg.testHookInSendBatch = func(i, n int) bool {
			if n > 1 && i == n/2 {
				crash()
			}
			return false
		}
	case crashBeforeSend:
		cfg.testHookBeforeSend = func(n int) bool {
			if n > 1 {
				crash()
			}
			return false
		}
	default:
		cfg.testHookAfterCommit = func(uint64) bool {
			crash()
			return true
		}
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

	runCrashChild(t, bob.home, "")

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

// runCrashChild runs a child process on the profile in home that crashes
// at the point mode names.
func runCrashChild(t *testing.T, home, mode string) {
	t.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), crashChildEnv+"="+home, crashChildModeEnv+"="+mode)
	out, err := cmd.CombinedOutput()
	var ee *exec.ExitError
	if !errors.As(err, &ee) || ee.ExitCode() != crashChildExit {
		t.Fatalf("crash child (%s): %v (want exit %d)\n%s", mode, err, crashChildExit, out)
	}
}

// TestCrashInBatchedReceive: a crash in the middle of the transaction that
// processes a batch of envelopes loses none of them and shows none twice;
// the delivery receipts come once the batch is processed after the
// restart.
func TestCrashInBatchedReceive(t *testing.T) {
	const n = 12
	_, alice, bob := talkingPair(t)
	bob.Close()

	// Queued while bob is away: the relay hands them over together.
	ids := make([]MessageID, n)
	want := make([]string, n)
	for i := range n {
		want[i] = fmt.Sprintf("queued %02d", i)
		ids[i] = alice.send("bob", want[i])
	}
	for _, id := range ids {
		alice.waitSent(id)
	}
	runCrashChild(t, bob.home, crashInReceiveBatch)

	bob = bob.reopen()
	bob.waitConnected()
	bob.waitFor("the queued messages", n, hasPrefix("alice", "queued "))
	var got []string
	for _, m := range bob.history(Direct("alice")) {
		if strings.HasPrefix(m.Text, "queued ") {
			got = append(got, m.Text)
		}
	}
	if !slices.Equal(got, want) {
		t.Fatalf("bob's history after the crash:\n got %q\nwant %q", got, want)
	}
	for _, id := range ids {
		alice.waitFor("delivered", 1, receiptFor("bob", StatusDelivered, id))
	}
	bob = bob.reopen() // nothing comes again
	bob.waitConnected()
	if c := bob.count(hasPrefix("alice", "queued ")); c != 0 {
		t.Fatalf("%d message events repeated after a clean restart", c)
	}
}

// TestCrashInBatchedSend: a crash while a batch of outbox rows is being
// encrypted (before its commit), then one after the batch committed and
// before its frames went out: every message reaches bob exactly once, in
// order, and alice sees each sent.
func TestCrashInBatchedSend(t *testing.T) {
	const n = 12
	_, alice, bob := talkingPair(t)

	// Queued offline, so the outbox holds them all when alice connects.
	alice.Close()
	offline := alice.cfg
	offline.Offline = true
	alice = openParty(t, offline, "alice")
	ids := make([]MessageID, n)
	want := make([]string, n)
	for i := range n {
		want[i] = fmt.Sprintf("outbox %02d", i)
		ids[i] = alice.send("bob", want[i])
	}
	alice.Close()

	runCrashChild(t, alice.home, crashInSendBatch)
	runCrashChild(t, alice.home, crashBeforeSend)

	online := offline
	online.Offline = false
	alice = openParty(t, online, "alice")
	alice.waitConnected()
	for _, id := range ids {
		alice.waitSent(id)
	}
	bob.waitFor("the outbox", n, hasPrefix("alice", "outbox "))
	var got []string
	for _, m := range bob.history(Direct("alice")) {
		if strings.HasPrefix(m.Text, "outbox ") {
			got = append(got, m.Text)
		}
	}
	if !slices.Equal(got, want) {
		t.Fatalf("bob's history:\n got %q\nwant %q", got, want)
	}
	// Nothing more is on its way: a message sent now arrives after them
	// and no copy of the earlier ones comes with it.
	alice.send("bob", "last")
	bob.waitFor("the last one", 1, isText("alice", "last"))
	if c := bob.count(hasPrefix("alice", "outbox ")); c != n {
		t.Fatalf("bob got %d message events for %d messages", c, n)
	}
}

// TestServerRestart: the server shuts down and starts again in the
// middle of a conversation; nothing is lost or duplicated.
func TestServerRestart(t *testing.T) {
	const n = 60
	ts, alice, bob := talkingPair(t)

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
	ts.Stop()
	time.Sleep(100 * time.Millisecond)
	ts.Restart()
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
