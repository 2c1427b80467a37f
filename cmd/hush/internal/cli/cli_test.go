package cli

import (
	"context"
	"io"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/hushchat/hush/client"
	"github.com/hushchat/hush/client/store"
	"github.com/hushchat/hush/crypto"
)

// TestChat is the README's "two people chatting" through the CLI alone:
// send, receive, read receipts, history, safety numbers, lists.
func TestChat(t *testing.T) {
	ts := startServer(t)
	alice := register(t, ts, "alice")
	bob := register(t, ts, "Bob") // names are folded to lower case
	if strings.TrimSpace(bob.must("whoami").stdout) != "bob (device 1) on "+ts.URL() {
		t.Fatalf("whoami = %q", bob.must("whoami").stdout)
	}

	id := alice.send("bob", "hello", "bob")
	lines := bob.receive()
	msgs := ofType(lines, "message")
	if len(msgs) != 1 {
		t.Fatalf("bob's receive: want one message line, got %v", lines)
	}
	m := msgs[0]
	for k, want := range map[string]any{"id": id, "from": "alice", "device": 1.0, "text": "hello bob", "conv": "@alice",
		"outgoing": false, "kind": "text"} {
		if m[k] != want {
			t.Errorf("message %s = %v, want %v (line %v)", k, m[k], want, m)
		}
	}
	if _, ok := m["group"]; ok {
		t.Errorf("a 1-1 message has a group field: %v", m)
	}
	ts1, err := time.Parse(time.RFC3339, m["timestamp"].(string))
	if err != nil || time.Since(ts1) > time.Minute || time.Since(ts1) < -time.Minute {
		t.Errorf("timestamp %v: %v", m["timestamp"], err)
	}
	// Printed once: a second receive has nothing new.
	if again := ofType(bob.receive(), "message"); len(again) != 0 {
		t.Fatalf("the message was printed again: %v", again)
	}

	// bob reads: alice sees delivered and read receipts for id.
	bob.must("read", "alice")
	got := alice.receiveUntil("read receipt", func(ls []map[string]any) bool {
		return len(ofType(ls, "receipt", "status", "read")) > 0
	})
	for _, st := range []string{"delivered", "read"} {
		rs := ofType(got, "receipt", "status", st, "from", "bob", "conv", "@bob")
		if len(rs) == 0 || !slices.Contains(rs[0]["ids"].([]any), any(id)) {
			t.Fatalf("no %s receipt for %s in %v", st, id, got)
		}
	}

	// A reply, read in plain text.
	bob.send("alice", "hi", "alice")
	r := alice.must("receive", "--timeout", "700ms")
	if !regexp.MustCompile(`(?m)^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d bob: hi alice$`).MatchString(r.stdout) {
		t.Fatalf("human receive output:\n%s", r.stdout)
	}

	// History on both sides, oldest first, with statuses.
	h := jsonLines(t, alice.must("history", "bob", "--json").stdout)
	if len(h) != 2 || h[0]["text"] != "hello bob" || h[0]["status"] != "read" || h[0]["outgoing"] != true ||
		h[1]["text"] != "hi alice" || h[1]["read"] != false {
		t.Fatalf("alice's history: %v", h)
	}
	if h := jsonLines(t, bob.must("history", "alice", "--json", "--limit", "1").stdout); len(h) != 1 || h[0]["text"] != "hi alice" {
		t.Fatalf("bob's history --limit 1: %v", h)
	}
	if out := alice.must("history", "bob").stdout; !strings.Contains(out, "alice → bob: hello bob  (read)") {
		t.Fatalf("human history:\n%s", out)
	}

	// The same safety number on both sides, 12 groups of 5 digits.
	sa := strings.TrimSpace(alice.must("safety", "bob").stdout)
	sb := strings.TrimSpace(bob.must("safety", "alice").stdout)
	if !regexp.MustCompile(`^\d{5}( \d{5}){11}$`).MatchString(sa) || sa != sb {
		t.Fatalf("safety numbers: alice %q, bob %q", sa, sb)
	}
	alice.must("verify", "bob")
	cs := jsonLines(t, alice.must("contacts", "--json").stdout)
	if len(cs) != 1 || cs[0]["name"] != "bob" || cs[0]["verified"] != true || cs[0]["identity_changed"] != false {
		t.Fatalf("contacts: %v", cs)
	}
	cv := jsonLines(t, alice.must("conversations", "--json").stdout)
	if len(cv) != 1 || cv[0]["id"] != "@bob" || cv[0]["unread"] != 1.0 || cv[0]["last"].(map[string]any)["text"] != "hi alice" {
		t.Fatalf("conversations: %v", cv)
	}
	ds := jsonLines(t, alice.must("devices", "--json").stdout)
	if len(ds) != 1 || ds[0]["id"] != 1.0 || ds[0]["current"] != true {
		t.Fatalf("devices: %v", ds)
	}

	// Text from stdin, with newlines and leading dashes.
	alice.runIn(context.Background(), "--not a flag\nsecond line\n", "send", "bob", "-")
	if !hasText("alice", "--not a flag\nsecond line")(bob.receive()) {
		t.Fatal("text from stdin did not arrive intact")
	}
	// Replies carry the quoted message.
	q := bob.send("--quote", id, "alice", "answering")
	ls := alice.receiveUntil("reply", hasText("bob", "answering"))
	if qm := ofType(ls, "message", "id", q); len(qm) != 1 || qm[0]["quote"].(map[string]any)["id"] != id ||
		qm[0]["quote"].(map[string]any)["author"] != "alice" {
		t.Fatalf("quoted reply: %v", ls)
	}
}

// TestGroups: create, add, remove, rename, leave and list through the CLI;
// a removed member stops receiving.
func TestGroups(t *testing.T) {
	ts := startServer(t)
	alice, bob, carol := register(t, ts, "alice"), register(t, ts, "bob"), register(t, ts, "carol")

	gid := strings.TrimSpace(alice.must("group", "create", "team", "--members", "bob").stdout)
	if !hexID.MatchString(gid) {
		t.Fatalf("group create printed %q", gid)
	}
	ls := bob.receiveUntil("group creation", func(ls []map[string]any) bool {
		return len(ofType(ls, "group_update", "group", gid, "action", "create")) > 0
	})
	if up := ofType(ls, "group_update", "group", gid)[0]; up["from"] != "alice" || up["group_name"] != "team" || up["active"] != true {
		t.Fatalf("group update: %v", up)
	}
	alice.must("group", "add", "team", "carol")
	carol.receiveUntil("added", func(ls []map[string]any) bool { return len(ofType(ls, "group_update", "group", gid)) > 0 })
	bob.receiveUntil("carol added", func(ls []map[string]any) bool {
		return len(ofType(ls, "group_update", "group", gid, "action", "add")) > 0
	})

	gl := jsonLines(t, alice.must("group", "list", "--json").stdout)
	if len(gl) != 1 || gl[0]["id"] != gid || gl[0]["name"] != "team" || len(gl[0]["members"].([]any)) != 3 {
		t.Fatalf("group list: %v", gl)
	}

	// A group message reaches both others, with the group fields.
	mid := bob.send("--group", "team", "hello", "team")
	for _, u := range []*user{alice, carol} {
		ls := u.receiveUntil("group message", hasText("bob", "hello team"))
		m := ofType(ls, "message", "id", mid)[0]
		if m["group"] != gid || m["group_name"] != "team" || m["conv"] != "#"+gid {
			t.Fatalf("%s: group message %v", u.name, m)
		}
	}
	// History by group id prefix.
	if h := jsonLines(t, carol.must("history", "--group", gid[:8], "--json").stdout); len(ofType(h, "message", "text", "hello team")) != 1 {
		t.Fatalf("carol's group history: %v", h)
	}

	// bob is removed: he learns it, and reads nothing sent afterwards.
	alice.must("group", "remove", gid, "bob")
	bob.receiveUntil("removal", func(ls []map[string]any) bool {
		up := ofType(ls, "group_update", "group", gid, "action", "remove")
		return len(up) > 0 && up[0]["active"] == false
	})
	carol.receiveUntil("bob removed", func(ls []map[string]any) bool {
		return len(ofType(ls, "group_update", "group", gid, "action", "remove")) > 0
	})
	alice.send("--group", "team", "without bob")
	carol.receiveUntil("message after removal", hasText("alice", "without bob"))
	for _, l := range bob.receive() {
		if l["type"] == "message" {
			t.Fatalf("the removed member got a message: %v", l)
		}
	}
	if r := bob.run("send", "--group", gid, "still here?"); r.code != ExitFailed || !strings.Contains(r.stderr, "not a member") {
		t.Fatalf("send by a removed member: %+v", r)
	}
	if out := bob.must("group", "list").stdout; out != "" {
		t.Fatalf("bob's active groups: %q", out)
	}
	if all := jsonLines(t, bob.must("group", "list", "--all", "--json").stdout); len(all) != 1 || all[0]["active"] != false {
		t.Fatalf("bob's group list --all: %v", all)
	}

	alice.must("group", "rename", "team", "the team")
	carol.receiveUntil("rename", func(ls []map[string]any) bool {
		return len(ofType(ls, "group_update", "group", gid, "action", "rename", "group_name", "the team")) > 0
	})
	carol.must("group", "leave", "the team")
	alice.receiveUntil("carol left", func(ls []map[string]any) bool {
		return len(ofType(ls, "group_update", "group", gid, "action", "leave", "from", "carol")) > 0
	})
	gl = jsonLines(t, alice.must("group", "list", "--json").stdout)
	if len(gl) != 1 || gl[0]["name"] != "the team" || len(gl[0]["members"].([]any)) != 1 {
		t.Fatalf("group list at the end: %v", gl)
	}
	if r := alice.run("group", "add", "no such group", "bob"); r.code != ExitFailed || !strings.Contains(r.stderr, "no such group") {
		t.Fatalf("unknown group: %+v", r)
	}
}

// recordOtherKey makes u's profile hold a different identity key for
// peer's device 1: what u sees when peer's key changes.
func recordOtherKey(t *testing.T, u *user, peer string, dropSession bool) {
	t.Helper()
	ctx := context.Background()
	db, err := store.Open(ctx, filepath.Join(u.home, "hush.db"))
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	other, err := crypto.GenerateIdentityKeyPair()
	if err != nil {
		t.Fatal(err)
	}
	addr := crypto.Address{Name: peer, DeviceID: 1}
	if err := db.StoreIdentity(ctx, addr, crypto.IdentityRecord{Key: other.PublicKey()}); err != nil {
		t.Fatal(err)
	}
	if dropSession {
		if err := db.DeleteSession(ctx, addr); err != nil {
			t.Fatal(err)
		}
	}
}

// TestIdentityChange: a changed key is reported, sending is refused with
// exit code 3 until `hush trust`, and nothing is lost.
func TestIdentityChange(t *testing.T) {
	ts := startServer(t)
	alice, bob := register(t, ts, "alice"), register(t, ts, "bob")
	alice.send("bob", "hello")
	bob.receiveUntil("hello", hasText("alice", "hello"))
	bob.send("alice", "hi")
	alice.receiveUntil("hi", hasText("bob", "hi"))

	// Detected on receipt.
	recordOtherKey(t, alice, "bob", false)
	bob.send("alice", "with my real key")
	ls := alice.receiveUntil("identity change", func(ls []map[string]any) bool {
		return len(ofType(ls, "identity_changed", "from", "bob")) > 0
	})
	if ic := ofType(ls, "identity_changed", "from", "bob")[0]; ic["accepted"] != false || ic["device"] != 1.0 {
		t.Fatalf("identity_changed line: %v", ic)
	}
	if hasText("bob", "with my real key")(ls) {
		t.Fatal("a message under a changed key was shown before trust")
	}
	r := alice.run("send", "bob", "refused")
	if r.code != ExitIdentity || r.stdout != "" || !strings.Contains(r.stderr, "hush trust") {
		t.Fatalf("send to a changed identity: %+v", r)
	}
	if cs := jsonLines(t, alice.must("contacts", "--json").stdout); cs[0]["identity_changed"] != true {
		t.Fatalf("contacts during a change: %v", cs)
	}
	if r := alice.must("safety", "bob"); !strings.Contains(r.stderr, "changed") {
		t.Fatalf("safety during a change: %+v", r)
	}
	if out := alice.must("trust", "bob").stdout; !strings.Contains(out, "accepted") {
		t.Fatalf("trust: %q", out)
	}
	alice.receiveUntil("held message", hasText("bob", "with my real key"))
	alice.send("bob", "accepted")
	bob.receiveUntil("after trust", hasText("alice", "accepted"))

	// Detected when sending: the message is held (exit 3, id printed)
	// and goes out after trust.
	recordOtherKey(t, alice, "bob", true)
	r = alice.run("send", "--timeout", "20s", "bob", "sent after the change")
	if r.code != ExitIdentity || !hexID.MatchString(strings.TrimSpace(r.stdout)) {
		t.Fatalf("send that meets a changed key: %+v", r)
	}
	alice.must("trust", "bob")
	alice.receive() // connects: the held send goes out
	bob.receiveUntil("the held message", hasText("alice", "sent after the change"))

	// A bot's policy: warn, accept, go on.
	recordOtherKey(t, alice, "bob", false)
	bob.send("alice", "straight through")
	var warned []map[string]any
	deadline := time.Now().Add(30 * time.Second)
	for !hasText("bob", "straight through")(warned) && time.Now().Before(deadline) {
		r := alice.must("--identity-policy", "warn", "receive", "--json", "--timeout", "700ms")
		warned = append(warned, jsonLines(t, r.stdout)...)
	}
	if ic := ofType(warned, "identity_changed", "from", "bob"); len(ic) == 0 || ic[0]["accepted"] != true {
		t.Fatalf("warn policy lines: %v", warned)
	}
}

// TestUsage: bad command lines exit 2 with a message on stderr and
// nothing on stdout, before touching the profile.
func TestUsage(t *testing.T) {
	u := newUser(t, "nobody")
	for _, args := range [][]string{
		{"bogus"},
		{"group"},
		{"group", "frob"},
		{"send"},
		{"send", "bob"},
		{"send", "bob", "  "},
		{"send", "--timeout", "0s", "bob", "hi"},
		{"send", "no such name!", "hi"},
		{"send", "--quote", "xyz", "bob", "hi"},
		{"send", "--nope", "bob", "hi"},
		{"register", "alice"},
		{"register", "--server", "ftp://example.com", "alice"},
		{"register", "--server", "http://127.0.0.1:1"},
		{"register", "--server", "http://127.0.0.1:1", "a", "b"},
		{"history"},
		{"history", "bob", "--group", "team"},
		{"history", "bob", "--limit", "0"},
		{"receive", "--timeout", "-1s"},
		{"receive", "extra"},
		{"listen", "--stdin"},
		{"read"},
		{"group", "create"},
		{"group", "create", "", "--members", "bob"},
		{"group", "add", "team"},
		{"group", "rename", "team"},
		{"safety"},
		{"trust", "a", "b"},
		{"devices", "remove", "x"},
		{"--identity-policy", "nope", "whoami"},
		{"--log-level", "debug", "whoami"},
		{"--nope"},
		{"help", "bogus"},
	} {
		r := u.run(args...)
		if r.code != ExitUsage || r.stdout != "" || !strings.HasPrefix(r.stderr, "hush: ") {
			t.Errorf("hush %q: exit %d, stdout %q, stderr %q", args, r.code, r.stdout, r.stderr)
		}
	}
	if _, err := os.Stat(u.home); !os.IsNotExist(err) {
		t.Fatalf("a usage error created the profile: %v", err)
	}
	// Without an account: exit 5, and still no profile directory.
	for _, args := range [][]string{{"whoami"}, {"send", "bob", "hi"}, {"receive"}, {"history", "bob"}, {"link"}} {
		if r := u.run(args...); r.code != ExitNotRegistered || !strings.Contains(r.stderr, "hush register") {
			t.Errorf("hush %q without an account: %+v", args, r)
		}
	}
	if _, err := os.Stat(u.home); !os.IsNotExist(err) {
		t.Fatalf("a command without an account created the profile: %v", err)
	}
	// Help goes to stdout, exit 0.
	for _, args := range [][]string{{"help"}, {"--help"}, {"help", "send"}, {"send", "--help"}, {"group", "create", "-h"}, {"help", "group", "list"}, {"help", "group"}} {
		r := u.run(args...)
		if r.code != 0 || !strings.Contains(r.stdout, "Usage: hush") || r.stderr != "" {
			t.Errorf("hush %q: %+v", args, r)
		}
	}
	// No subcommand and no terminal UI built in.
	if r := u.run(); r.code != ExitUsage || !strings.Contains(r.stderr, "terminal UI is not built") {
		t.Errorf("hush with no command: %+v", r)
	}
}

// TestErrors: failures that are not usage errors get their own codes.
func TestErrors(t *testing.T) {
	ts := startServer(t)
	alice := register(t, ts, "alice")
	bob := register(t, ts, "bob")

	if r := newUser(t, "alice2").run("register", "--server", ts.URL(), "alice"); r.code != ExitFailed || !strings.Contains(r.stderr, "taken") {
		t.Fatalf("register a taken name: %+v", r)
	}
	if r := alice.run("register", "--server", ts.URL(), "other"); r.code != ExitFailed || !strings.Contains(r.stderr, "already has the account alice") {
		t.Fatalf("register twice: %+v", r)
	}
	if r := newUser(t, "x").run("register", "--server", "http://127.0.0.1:1", "xavier"); r.code != ExitNetwork {
		t.Fatalf("register with no server: %+v", r)
	}
	// A send to an account that does not exist fails for good.
	if r := alice.run("send", "nosuchuser", "hello?"); r.code != ExitFailed || !strings.Contains(r.stderr, "no such account") {
		t.Fatalf("send to nobody: %+v", r)
	}
	if r := alice.run("safety", "carol"); r.code != ExitFailed {
		t.Fatalf("safety with a stranger: %+v", r)
	}

	// The profile is in use: exit 6.
	c, err := client.Open(context.Background(), client.Config{Home: alice.home, Offline: true})
	if err != nil {
		t.Fatal(err)
	}
	if r := alice.run("whoami"); r.code != ExitProfileLocked || !strings.Contains(r.stderr, "in use") {
		t.Fatalf("locked profile: %+v", r)
	}
	c.Close()

	// The server is down: send exits 4 with the message queued, and the
	// next command that connects delivers it. Nothing is lost.
	ts.Stop()
	r := alice.run("send", "--timeout", "1s", "bob", "while the server was down")
	if r.code != ExitNetwork || !hexID.MatchString(strings.TrimSpace(r.stdout)) || !strings.Contains(r.stderr, "queued") {
		t.Fatalf("send with the server down: %+v", r)
	}
	if r := alice.run("receive", "--connect-timeout", "1s"); r.code != ExitNetwork || r.stdout != "" {
		t.Fatalf("receive with the server down: %+v", r)
	}
	if r := alice.run("devices", "--timeout", "2s"); r.code != ExitNetwork {
		t.Fatalf("devices with the server down: %+v", r)
	}
	ts.Restart()
	alice.receive()
	bob.receiveUntil("queued message", hasText("alice", "while the server was down"))
	h := jsonLines(t, alice.must("history", "bob", "--json").stdout)
	if len(h) != 1 || h[0]["status"] == "pending" {
		t.Fatalf("history after the outage: %v", h)
	}
}

// failAfter accepts n writes, then fails like a closed pipe.
type failAfter struct {
	n   int
	buf strings.Builder
}

func (f *failAfter) Write(p []byte) (int, error) {
	if f.n == 0 {
		return 0, syscall.EPIPE
	}
	f.n--
	return f.buf.Write(p)
}

// TestNothingLost: receive deletes an event only once its line was
// written; when stdout breaks, the rest is printed next time.
func TestNothingLost(t *testing.T) {
	ts := startServer(t)
	alice, bob := register(t, ts, "alice"), register(t, ts, "bob")
	for _, s := range []string{"one", "two", "three"} {
		alice.send("bob", s)
	}
	var got []string
	deadline := time.Now().Add(30 * time.Second)
	for len(got) < 3 && time.Now().Before(deadline) {
		// A reader that takes one line and leaves.
		out := &failAfter{n: 1}
		var errb strings.Builder
		code := runCLI(context.Background(), []string{"--home", bob.home, "receive", "--json", "--timeout", "700ms"},
			strings.NewReader(""), out, &errb)
		if code != 0 || errb.String() != "" {
			t.Fatalf("receive into a broken pipe: exit %d, stderr %q", code, errb.String())
		}
		for _, l := range ofType(jsonLines(t, out.buf.String()), "message") {
			got = append(got, l["text"].(string))
		}
	}
	if !slices.Equal(got, []string{"one", "two", "three"}) {
		t.Fatalf("messages over runs that broke off: %v", got)
	}
}

// TestListen: listen prints as messages arrive, answers --stdin
// requests, and ends with exit 0 when its context ends (SIGTERM in main)
// or stdin closes.
func TestListen(t *testing.T) {
	ts := startServer(t)
	alice, bob := register(t, ts, "alice"), register(t, ts, "bob")

	ctx, cancel := context.WithCancel(context.Background())
	out := &syncBuffer{}
	var errb syncBuffer
	done := make(chan int, 1)
	go func() {
		done <- runCLI(ctx, []string{"--home", bob.home, "listen", "--json"}, strings.NewReader(""), out, &errb)
	}()
	waitOutput(t, out, "connected", func(s string) bool { return strings.Contains(s, `"state":"connected"`) })
	id := alice.send("bob", "live")
	waitOutput(t, out, "the message", func(s string) bool { return strings.Contains(s, id) })
	cancel()
	select {
	case code := <-done:
		if code != 0 {
			t.Fatalf("listen ended with %d: %s", code, errb.String())
		}
	case <-time.After(30 * time.Second):
		t.Fatal("listen did not stop")
	}
	ls := jsonLines(t, out.String())
	if m := ofType(ls, "message", "id", id); len(m) != 1 || m[0]["text"] != "live" {
		t.Fatalf("listen output: %v", ls)
	}

	// --stdin: requests in, responses and events out; EOF ends it.
	pr, pw := io.Pipe()
	out = &syncBuffer{}
	go func() {
		done <- runCLI(context.Background(), []string{"--home", bob.home, "listen", "--json", "--stdin"}, pr, out, &errb)
	}()
	io.WriteString(pw, `{"id":"r1","method":"send","to":"alice","text":"from a bot"}`+"\n")
	s := waitOutput(t, out, "response", func(s string) bool { return strings.Contains(s, `"request":"r1"`) })
	resp := ofType(jsonLines(t, s), "response", "request", "r1")[0]
	mid, _ := resp["message_id"].(string)
	if resp["ok"] != true || !hexID.MatchString(mid) {
		t.Fatalf("response: %v", resp)
	}
	waitOutput(t, out, "sent event", func(s string) bool {
		return len(ofType(jsonLines(t, s), "sent", "id", mid, "status", "sent")) == 1
	})
	io.WriteString(pw, `{"id":"r2","method":"send","to":"alice"}`+"\n"+`{"id":"r3","method":"read","to":"alice"}`+"\n"+"garbage\n")
	s = waitOutput(t, out, "more responses", func(s string) bool { return strings.Count(s, `"type":"response"`) == 4 })
	rs := ofType(jsonLines(t, s), "response")
	if rs[1]["ok"] != false || rs[1]["exit_code"] != 2.0 || rs[2]["ok"] != true || rs[3]["ok"] != false || rs[3]["request"] != "" {
		t.Fatalf("responses: %v", rs)
	}
	pw.Close()
	select {
	case code := <-done:
		if code != 0 {
			t.Fatalf("listen --stdin ended with %d: %s", code, errb.String())
		}
	case <-time.After(30 * time.Second):
		t.Fatal("listen --stdin did not stop at the end of stdin")
	}
	alice.receiveUntil("the bot's message", hasText("bob", "from a bot"))
}

// TestLink: a second device joins with a link code and sees new messages.
func TestLink(t *testing.T) {
	ts := startServer(t)
	alice, bob := register(t, ts, "alice"), register(t, ts, "bob")
	r := alice.must("link")
	code := strings.TrimSpace(r.stdout)
	if !strings.HasPrefix(code, "hush-link:") || !strings.Contains(r.stderr, "add a device") {
		t.Fatalf("link: %+v", r)
	}
	laptop := newUser(t, "alice-laptop")
	if r := laptop.runIn(context.Background(), code+"\n", "link", "-"); r.code != 0 || r.stdout != "linked to alice (device 2)\n" {
		t.Fatalf("link -: %+v", r)
	}
	if ds := jsonLines(t, alice.must("devices", "--json").stdout); len(ds) != 2 {
		t.Fatalf("devices after linking: %v", ds)
	}
	bob.send("alice", "to both")
	laptop.receiveUntil("message on the new device", hasText("bob", "to both"))
	alice.receiveUntil("message on the first device", hasText("bob", "to both"))
	if r := newUser(t, "x").run("link", "hush-link:garbage"); r.code != ExitFailed {
		t.Fatalf("bad link code: %+v", r)
	}
}

// TestTUIEntry: `hush` with no command hands an open client (registered
// or not) and the options to the terminal UI.
func TestTUIEntry(t *testing.T) {
	home := filepath.Join(t.TempDir(), "p")
	var got TUIOptions
	var registered bool
	var errb strings.Builder
	code := Main(context.Background(), []string{"--home", home, "--config", "/x/tui.toml"}, Env{
		Stdout: io.Discard, Stderr: &errb,
		Getenv: func(k string) string {
			if k == "HUSH_SERVER" {
				return "http://example.test"
			}
			return ""
		},
		TUI: func(ctx context.Context, c *client.Client, o TUIOptions) error {
			got = o
			_, registered = c.Account()
			return nil
		},
	})
	if code != 0 || got != (TUIOptions{Home: home, ConfigPath: "/x/tui.toml", ServerURL: "http://example.test"}) || registered {
		t.Fatalf("exit %d, options %+v, registered %v, stderr %q", code, got, registered, errb.String())
	}
	if fi, err := os.Stat(filepath.Join(home, "hush.log")); err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("log file: %v %v", fi, err)
	}
	if fi, err := os.Stat(home); err != nil || fi.Mode().Perm() != 0o700 {
		t.Fatalf("profile directory: %v %v", fi, err)
	}
	if r := newUser(t, "x").run("--config", "/x/tui.toml", "whoami"); r.code != ExitUsage {
		t.Fatalf("--config with a command: %+v", r)
	}
}
