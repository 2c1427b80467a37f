package store

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/hushchat/hush/crypto"
)

func openTest(t testing.TB) *DB {
	t.Helper()
	db, err := Open(context.Background(), filepath.Join(t.TempDir(), "hush.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	return db
}

func TestMigrations(t *testing.T) {
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "hush.db")
	db, err := Open(ctx, path)
	if err != nil {
		t.Fatal(err)
	}
	if v, err := db.Version(ctx); err != nil || v != len(schema) {
		t.Fatalf("version = %d, %v; want %d", v, err, len(schema))
	}
	if err := db.SetSetting(ctx, "k", "v"); err != nil {
		t.Fatal(err)
	}
	db.Close()

	// A later binary adds a step: the data survives and the step runs once.
	steps := append(append([]string{}, schema...), "CREATE TABLE extra (x INTEGER) STRICT")
	db, err = open(ctx, path, steps)
	if err != nil {
		t.Fatal(err)
	}
	if v, _ := db.Version(ctx); v != len(steps) {
		t.Fatalf("version after migration = %d, want %d", v, len(steps))
	}
	if v, ok, err := db.Setting(ctx, "k"); err != nil || !ok || v != "v" {
		t.Fatalf("setting after migration = %q %v %v", v, ok, err)
	}
	db.Close()
	db, err = open(ctx, path, steps) // re-running must not re-apply the step
	if err != nil {
		t.Fatal(err)
	}
	db.Close()

	// The older binary refuses the newer file.
	if _, err := Open(ctx, path); !errors.Is(err, ErrSchemaTooNew) {
		t.Fatalf("open newer schema: %v, want ErrSchemaTooNew", err)
	}

	// A failing step leaves the database at its previous version.
	bad := append(append([]string{}, steps...), "CREATE TABLE extra2 (x INTEGER) STRICT; THIS IS NOT SQL")
	if _, err := open(ctx, path, bad); err == nil {
		t.Fatal("bad migration succeeded")
	}
	db, err = open(ctx, path, steps)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	if v, _ := db.Version(ctx); v != len(steps) {
		t.Fatalf("version after failed migration = %d, want %d", v, len(steps))
	}
	var n int
	if err := db.r.QueryRowContext(ctx, "SELECT COUNT(*) FROM sqlite_master WHERE name = 'extra2'").Scan(&n); err != nil || n != 0 {
		t.Fatalf("failed migration left table extra2 (n=%d, %v)", n, err)
	}
}

func TestFileMode(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	path := filepath.Join(dir, "hush.db")
	db, err := Open(ctx, path)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	if err := db.SetSetting(ctx, "a", "b"); err != nil {
		t.Fatal(err)
	}
	for _, p := range []string{path, path + "-wal", path + "-shm"} {
		fi, err := os.Stat(p)
		if err != nil {
			t.Fatal(err)
		}
		if m := fi.Mode().Perm(); m&0o077 != 0 {
			t.Errorf("%s has mode %v, want no group/other access", filepath.Base(p), m)
		}
	}
}

// TestCryptoStoreContract checks the guarantees crypto.Store documents.
func TestCryptoStoreContract(t *testing.T) {
	ctx := context.Background()
	db := openTest(t)
	bob := crypto.Address{Name: "bob", DeviceID: 2}

	for name, load := range map[string]func() error{
		"identity":   func() error { _, err := db.LoadIdentity(ctx, bob); return err },
		"prekey":     func() error { _, err := db.LoadPreKey(ctx, 7); return err },
		"signed":     func() error { _, err := db.LoadSignedPreKey(ctx, 7); return err },
		"session":    func() error { _, err := db.LoadSession(ctx, bob); return err },
		"sender key": func() error { _, err := db.LoadSenderKey(ctx, "g", bob); return err },
	} {
		if err := load(); !errors.Is(err, crypto.ErrNotFound) {
			t.Errorf("load missing %s: %v, want ErrNotFound", name, err)
		}
	}

	// Exact bytes back; replace; delete of missing is fine.
	rec := []byte{0, 1, 2, 0xff}
	if err := db.StoreSession(ctx, bob, rec); err != nil {
		t.Fatal(err)
	}
	if err := db.StoreSession(ctx, crypto.Address{Name: "bob", DeviceID: 1}, []byte{9}); err != nil {
		t.Fatal(err)
	}
	if got, err := db.LoadSession(ctx, bob); err != nil || !bytes.Equal(got, rec) {
		t.Fatalf("load session = %x, %v", got, err)
	}
	if ids, err := db.SessionDeviceIDs(ctx, "bob"); err != nil || fmt.Sprint(ids) != "[1 2]" {
		t.Fatalf("session device ids = %v, %v", ids, err)
	}
	if err := db.DeleteSession(ctx, crypto.Address{Name: "nobody", DeviceID: 1}); err != nil {
		t.Fatal(err)
	}
	if err := db.RemovePreKey(ctx, 12345); err != nil {
		t.Fatal(err)
	}
	for _, id := range []uint32{5, 2, 9} {
		if err := db.StoreSignedPreKey(ctx, id, []byte{byte(id)}); err != nil {
			t.Fatal(err)
		}
	}
	if ids, _ := db.SignedPreKeyIDs(ctx); fmt.Sprint(ids) != "[2 5 9]" {
		t.Fatalf("signed prekey ids = %v", ids)
	}
	if err := db.StoreSenderKey(ctx, "g\x00\xff", bob, []byte("sk")); err != nil {
		t.Fatal(err)
	}
	if got, err := db.LoadSenderKey(ctx, "g\x00\xff", bob); err != nil || string(got) != "sk" {
		t.Fatalf("sender key = %q, %v", got, err)
	}

	// A failing nested Atomic undoes only its own writes.
	err := db.Atomic(ctx, func(ctx context.Context) error {
		if err := db.StorePreKey(ctx, 100, []byte("outer")); err != nil {
			return err
		}
		inner := db.Atomic(ctx, func(ctx context.Context) error {
			db.StorePreKey(ctx, 101, []byte("inner"))
			return errors.New("inner failed")
		})
		if inner == nil {
			t.Error("inner error lost")
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := db.LoadPreKey(ctx, 100); err != nil {
		t.Errorf("outer write lost: %v", err)
	}
	if _, err := db.LoadPreKey(ctx, 101); !errors.Is(err, crypto.ErrNotFound) {
		t.Errorf("failed inner write kept: %v", err)
	}

	// Atomic: all or nothing; reads inside see writes inside; nested joins.
	boom := errors.New("boom")
	err = db.Atomic(ctx, func(ctx context.Context) error {
		if err := db.StorePreKey(ctx, 1, []byte("one")); err != nil {
			return err
		}
		if got, err := db.LoadPreKey(ctx, 1); err != nil || string(got) != "one" {
			t.Errorf("read inside Atomic = %q, %v", got, err)
		}
		return db.Atomic(ctx, func(ctx context.Context) error {
			if err := db.StoreIdentity(ctx, bob, crypto.IdentityRecord{Key: []byte("k")}); err != nil {
				return err
			}
			return boom
		})
	})
	if !errors.Is(err, boom) {
		t.Fatalf("Atomic = %v, want boom", err)
	}
	if _, err := db.LoadPreKey(ctx, 1); !errors.Is(err, crypto.ErrNotFound) {
		t.Errorf("prekey survived a failed Atomic: %v", err)
	}
	if _, err := db.LoadIdentity(ctx, bob); !errors.Is(err, crypto.ErrNotFound) {
		t.Errorf("identity survived a failed nested Atomic: %v", err)
	}
	if err := db.Atomic(ctx, func(ctx context.Context) error { return db.StorePreKey(ctx, 1, []byte("one")) }); err != nil {
		t.Fatal(err)
	}
	if _, err := db.LoadPreKey(ctx, 1); err != nil {
		t.Fatalf("prekey after Atomic: %v", err)
	}

	// A panic inside Atomic rolls back and propagates.
	func() {
		defer func() {
			if recover() == nil {
				t.Error("panic did not propagate")
			}
		}()
		db.Atomic(ctx, func(ctx context.Context) error {
			db.StorePreKey(ctx, 2, []byte("two"))
			panic("library bug")
		})
	}()
	if _, err := db.LoadPreKey(ctx, 2); !errors.Is(err, crypto.ErrNotFound) {
		t.Errorf("prekey survived a panic in Atomic: %v", err)
	}

	// The verified flag survives re-storing the same key; first-seen is kept.
	if err := db.StoreIdentity(ctx, bob, crypto.IdentityRecord{Key: []byte("k1"), Verified: true}); err != nil {
		t.Fatal(err)
	}
	if r, _ := db.LoadIdentity(ctx, bob); !r.Verified || string(r.Key) != "k1" {
		t.Fatalf("identity = %+v", r)
	}
}

// TestProtocolOverDB runs a real Signal session between two devices whose
// state lives in two profile databases, including a group.
func TestProtocolOverDB(t *testing.T) {
	ctx := context.Background()
	type party struct {
		p    *crypto.Protocol
		db   *DB
		spk  *crypto.SignedPreKey
		pk   []*crypto.PreKey
		id   *crypto.IdentityKeyPair
		reg  uint32
		addr crypto.Address
	}
	mk := func(name string) *party {
		db := openTest(t)
		id, _ := crypto.GenerateIdentityKeyPair()
		reg, _ := crypto.GenerateRegistrationID()
		addr := crypto.Address{Name: name, DeviceID: 1}
		p, err := crypto.New(crypto.Config{Address: addr, Identity: id, RegistrationID: reg, Store: db,
			Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
		if err != nil {
			t.Fatal(err)
		}
		spk, _ := crypto.GenerateSignedPreKey(id, 1)
		pks, _, _ := crypto.GeneratePreKeys(1, 3)
		if err := p.StoreSignedPreKey(ctx, spk); err != nil {
			t.Fatal(err)
		}
		if err := p.StorePreKeys(ctx, pks); err != nil {
			t.Fatal(err)
		}
		return &party{p: p, db: db, spk: spk, pk: pks, id: id, reg: reg, addr: addr}
	}
	a, b := mk("alice"), mk("bob")
	if err := a.p.ProcessBundle(ctx, b.addr, crypto.MakeBundle(b.id, b.reg, 1, b.spk, b.pk[0])); err != nil {
		t.Fatal(err)
	}
	for i := range 20 {
		from, to := a, b
		if i%3 == 2 {
			from, to = b, a
		}
		msg := fmt.Sprintf("message %d", i)
		ct, err := from.p.Encrypt(ctx, to.addr, []byte(msg))
		if err != nil {
			t.Fatal(err)
		}
		pt, err := to.p.Decrypt(ctx, from.addr, ct)
		if err != nil {
			t.Fatalf("decrypt %d: %v", i, err)
		}
		if string(pt) != msg {
			t.Fatalf("got %q want %q", pt, msg)
		}
		if _, err := to.p.Decrypt(ctx, from.addr, ct); !errors.Is(err, crypto.ErrDuplicateMessage) {
			t.Fatalf("replay %d: %v, want ErrDuplicateMessage", i, err)
		}
	}
	if _, err := a.db.LoadPreKey(ctx, a.pk[0].ID()); err != nil {
		t.Fatalf("alice's unused prekey: %v", err)
	}
	if _, err := b.db.LoadPreKey(ctx, b.pk[0].ID()); !errors.Is(err, crypto.ErrNotFound) {
		t.Fatalf("bob's used one-time prekey is still stored: %v", err)
	}
	const gid = "0123456789abcdef"
	dist, err := a.p.GroupDistribution(ctx, gid)
	if err != nil {
		t.Fatal(err)
	}
	if err := b.p.ProcessDistribution(ctx, gid, a.addr, dist); err != nil {
		t.Fatal(err)
	}
	ct, err := a.p.GroupEncrypt(ctx, gid, []byte("to the group"))
	if err != nil {
		t.Fatal(err)
	}
	if pt, err := b.p.GroupDecrypt(ctx, gid, a.addr, ct); err != nil || string(pt) != "to the group" {
		t.Fatalf("group decrypt = %q, %v", pt, err)
	}
}

func msgID(i int) []byte { return bytes.Repeat([]byte{byte(i)}, 16) }

func TestMessagesOrderDedupeSearch(t *testing.T) {
	ctx := context.Background()
	db := openTest(t)
	now := time.UnixMilli(1_700_000_000_000)
	if err := db.EnsureConversation(ctx, Conversation{ID: "@bob", Peer: "bob", Created: now}); err != nil {
		t.Fatal(err)
	}
	insert := func(id int, sender string, counter uint64, body string) bool {
		t.Helper()
		m := &Message{Conv: "@bob", ID: msgID(id), Sender: sender, SenderDevice: 1, Counter: counter,
			Outgoing: sender == "alice", SentAt: now, ReceivedAt: now.Add(time.Duration(id) * time.Second), Kind: KindText, Body: body}
		ok, err := db.InsertMessage(ctx, m)
		if err != nil {
			t.Fatal(err)
		}
		return ok
	}
	// bob's 1, 2, 5 arrive; alice writes; then bob's 4 and 3 arrive late.
	insert(1, "bob", 1, "hello alice")
	insert(2, "bob", 2, "how are you")
	insert(5, "bob", 5, "fifth")
	insert(10, "alice", 1, "fine thanks")
	insert(4, "bob", 4, "fourth")
	insert(3, "bob", 3, "third café")
	if insert(3, "bob", 3, "third again") {
		t.Fatal("duplicate (sender, id) inserted")
	}
	if !insert(3, "carol", 1, "same id, other sender") {
		t.Fatal("same id from another sender refused")
	}
	hist, err := db.History(ctx, "@bob", 100, 0)
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, m := range hist {
		got = append(got, m.Body)
	}
	want := "hello alice|how are you|third café|fourth|fifth|fine thanks|same id, other sender"
	if strings.Join(got, "|") != want {
		t.Fatalf("history order:\n got %s\nwant %s", strings.Join(got, "|"), want)
	}
	// Paging: the two before the third message.
	page, err := db.History(ctx, "@bob", 2, hist[2].SortKey)
	if err != nil || len(page) != 2 || page[0].Body != "hello alice" || page[1].Body != "how are you" {
		t.Fatalf("page = %+v, %v", page, err)
	}

	// Many late messages into the same gap force a renumbering.
	if err := db.EnsureConversation(ctx, Conversation{ID: "@dan", Peer: "dan", Created: now}); err != nil {
		t.Fatal(err)
	}
	ins := func(c uint64) {
		m := &Message{Conv: "@dan", ID: msgID(int(c)), Sender: "dan", SenderDevice: 1, Counter: c, Kind: KindText, Body: fmt.Sprint(c)}
		if _, err := db.InsertMessage(ctx, m); err != nil {
			t.Fatal(err)
		}
	}
	ins(100)
	for c := uint64(99); c >= 40; c-- {
		ins(c)
	}
	hist, _ = db.History(ctx, "@dan", 1000, 0)
	for i := 1; i < len(hist); i++ {
		if hist[i].Counter <= hist[i-1].Counter {
			t.Fatalf("dan's messages out of order at %d: %d after %d", i, hist[i].Counter, hist[i-1].Counter)
		}
	}

	// Search: words, prefix, diacritics, no syntax injection.
	for q, want := range map[string]int{
		"third":           1,
		"cafe":            1,
		"thi":             1,
		"hello ali":       1,
		"alice":           1,
		`" OR 1 --`:       0,
		"NEAR(hello":      0,
		"(hello*":         1,
		"nothing-matches": 0,
		"":                0,
	} {
		res, err := db.Search(ctx, q, "", 10)
		if err != nil {
			t.Fatalf("search %q: %v", q, err)
		}
		if len(res) != want {
			t.Errorf("search %q: %d results, want %d", q, len(res), want)
		}
	}
	if res, _ := db.Search(ctx, "hello", "@dan", 10); len(res) != 0 {
		t.Errorf("search scoped to @dan found %d", len(res))
	}
	// Replacing a body re-indexes it.
	m, err := db.MessageByID(ctx, "bob", msgID(5))
	if err != nil {
		t.Fatal(err)
	}
	m.Body = "rewritten zebra"
	if err := db.ReplaceMessage(ctx, m); err != nil {
		t.Fatal(err)
	}
	if res, _ := db.Search(ctx, "fifth", "", 10); len(res) != 0 {
		t.Error("old body still indexed")
	}
	if res, _ := db.Search(ctx, "zebra", "", 10); len(res) != 1 {
		t.Error("new body not indexed")
	}

	// Unread and MarkRead.
	convs, err := db.Conversations(ctx)
	if err != nil {
		t.Fatal(err)
	}
	unread := map[string]int{}
	for _, c := range convs {
		unread[c.ID] = c.Unread
	}
	if unread["@bob"] != 6 {
		t.Fatalf("unread = %v", unread)
	}
	read, err := db.MarkRead(ctx, "@bob")
	if err != nil || len(read) != 6 {
		t.Fatalf("MarkRead = %d, %v", len(read), err)
	}
	if again, _ := db.MarkRead(ctx, "@bob"); len(again) != 0 {
		t.Fatalf("second MarkRead returned %d", len(again))
	}
}

func TestRecipientStatus(t *testing.T) {
	ctx := context.Background()
	db := openTest(t)
	now := time.Now()
	db.EnsureConversation(ctx, Conversation{ID: "#g", Created: now})
	m := &Message{Conv: "#g", ID: msgID(1), Sender: "alice", SenderDevice: 1, Outgoing: true, Counter: 1, Kind: KindText, Body: "hi"}
	if _, err := db.InsertMessage(ctx, m); err != nil {
		t.Fatal(err)
	}
	if err := db.AddRecipients(ctx, m.Seq, []string{"bob", "carol"}, now); err != nil {
		t.Fatal(err)
	}
	if err := db.SetStatus(ctx, m.Seq, StatusSent, 42, ""); err != nil {
		t.Fatal(err)
	}
	db.AddServerID(ctx, m.Seq, 42)
	db.AddServerID(ctx, m.Seq, 43) // a re-send
	status := func() Status {
		got, err := db.MessageBySeq(ctx, m.Seq)
		if err != nil {
			t.Fatal(err)
		}
		return got.Status
	}
	db.SetRecipientStatus(ctx, m.Seq, "bob", StatusDelivered, now)
	db.SetRecipientStatus(ctx, m.Seq, "bob", StatusSent, now) // never lowers
	if s := status(); s != StatusSent {
		t.Fatalf("status with one delivered = %d, want sent", s)
	}
	if changed, _ := db.SetRecipientStatus(ctx, m.Seq, "carol", StatusRead, now); !changed {
		t.Fatal("carol's read not recorded")
	}
	if s := status(); s != StatusDelivered {
		t.Fatalf("status = %d, want delivered (min over members)", s)
	}
	db.SetRecipientStatus(ctx, m.Seq, "bob", StatusRead, now)
	if s := status(); s != StatusRead {
		t.Fatalf("status = %d, want read", s)
	}
	if changed, _ := db.SetRecipientStatus(ctx, m.Seq, "mallory", StatusRead, now); changed {
		t.Fatal("a non-recipient changed the status")
	}
	rs, _ := db.Recipients(ctx, m.Seq)
	if len(rs) != 2 || rs[0].Status != StatusRead || rs[1].Status != StatusRead {
		t.Fatalf("recipients = %+v", rs)
	}
	for _, id := range []uint64{42, 43} {
		if got, err := db.OutgoingByServerID(ctx, id); err != nil || got.Seq != m.Seq {
			t.Fatalf("by server id %d = %v, %v", id, got, err)
		}
	}
	if _, err := db.OutgoingByServerID(ctx, 44); !errors.Is(err, ErrNotFound) {
		t.Fatalf("unknown server id: %v", err)
	}
}

func TestProcessedHeldEventsOutbox(t *testing.T) {
	ctx := context.Background()
	db := openTest(t)
	now := time.Now()
	if fresh, err := db.MarkProcessed(ctx, 7, now); err != nil || !fresh {
		t.Fatalf("first mark = %v, %v", fresh, err)
	}
	if fresh, _ := db.MarkProcessed(ctx, 7, now); fresh {
		t.Fatal("second mark reported fresh")
	}
	// A processed mark inside a rolled-back transaction does not count.
	db.Atomic(ctx, func(ctx context.Context) error {
		db.MarkProcessed(ctx, 8, now)
		return errors.New("crash")
	})
	if p, _ := db.Processed(ctx, 8); p {
		t.Fatal("rolled-back mark persisted")
	}
	if err := db.PruneProcessed(ctx, now.Add(time.Hour)); err != nil {
		t.Fatal(err)
	}
	if p, _ := db.Processed(ctx, 7); p {
		t.Fatal("prune kept an old id")
	}

	db.Hold(ctx, HeldEnvelope{ServerID: 3, Sender: "bob", Device: 1, Type: 2, Payload: []byte("x"), Reason: "r", Held: now})
	db.Hold(ctx, HeldEnvelope{ServerID: 2, Sender: "carol", Device: 1, Type: 2, Payload: []byte("y"), Reason: "r", Held: now})
	if hs, _ := db.HeldEnvelopes(ctx, ""); len(hs) != 2 || hs[0].ServerID != 2 {
		t.Fatalf("held = %+v", hs)
	}
	if hs, _ := db.HeldEnvelopes(ctx, "bob"); len(hs) != 1 || string(hs[0].Payload) != "x" {
		t.Fatalf("held of bob = %+v", hs)
	}
	db.Unhold(ctx, 3)
	if hs, _ := db.HeldEnvelopes(ctx, "bob"); len(hs) != 0 {
		t.Fatal("unhold kept the envelope")
	}

	for i := range 3 {
		if _, err := db.AppendEvent(ctx, "message", []byte{byte(i)}, now); err != nil {
			t.Fatal(err)
		}
	}
	evs, _ := db.EventsAfter(ctx, 0, 10)
	if len(evs) != 3 || evs[0].Data[0] != 0 {
		t.Fatalf("events = %+v", evs)
	}
	db.DeleteEvent(ctx, evs[0].Seq)
	if evs, _ := db.EventsAfter(ctx, 0, 10); len(evs) != 2 {
		t.Fatalf("after delete: %d events", len(evs))
	}

	it := &OutboxItem{Kind: OutboxPairwise, Accounts: []string{"bob", "carol"}, Content: []byte("c"), Created: now}
	if err := db.Enqueue(ctx, it); err != nil {
		t.Fatal(err)
	}
	it2 := &OutboxItem{Kind: OutboxPairwise, Accounts: []string{"dave"}, Content: []byte("d"), Created: now}
	db.Enqueue(ctx, it2)
	it.State, it.Error = OutboxBlocked, "identity changed"
	db.UpdateOutbox(ctx, it)
	if p, _ := db.PendingOutbox(ctx, now, 10); len(p) != 1 || p[0] != it2.Seq {
		t.Fatalf("pending = %+v", p)
	}
	if n, _ := db.UnblockOutbox(ctx, "bo"); n != 0 {
		t.Fatal("unblock matched a name prefix")
	}
	if n, _ := db.UnblockOutbox(ctx, "carol"); n != 1 {
		t.Fatalf("unblock carol = %d", n)
	}
	p, _ := db.PendingOutbox(ctx, now, 10)
	if len(p) != 2 {
		t.Fatalf("pending after unblock = %+v", p)
	}
	if first, _ := db.OutboxItem(ctx, p[0]); fmt.Sprint(first.Accounts) != "[bob carol]" {
		t.Fatalf("first pending = %+v", first)
	}
	// Dependencies and not-before.
	dep := &OutboxItem{Kind: OutboxGroup, DependsOn: it.Seq, Content: []byte("g"), Created: now}
	db.Enqueue(ctx, dep)
	later := &OutboxItem{Kind: OutboxPairwise, Accounts: []string{"erin"}, Content: []byte("e"), NotBefore: now.Add(time.Minute), Created: now}
	db.Enqueue(ctx, later)
	if p, _ := db.PendingOutbox(ctx, now, 10); len(p) != 2 {
		t.Fatalf("pending with a dependency and a deferred item = %d, want 2", len(p))
	}
	if due, ok, _ := db.NextOutboxDue(ctx, now); !ok || !due.Equal(later.NotBefore.Truncate(time.Millisecond)) {
		t.Fatalf("next due = %v %v", due, ok)
	}
	db.DeleteOutbox(ctx, it.Seq)
	if p, _ := db.PendingOutbox(ctx, now.Add(time.Hour), 10); len(p) != 3 || p[1] != dep.Seq {
		t.Fatalf("pending after the dependency went = %+v", p)
	}
}

func TestGroups(t *testing.T) {
	ctx := context.Background()
	db := openTest(t)
	gid := msgID(9)
	g := &Group{ID: gid, Name: "g", Revision: 1, Member: true, Members: []Member{{"alice", true}, {"bob", false}}}
	if err := db.SaveGroup(ctx, g); err != nil {
		t.Fatal(err)
	}
	g.Revision, g.Members = 2, []Member{{"alice", true}, {"carol", false}}
	if err := db.SaveGroup(ctx, g); err != nil {
		t.Fatal(err)
	}
	got, err := db.Group(ctx, gid)
	if err != nil || got.Revision != 2 || len(got.Members) != 2 || got.Members[1].Account != "carol" {
		t.Fatalf("group = %+v, %v", got, err)
	}
	if ids, _ := db.GroupsWithMember(ctx, "bob"); len(ids) != 0 {
		t.Fatal("bob still a member")
	}
	if ids, _ := db.GroupsWithMember(ctx, "carol"); len(ids) != 1 {
		t.Fatal("carol not a member")
	}
	db.AddSenderKeyHolders(ctx, gid, []crypto.Address{{Name: "bob", DeviceID: 1}, {Name: "carol", DeviceID: 3}})
	if hs, _ := db.SenderKeyHolders(ctx, gid); len(hs) != 2 {
		t.Fatalf("holders = %v", hs)
	}
	db.ResetSenderKeyHolders(ctx, gid)
	if hs, _ := db.SenderKeyHolders(ctx, gid); len(hs) != 0 {
		t.Fatalf("holders after reset = %v", hs)
	}
	db.StoreSenderKey(ctx, string(gid), crypto.Address{Name: "bob", DeviceID: 1}, []byte("k"))
	db.DeleteSenderKeysOf(ctx, gid, "bob")
	if _, err := db.LoadSenderKey(ctx, string(gid), crypto.Address{Name: "bob", DeviceID: 1}); !errors.Is(err, ErrNotFound) {
		t.Fatal("bob's sender key survived")
	}
}

// TestNestedAtomic pins down how a nested Atomic undoes its writes without
// a savepoint: a failure before any write leaves the transaction going on
// (fn runs once), a failure after writing that the caller swallows makes
// Atomic run fn again with savepoints (the outer writes stay, the inner
// ones go), and a failure the caller passes on rolls back everything.
func TestNestedAtomic(t *testing.T) {
	ctx := context.Background()
	db := openTest(t)
	failed := errors.New("inner failed")
	has := func(id uint32) bool {
		t.Helper()
		_, err := db.LoadPreKey(ctx, id)
		if err != nil && !errors.Is(err, ErrNotFound) {
			t.Fatal(err)
		}
		return err == nil
	}

	// Failure before any write: nothing to undo, no second run.
	runs := 0
	err := db.Atomic(ctx, func(ctx context.Context) error {
		runs++
		if err := db.StorePreKey(ctx, 1, []byte("outer")); err != nil {
			return err
		}
		inner := db.Atomic(ctx, func(ctx context.Context) error {
			if _, err := db.LoadPreKey(ctx, 1); err != nil {
				return err
			}
			return failed
		})
		if !errors.Is(inner, failed) {
			t.Errorf("inner = %v", inner)
		}
		return db.StorePreKey(ctx, 2, []byte("after"))
	})
	if err != nil || runs != 1 || !has(1) || !has(2) {
		t.Fatalf("read-only inner failure: err %v, runs %d, prekeys %v %v", err, runs, has(1), has(2))
	}

	// Failure after writing, swallowed: a second run with savepoints
	// keeps the outer writes and exactly undoes the inner ones, also two
	// levels down.
	runs = 0
	err = db.Atomic(ctx, func(ctx context.Context) error {
		runs++
		if err := db.StorePreKey(ctx, 3, []byte("outer")); err != nil {
			return err
		}
		db.Atomic(ctx, func(ctx context.Context) error {
			if err := db.StorePreKey(ctx, 4, []byte("middle")); err != nil {
				return err
			}
			inner := db.Atomic(ctx, func(ctx context.Context) error {
				db.StorePreKey(ctx, 5, []byte("inner"))
				return failed
			})
			if inner == nil {
				t.Error("inner error lost")
			}
			return nil // the middle swallows it
		})
		return db.RemovePreKey(ctx, 1)
	})
	if err != nil || runs != 2 {
		t.Fatalf("swallowed inner failure: err %v, runs %d", err, runs)
	}
	if !has(3) || !has(4) || has(5) || has(1) {
		t.Fatalf("after a swallowed failure: 3 %v, 4 %v, 5 %v (want gone), 1 %v (want removed)", has(3), has(4), has(5), has(1))
	}

	// Failure after writing, passed on: all or nothing, one run.
	runs = 0
	err = db.Atomic(ctx, func(ctx context.Context) error {
		runs++
		if err := db.StorePreKey(ctx, 6, []byte("outer")); err != nil {
			return err
		}
		return db.Atomic(ctx, func(ctx context.Context) error {
			db.StorePreKey(ctx, 7, []byte("inner"))
			return failed
		})
	})
	if !errors.Is(err, failed) || runs != 1 || has(6) || has(7) {
		t.Fatalf("passed-on failure: err %v, runs %d, prekeys %v %v", err, runs, has(6), has(7))
	}

	// A statement that fails counts as a write: it is undone like one.
	runs = 0
	err = db.Atomic(ctx, func(ctx context.Context) error {
		runs++
		db.Atomic(ctx, func(ctx context.Context) error {
			_, err := db.wq(ctx).ExecContext(ctx, "INSERT INTO prekeys (id, record) VALUES (?, NULL)", 8)
			return err // NOT NULL constraint
		})
		return db.StorePreKey(ctx, 9, []byte("ok"))
	})
	if err != nil || runs != 2 || has(8) || !has(9) {
		t.Fatalf("failed statement: err %v, runs %d, prekeys %v %v", err, runs, has(8), has(9))
	}
}

// TestSnapshot: reads in a Snapshot see one state of the database, even
// while a write commits; inside Atomic they see the transaction's writes.
func TestSnapshot(t *testing.T) {
	ctx := context.Background()
	db := openTest(t)
	if err := db.StorePreKey(ctx, 1, []byte("one")); err != nil {
		t.Fatal(err)
	}
	err := db.Snapshot(ctx, func(ctx context.Context) error {
		if _, err := db.LoadPreKey(ctx, 1); err != nil {
			return err
		}
		// Committed by the writer after the snapshot's first read.
		if err := db.StorePreKey(context.Background(), 2, []byte("two")); err != nil {
			return err
		}
		if _, err := db.LoadPreKey(ctx, 2); !errors.Is(err, ErrNotFound) {
			t.Errorf("snapshot saw a later commit: %v", err)
		}
		if n, err := db.PreKeyCount(ctx); err != nil || n != 1 {
			t.Errorf("count in snapshot = %d, %v; want 1", n, err)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := db.LoadPreKey(ctx, 2); err != nil {
		t.Fatalf("after the snapshot: %v", err)
	}
	err = db.Atomic(ctx, func(ctx context.Context) error {
		if err := db.StorePreKey(ctx, 3, []byte("three")); err != nil {
			return err
		}
		return db.Snapshot(ctx, func(ctx context.Context) error {
			_, err := db.LoadPreKey(ctx, 3)
			return err
		})
	})
	if err != nil {
		t.Fatalf("snapshot inside Atomic: %v", err)
	}
}
