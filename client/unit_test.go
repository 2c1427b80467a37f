package client

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"math/rand/v2"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"

	"github.com/hushchat/hush/client/store"
	"github.com/hushchat/hush/crypto"
	"github.com/hushchat/hush/protocol"
)

func TestBackoff(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 2))
	base, max := 100*time.Millisecond, 3*time.Second
	for n := range 12 {
		ceil := base << n
		if ceil > max || n > 8 {
			ceil = max
		}
		for range 200 {
			d := backoff(n, base, max, r)
			if d < base/2 || d > ceil {
				t.Fatalf("attempt %d: %v outside [%v, %v]", n, d, base/2, ceil)
			}
		}
	}
	// Jitter: draws differ.
	seen := map[time.Duration]bool{}
	for range 50 {
		seen[backoff(5, base, max, r)] = true
	}
	if len(seen) < 10 {
		t.Fatalf("backoff is not jittered: %d distinct values", len(seen))
	}
}

// fakeClock is a manual clock.
type fakeClock struct {
	mu     sync.Mutex
	now    time.Time
	timers []*fakeTimer
}

type fakeTimer struct {
	at time.Time
	c  chan time.Time
	ok bool
}

func (f *fakeClock) Now() time.Time {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.now
}

func (f *fakeClock) NewTimer(d time.Duration) Timer {
	f.mu.Lock()
	defer f.mu.Unlock()
	t := &fakeTimer{at: f.now.Add(d), c: make(chan time.Time, 1), ok: true}
	f.timers = append(f.timers, t)
	return t
}

func (t *fakeTimer) C() <-chan time.Time { return t.c }
func (t *fakeTimer) Stop() bool {
	was := t.ok
	t.ok = false
	return was
}

func (f *fakeClock) advance(d time.Duration) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.now = f.now.Add(d)
	for _, t := range f.timers {
		if t.ok && !t.at.After(f.now) {
			t.ok = false
			t.c <- f.now
		}
	}
}

func TestSleepOnClock(t *testing.T) {
	clk := &fakeClock{now: time.Unix(1000, 0)}
	done := make(chan struct{})
	res := make(chan bool)
	go func() { res <- sleep(clk, time.Minute, done) }()
	for {
		clk.mu.Lock()
		n := len(clk.timers)
		clk.mu.Unlock()
		if n == 1 {
			break
		}
		time.Sleep(time.Millisecond)
	}
	clk.advance(59 * time.Second)
	select {
	case <-res:
		t.Fatal("woke early")
	case <-time.After(20 * time.Millisecond):
	}
	clk.advance(time.Second)
	if !<-res {
		t.Fatal("sleep reported interruption")
	}
	go func() { res <- sleep(clk, time.Hour, done) }()
	close(done)
	if <-res {
		t.Fatal("sleep ignored done")
	}
}

func TestDeriveRelayURL(t *testing.T) {
	for in, want := range map[string]string{
		"http://127.0.0.1:8080":      "ws://127.0.0.1:8080/v1/ws",
		"https://hush.example/":      "wss://hush.example/v1/ws",
		"https://hush.example/base/": "wss://hush.example/base/v1/ws",
	} {
		got, err := deriveRelayURL(in)
		if err != nil || got != want {
			t.Errorf("deriveRelayURL(%q) = %q, %v; want %q", in, got, err, want)
		}
	}
	if _, err := deriveRelayURL("ftp://x"); err == nil {
		t.Error("ftp URL accepted")
	}
}

func TestLinkCode(t *testing.T) {
	b, _ := json.Marshal(linkCode{Version: 1, Server: "http://s", Relay: "ws://s/v1/ws", Account: "alice", Token: "t"})
	code := linkCodePrefix + base64.RawURLEncoding.EncodeToString(b)
	lc, err := parseLinkCode(" " + code + "\n")
	if err != nil || lc.Account != "alice" || lc.Token != "t" {
		t.Fatalf("parse = %+v, %v", lc, err)
	}
	for _, bad := range []string{"", "hush-link:", "hush-link:!!!", "other:" + code[len(linkCodePrefix):],
		linkCodePrefix + strings.Repeat("A", 5000)} {
		if _, err := parseLinkCode(bad); err == nil {
			t.Errorf("parseLinkCode(%q) accepted", truncate(bad, 30))
		}
	}
	b, _ = json.Marshal(linkCode{Version: 2, Server: "http://s", Account: "alice", Token: "t"})
	if _, err := parseLinkCode(linkCodePrefix + base64.RawURLEncoding.EncodeToString(b)); err == nil {
		t.Error("a version 2 code was accepted")
	}
}

func TestIDsAndConvs(t *testing.T) {
	id := newMessageID()
	got, err := ParseMessageID(id.String())
	if err != nil || got != id {
		t.Fatalf("message id round trip: %v %v", got, err)
	}
	if _, err := ParseMessageID("abc"); err == nil {
		t.Fatal("short id accepted")
	}
	gid := newGroupID()
	c := GroupConv(gid)
	if !c.IsGroup() || c.Peer() != "" {
		t.Fatalf("group conv %q", c)
	}
	if g, ok := c.Group(); !ok || g != gid {
		t.Fatal("group conv does not round trip")
	}
	if d := Direct("bob"); d.IsGroup() || d.Peer() != "bob" {
		t.Fatalf("direct conv %q", d)
	}
	for _, good := range []string{"@bob", string(c)} {
		if _, err := ParseConvID(good); err != nil {
			t.Errorf("ParseConvID(%q): %v", good, err)
		}
	}
	for _, bad := range []string{"", "bob", "@B!", "#12", "#" + strings.Repeat("z", 32)} {
		if _, err := ParseConvID(bad); err == nil {
			t.Errorf("ParseConvID(%q) accepted", bad)
		}
	}
	var st Status
	for _, s := range []Status{StatusFailed, StatusPending, StatusSent, StatusDelivered, StatusRead} {
		b, _ := s.MarshalText()
		if err := st.UnmarshalText(b); err != nil || st != s {
			t.Fatalf("status %v round trip: %v %v", s, st, err)
		}
	}
}

func TestDurableEventsRoundTrip(t *testing.T) {
	gid := newGroupID()
	evs := []Event{
		&MessageEvent{Message: Message{ID: newMessageID(), Conv: GroupConv(gid), Group: &gid, Sender: "bob", Text: "hi",
			Kind: KindText, Attachment: &Attachment{ObjectKey: "k", Key: []byte{1}, Digest: []byte{2}}}},
		&ReceiptEvent{Conv: Direct("bob"), From: "bob", Status: StatusRead, MessageIDs: []MessageID{newMessageID()}},
		&IdentityChangedEvent{Account: "bob", Device: 2},
		&UndecryptableEvent{Message: Message{Kind: KindUndecryptable, Error: "x"}},
		&GroupUpdateEvent{Group: Group{ID: gid, Name: "g", Members: []Member{{"a", true}}}, Action: "add", Targets: []string{"c"}},
	}
	for _, ev := range evs {
		b, err := json.Marshal(ev)
		if err != nil {
			t.Fatal(err)
		}
		back, err := decodeEvent(ev.Type(), b)
		if err != nil {
			t.Fatalf("%s: %v", ev.Type(), err)
		}
		b2, _ := json.Marshal(back)
		if string(b) != string(b2) {
			t.Fatalf("%s round trip:\n%s\n%s", ev.Type(), b, b2)
		}
	}
	if _, err := decodeEvent("typing", []byte("{}")); err == nil {
		t.Fatal("an ephemeral kind decoded as durable")
	}
}

// offlineClient is a client with an account but no server, for tests of
// the receive path alone.
func offlineClient(t testing.TB, name string) *Client {
	t.Helper()
	cfg := Config{Home: filepath.Join(t.TempDir(), name), Offline: true, Logger: testLogger(t)}
	c, err := Open(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	id, _ := crypto.GenerateIdentityKeyPair()
	reg, _ := crypto.GenerateRegistrationID()
	a := &store.Account{Name: name, DeviceID: 1, ServerURL: "http://127.0.0.1:1", RelayURL: "ws://127.0.0.1:1/v1/ws",
		IdentityPrivate: id.PrivateKey(), RegistrationID: reg, NextPreKeyID: 1, NextSignedPreKeyID: 2, SignedPreKeyID: 1}
	if err := c.db.SaveAccount(context.Background(), a); err != nil {
		t.Fatal(err)
	}
	if err := c.useAccount(a); err != nil {
		t.Fatal(err)
	}
	return c
}

func contentSeeds() [][]byte {
	gid := make([]byte, 16)
	gid[0] = 7
	id := func() []byte { b := newMessageID(); return b[:] }
	cs := []*protocol.Content{
		{MessageId: id(), Counter: 1, Body: &protocol.Content_Text{Text: &protocol.Text{Body: "hi"}}},
		{MessageId: id(), Counter: 2, GroupId: gid, Body: &protocol.Content_Text{Text: &protocol.Text{Body: "group"}}},
		{MessageId: id(), Body: &protocol.Content_Receipt{Receipt: &protocol.Receipt{Type: protocol.Receipt_TYPE_READ, MessageIds: [][]byte{id()}}}},
		{MessageId: id(), Body: &protocol.Content_Typing{Typing: &protocol.Typing{Started: true}}},
		{MessageId: id(), GroupId: gid, Body: &protocol.Content_GroupUpdate{GroupUpdate: &protocol.GroupUpdate{GroupId: gid, Revision: 1,
			Name: "g", Members: []*protocol.GroupMember{{Account: "mallory", Admin: true}, {Account: "alice"}}, Action: protocol.GroupUpdate_ACTION_CREATE}}},
		{MessageId: id(), Body: &protocol.Content_SenderKeyDistribution{SenderKeyDistribution: &protocol.SenderKeyDistribution{GroupId: gid, Distribution: []byte{0x33, 1, 2}}}},
		{MessageId: id(), Body: &protocol.Content_RetryRequest{RetryRequest: &protocol.RetryRequest{ServerId: 9}}},
		{MessageId: id(), Body: &protocol.Content_SyncSent{SyncSent: &protocol.SyncSent{Destination: "bob",
			Content: &protocol.Content{MessageId: id(), Body: &protocol.Content_Text{Text: &protocol.Text{Body: "x"}}}}}},
		{MessageId: id(), Body: &protocol.Content_Attachment{Attachment: &protocol.AttachmentPointer{ObjectKey: "o",
			Key: make([]byte, 64), Digest: make([]byte, 32), Size: 3}}, Quote: &protocol.Quote{MessageId: id(), Author: "alice", Text: "q"}},
	}
	var out [][]byte
	for _, c := range cs {
		b, err := proto.Marshal(c)
		if err != nil {
			panic(err)
		}
		out = append(out, b)
	}
	return out
}

// FuzzApplyContent feeds arbitrary decrypted content from an
// authenticated peer (or from this account's other device) into the
// receive path: it must never panic, and must leave the database usable.
func FuzzApplyContent(f *testing.F) {
	for _, s := range contentSeeds() {
		f.Add(s, false)
		f.Add(s, true)
	}
	c := offlineClient(f, "alice")
	var serverID uint64
	f.Fuzz(func(t *testing.T, data []byte, fromSelf bool) {
		if len(data) > protocol.MaxContentSize {
			return
		}
		content, err := protocol.DecodeContent(protocol.Pad(data))
		if err != nil {
			return
		}
		serverID++
		sender := "mallory"
		if fromSelf {
			sender = "alice"
		}
		e := &envelope{serverID: serverID, sender: sender, device: 2, typ: protocol.EnvelopeType_ENVELOPE_TYPE_SIGNAL}
		err = c.tx(context.Background(), func(ctx context.Context, tx *txn) error {
			return c.applyContent(ctx, tx, e, content)
		})
		if err != nil && !strings.Contains(err.Error(), "invalid") && !strings.Contains(err.Error(), "limit") {
			t.Fatalf("apply %T: %v", content.Body, err)
		}
		if _, err := c.Conversations(context.Background()); err != nil {
			t.Fatal(err)
		}
	})
}

// FuzzParseLinkCode: any input is refused or parsed, never a panic.
func FuzzParseLinkCode(f *testing.F) {
	b, _ := json.Marshal(linkCode{Version: 1, Server: "http://s", Relay: "ws://s/v1/ws", Account: "alice", Token: "t"})
	f.Add(linkCodePrefix + base64.RawURLEncoding.EncodeToString(b))
	f.Add("hush-link:")
	f.Fuzz(func(t *testing.T, s string) {
		lc, err := parseLinkCode(s)
		if err == nil && (lc.Token == "" || protocol.ValidateAccountName(lc.Account) != nil) {
			t.Fatalf("accepted a bad code: %+v", lc)
		}
	})
}

// FuzzParseConvID: accepted ids round-trip through their parts.
func FuzzParseConvID(f *testing.F) {
	f.Add("@bob")
	f.Add("#00112233445566778899aabbccddeeff")
	f.Fuzz(func(t *testing.T, s string) {
		c, err := ParseConvID(s)
		if err != nil {
			return
		}
		if g, ok := c.Group(); ok {
			if GroupConv(g) != c {
				t.Fatalf("%q does not round trip", s)
			}
		} else if Direct(c.Peer()) != c {
			t.Fatalf("%q does not round trip", s)
		}
	})
}
