package app

import (
	"bytes"
	"context"
	"fmt"
	"io/fs"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/hushchat/hush/crypto"
	"github.com/hushchat/hush/keyserver"
	"github.com/hushchat/hush/keyserver/ksclient"
	"github.com/hushchat/hush/keyserver/ratelimit"
	kssqlite "github.com/hushchat/hush/keyserver/store/sqlite"
	"github.com/hushchat/hush/protocol"
)

var testRate = ratelimit.Rate{Burst: 10_000, Per: time.Minute}

func startAllInOne(t *testing.T, dir string, log *slog.Logger) *App {
	t.Helper()
	a, err := StartAllInOne(context.Background(), AllInOneConfig{
		Listen: "127.0.0.1:0", DataDir: dir, AnonRate: testRate, BundleRate: testRate,
		Relay: RelayOptions{AllowPrivatePush: true}, Logger: log,
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { shutdown(t, a) })
	return a
}

func shutdown(t *testing.T, a *App) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := a.Shutdown(ctx); err != nil {
		t.Errorf("shutdown: %v", err)
	}
}

func base(a *App) string { return "http://" + a.Addr() }

// Two people, three devices, real Signal ciphertext: online delivery,
// offline queueing, the sender's own other device, replies.
func TestEndToEndOnlineAndOffline(t *testing.T) {
	a := startAllInOne(t, dataDir(t), nil)
	alice1 := register(t, base(a), "alice")
	alice2 := alice1.addDevice(t)
	bob := register(t, base(a), "bob")

	ca1 := alice1.connect(t)
	cb := bob.connect(t)
	ca1.drain()
	cb.drain()

	// Alice writes to Bob; her own second device (offline) gets a copy.
	for i := range 3 {
		msg := fmt.Appendf(nil, "hello bob %d", i)
		ack := ca1.sendAck(alice1.encryptSend(t, clientID(), msg, bob.addr(), alice2.addr()))
		if ack.Error != nil {
			t.Fatalf("send: %v", ack.Error)
		}
		env := cb.mustNext().GetDeliver().GetEnvelopes()[0]
		if got := bob.decrypt(t, env); !bytes.Equal(got, msg) {
			t.Fatalf("bob read %q, want %q", got, msg)
		}
		cb.ack([]*protocol.Envelope{env})
	}
	// Bob adds a device: the relay's cached device list is invalidated at
	// once, so a send that does not know the new device yet is refused
	// with the exact difference.
	bob2 := bob.addDevice(t)
	ack := ca1.sendAck(alice1.encryptSend(t, clientID(), []byte("x"), bob.addr()))
	if ack.Error.GetCode() != protocol.ErrorCode_CODE_DEVICE_MISMATCH || ack.Error.Mismatches[0].Account != "bob" ||
		len(ack.Error.Mismatches[0].Missing) != 1 || ack.Error.Mismatches[0].Missing[0] != bob2.devID {
		t.Fatalf("send missing bob's new device: %v", ack)
	}

	// Bob answers while Alice is offline; both her devices drain later.
	ca1.ws.Close()
	<-ca1.done
	reply := []byte("hi alice")
	if ack := cb.sendAck(bob.encryptSend(t, clientID(), reply, alice1.addr(), alice2.addr())); ack.Error != nil {
		t.Fatal(ack.Error)
	}
	for _, d := range []*device{alice1, alice2} {
		c := d.connect(t)
		envs := c.drain()
		var got []string
		for _, e := range envs {
			got = append(got, string(d.decrypt(t, e)))
		}
		want := []string{"hi alice"}
		if d == alice2 {
			want = []string{"hello bob 0", "hello bob 1", "hello bob 2", "hi alice"}
		}
		if strings.Join(got, "|") != strings.Join(want, "|") {
			t.Fatalf("%s read %q, want %q", d.addr(), got, want)
		}
		c.ack(envs)
	}
}

// Group messages: one sender-key ciphertext, stored once, read by every
// member.
func TestEndToEndGroup(t *testing.T) {
	a := startAllInOne(t, dataDir(t), nil)
	alice := register(t, base(a), "alice")
	members := []*device{register(t, base(a), "bob"), register(t, base(a), "carol"), register(t, base(a), "dave")}
	ctx := context.Background()
	ca := alice.connect(t)
	ca.drain()
	const group = "0123456789abcdef0123456789abcdef"
	dist, err := alice.proto.GroupDistribution(ctx, group)
	if err != nil {
		t.Fatal(err)
	}
	var to []crypto.Address
	for _, m := range members {
		to = append(to, m.addr())
	}
	// The distribution goes pairwise, then one shared ciphertext to all.
	if ack := ca.sendAck(alice.encryptSend(t, clientID(), dist, to...)); ack.Error != nil {
		t.Fatal(ack.Error)
	}
	ct, err := alice.proto.GroupEncrypt(ctx, group, []byte("hello group"))
	if err != nil {
		t.Fatal(err)
	}
	s := &protocol.Send{ClientId: clientID(), Payload: ct, Type: protocol.EnvelopeType_ENVELOPE_TYPE_SENDER_KEY}
	for _, m := range members {
		s.Recipients = append(s.Recipients, &protocol.Recipient{Account: m.account, Device: m.devID})
	}
	if ack := ca.sendAck(&protocol.Frame{Body: &protocol.Frame_Send{Send: s}}); ack.Error != nil {
		t.Fatal(ack.Error)
	}
	for _, m := range members {
		c := m.connect(t)
		envs := c.drain()
		if len(envs) != 2 {
			t.Fatalf("%s got %d envelopes", m.addr(), len(envs))
		}
		if err := m.proto.ProcessDistribution(ctx, group, alice.addr(), m.decrypt(t, envs[0])); err != nil {
			t.Fatal(err)
		}
		if envs[1].Type != protocol.EnvelopeType_ENVELOPE_TYPE_SENDER_KEY {
			t.Fatalf("group envelope type %v", envs[1].Type)
		}
		pt, err := m.proto.GroupDecrypt(ctx, group, alice.addr(), envs[1].Payload)
		if err != nil || string(pt) != "hello group" {
			t.Fatalf("%s group message: %q, %v", m.addr(), pt, err)
		}
		c.ack(envs)
	}
}

// A clean restart of hush-server loses nothing that was acknowledged.
func TestRestartKeepsQueuedMessages(t *testing.T) {
	dir := dataDir(t)
	a, err := StartAllInOne(context.Background(), AllInOneConfig{Listen: "127.0.0.1:0", DataDir: dir, AnonRate: testRate, BundleRate: testRate})
	if err != nil {
		t.Fatal(err)
	}
	alice := register(t, base(a), "alice")
	bob := register(t, base(a), "bob")
	ca := alice.connect(t)
	ca.drain()
	const n = 40
	for i := range n {
		if ack := ca.sendAck(alice.encryptSend(t, clientID(), fmt.Appendf(nil, "m%d", i), bob.addr())); ack.Error != nil {
			t.Fatal(ack.Error)
		}
	}
	shutdown(t, a)

	a = startAllInOne(t, dir, nil)
	for _, d := range []*device{alice, bob} {
		d.base = base(a)
		ks, err := ksclient.New(d.base)
		if err != nil {
			t.Fatal(err)
		}
		d.ks = ks
	}
	bob.login(t) // the key server kept the account too
	cb := bob.connect(t)
	envs := cb.drain()
	if len(envs) != n {
		t.Fatalf("after restart bob drained %d, want %d", len(envs), n)
	}
	for i, e := range envs {
		if got := string(bob.decrypt(t, e)); got != fmt.Sprintf("m%d", i) {
			t.Fatalf("message %d = %q", i, got)
		}
	}
}

// Removing a device revokes it: its open connection is closed and its
// token no longer connects, although it has not expired.
func TestRemovedDeviceRevoked(t *testing.T) {
	a := startAllInOne(t, dataDir(t), nil)
	alice1 := register(t, base(a), "alice")
	alice2 := alice1.addDevice(t)
	c2 := alice2.connect(t)
	c2.drain()
	if err := alice1.ks.RemoveDevice(context.Background(), alice1.token, alice2.devID); err != nil {
		t.Fatal(err)
	}
	select {
	case <-c2.done:
	case <-time.After(10 * time.Second):
		t.Fatal("removed device still connected")
	}
	if !strings.Contains(c2.err.Error(), fmt.Sprint(protocol.CloseRevoked)) {
		t.Fatalf("close: %v, want code %d", c2.err, protocol.CloseRevoked)
	}
	if _, err := alice2.dial(); err == nil || !strings.Contains(err.Error(), "401") {
		t.Fatalf("removed device's token: %v, want HTTP 401", err)
	}
}

// hush-relay alone, next to a key server in another "process".
func TestStandaloneRelay(t *testing.T) {
	dir := dataDir(t)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	kst, err := kssqlite.Open(context.Background(), filepath.Join(dir, "keys.db"))
	if err != nil {
		t.Fatal(err)
	}
	defer kst.Close()
	key, _, err := keyserver.LoadOrCreateSigningKey(filepath.Join(dir, "signing.key"))
	if err != nil {
		t.Fatal(err)
	}
	ks, err := keyserver.New(keyserver.Config{SigningKey: key, InternalSecret: "sekret", AnonRate: testRate, BundleRate: testRate}, kst)
	if err != nil {
		t.Fatal(err)
	}
	kss := httptest.NewServer(ks.Handler())
	defer kss.Close()

	r, err := StartRelay(context.Background(), RelayConfig{Listen: "127.0.0.1:0", DataDir: filepath.Join(dir, "relay"), KeyServer: kss.URL, InternalSecret: "sekret"})
	if err != nil {
		t.Fatal(err)
	}
	defer shutdown(t, r)
	if _, err := StartRelay(context.Background(), RelayConfig{Listen: "127.0.0.1:0", DataDir: filepath.Join(dir, "r2"), KeyServer: kss.URL}); err == nil {
		t.Fatal("relay started without the internal secret")
	}
	alice := register(t, kss.URL, "alice")
	bob := register(t, kss.URL, "bob")
	alice.base, bob.base = base(r), base(r) // WebSockets go to the relay
	ca, cb := alice.connect(t), bob.connect(t)
	ca.drain()
	cb.drain()
	if ack := ca.sendAck(alice.encryptSend(t, clientID(), []byte("via relay"), bob.addr())); ack.Error != nil {
		t.Fatal(ack.Error)
	}
	env := cb.mustNext().GetDeliver().Envelopes[0]
	if got := bob.decrypt(t, env); string(got) != "via relay" {
		t.Fatalf("bob read %q", got)
	}
	if resp, err := http.Get(base(r) + "/readyz"); err != nil || resp.StatusCode != 200 {
		t.Fatalf("readyz: %v %v", resp, err)
	}
}

// The blind-relay test: messages carrying a unique marker go through the
// relay (online, offline, to groups); afterwards neither the data
// directory (databases, WAL, everything) nor the logs contain the marker.
func TestBlindRelay(t *testing.T) {
	dir := dataDir(t)
	var logs syncBuffer
	log := slog.New(slog.NewJSONHandler(&logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	a, err := StartAllInOne(context.Background(), AllInOneConfig{Listen: "127.0.0.1:0", DataDir: dir, AnonRate: testRate, BundleRate: testRate, Logger: log})
	if err != nil {
		t.Fatal(err)
	}
	marker := fmt.Sprintf("MARKER-%x", clientID())
	alice := register(t, base(a), "alice")
	bob := register(t, base(a), "bob")
	carol := register(t, base(a), "carol")
	ca := alice.connect(t)
	ca.drain()
	ctx := context.Background()
	const group = "fedcba9876543210fedcba9876543210"
	dist, _ := alice.proto.GroupDistribution(ctx, group)
	ca.sendAck(alice.encryptSend(t, clientID(), dist, bob.addr(), carol.addr()))
	for i := range 30 {
		pt := []byte(fmt.Sprintf("%s secret %d", marker, i))
		if ack := ca.sendAck(alice.encryptSend(t, clientID(), pt, bob.addr())); ack.Error != nil {
			t.Fatal(ack.Error)
		}
		gct, _ := alice.proto.GroupEncrypt(ctx, group, pt)
		s := &protocol.Send{ClientId: clientID(), Payload: gct, Type: protocol.EnvelopeType_ENVELOPE_TYPE_SENDER_KEY,
			Recipients: []*protocol.Recipient{{Account: "bob", Device: bob.devID}, {Account: "carol", Device: carol.devID}}}
		if ack := ca.sendAck(&protocol.Frame{Body: &protocol.Frame_Send{Send: s}}); ack.Error != nil {
			t.Fatal(ack.Error)
		}
	}
	// Bob reads and acks some; carol's stay queued.
	cb := bob.connect(t)
	envs := cb.drain()
	if pt := bob.decrypt(t, envs[1]); !bytes.Contains(pt, []byte(marker)) {
		t.Fatal("the marker did not even make it through")
	}
	cb.ack(envs[:len(envs)/2])
	cb.roundTrip()
	shutdown(t, a)

	scan := func(name string, b []byte) {
		for _, form := range [][]byte{[]byte(marker), []byte(strings.ToLower(marker)), []byte(fmt.Sprintf("%x", marker))} {
			if bytes.Contains(b, form) {
				t.Errorf("%s contains the plaintext marker", name)
			}
		}
	}
	sawAccount := false
	filepath.WalkDir(dir, func(path string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		b, err := os.ReadFile(path)
		if err != nil {
			t.Fatal(err)
		}
		scan(path, b)
		if strings.HasPrefix(d.Name(), "queue.db") && bytes.Contains(b, []byte("carol")) {
			sawAccount = true // the scan does read what the relay stored
		}
		return nil
	})
	if !sawAccount {
		t.Fatal("queue files hold no account name: the scan read nothing")
	}
	l := logs.Bytes()
	if !bytes.Contains(l, []byte("hush-server listening")) {
		t.Fatal("no logs captured")
	}
	scan("logs", l)
	if bytes.Contains(l, []byte(alice.token)) || bytes.Contains(l, []byte(bob.token)) {
		t.Error("logs contain a token")
	}
}

// dataDir is a fresh data directory path (not yet created: hush-server
// creates it 0700 and refuses one that others can read).
func dataDir(t *testing.T) string { return filepath.Join(t.TempDir(), "data") }
