package crypto

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	grouprecord "go.mau.fi/libsignal/groups/state/record"
	"go.mau.fi/libsignal/serialize"
	"go.mau.fi/libsignal/state/record"
	"google.golang.org/protobuf/encoding/protowire"
)

// The JSON fixture in testdata/json-records was written ONCE by the JSON
// record serializer hush used before the binary format (crypto at commit
// 65e18de, go.mau.fi/libsignal v0.2.1's JSONSessionSerializer and
// JSONSenderKeySessionSerializer), with the generator kept beside it as
// generate.go.txt. It stands for the records existing profiles hold; do not
// regenerate it with the current code, which no longer writes JSON.
const jsonFixtureDir = "testdata/json-records"

type fixtureMessage struct {
	From      string      `json:"from"`
	To        string      `json:"to"`
	Type      MessageType `json:"type"`
	Body      []byte      `json:"body"`
	Plaintext string      `json:"plaintext"`
}

type fixturePending struct {
	Pairwise []fixtureMessage `json:"pairwise"`
	Group    []fixtureMessage `json:"group"`
}

func readFixture(tb testing.TB, name string) []byte {
	tb.Helper()
	b, err := os.ReadFile(filepath.Join(jsonFixtureDir, name))
	if err != nil {
		tb.Fatal(err)
	}
	return b
}

// TestJSONRecordMigration: records stored as JSON by the old serializer are
// read, used, and written back in the binary format; nothing in flight is
// lost — skipped message keys, a receiver chain not yet current, an archived
// session state, and sender keys with a skipped key all still decrypt.
func TestJSONRecordMigration(t *testing.T) {
	ctx := context.Background()
	alice := newDevice(t, "alice", 1, 0)
	bob := newDevice(t, "bob", 1, 0)
	A, B := alice.Address(), bob.Address()
	const group = "fixture-group"
	for _, r := range []struct {
		st   *MemoryStore
		addr Address
		file string
	}{{alice.store, B, "alice-session-bob.json"}, {bob.store, A, "bob-session-alice.json"}} {
		raw := readFixture(t, r.file)
		if raw[0] != '{' {
			t.Fatalf("%s is not a JSON record", r.file)
		}
		if err := r.st.StoreSession(ctx, r.addr, raw); err != nil {
			t.Fatal(err)
		}
	}
	if err := alice.store.StoreSenderKey(ctx, group, A, readFixture(t, "alice-senderkey-alice.json")); err != nil {
		t.Fatal(err)
	}
	if err := bob.store.StoreSenderKey(ctx, group, A, readFixture(t, "bob-senderkey-alice.json")); err != nil {
		t.Fatal(err)
	}
	var pending fixturePending
	if err := json.Unmarshal(readFixture(t, "pending.json"), &pending); err != nil {
		t.Fatal(err)
	}
	dev := map[string]*device{"alice": alice, "bob": bob}

	isBinary := func(who string, b []byte, err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
		if b[0] != recordFormatBinary {
			t.Fatalf("%s: record still starts with %q after a store", who, b[0])
		}
	}

	for i, m := range pending.Pairwise {
		to, from := dev[m.To], dev[m.From]
		pt, err := to.Decrypt(ctx, from.Address(), Ciphertext{Type: m.Type, Body: m.Body})
		if err != nil {
			t.Fatalf("pending message %d (%q) to %s: %v", i, m.Plaintext, m.To, err)
		}
		if string(pt) != m.Plaintext {
			t.Fatalf("pending message %d: %q, want %q", i, pt, m.Plaintext)
		}
		b, err := to.store.LoadSession(ctx, from.Address())
		isBinary(m.To+"'s session", b, err)
	}
	for _, m := range pending.Group {
		pt, err := bob.GroupDecrypt(ctx, group, A, m.Body)
		if err != nil || string(pt) != m.Plaintext {
			t.Fatalf("pending group message %q: %q, %v", m.Plaintext, pt, err)
		}
	}
	b, err := bob.store.LoadSenderKey(ctx, group, A)
	isBinary("bob's copy of alice's sender key", b, err)

	// Redelivery is still recognised after the migration.
	for _, m := range pending.Pairwise {
		if _, err := dev[m.To].Decrypt(ctx, dev[m.From].Address(), Ciphertext{Type: m.Type, Body: m.Body}); !errors.Is(err, ErrDuplicateMessage) {
			t.Fatalf("redelivered %q: %v, want ErrDuplicateMessage", m.Plaintext, err)
		}
	}

	// The migrated sessions carry on in both directions, with ratchet steps.
	for i := range 6 {
		from, to := alice, bob
		if i%2 == 1 {
			from, to = bob, alice
		}
		text := strings.Repeat("after migration ", i+1)
		c, err := from.Encrypt(ctx, to.Address(), []byte(text))
		if err != nil {
			t.Fatalf("encrypt %d after migration: %v", i, err)
		}
		pt, err := to.Decrypt(ctx, from.Address(), c)
		if err != nil || string(pt) != text {
			t.Fatalf("decrypt %d after migration: %q, %v", i, pt, err)
		}
	}
	g, err := alice.GroupEncrypt(ctx, group, []byte("group after migration"))
	if err != nil {
		t.Fatal(err)
	}
	b, err = alice.store.LoadSenderKey(ctx, group, A)
	isBinary("alice's own sender key", b, err)
	if pt, err := bob.GroupDecrypt(ctx, group, A, g); err != nil || string(pt) != "group after migration" {
		t.Fatalf("group message after migration: %q, %v", pt, err)
	}
}

// normalize maps a JSON value so that null and empty arrays compare equal:
// the library's structures use empty slices where the decoder leaves nil.
func normalize(v any) any {
	switch x := v.(type) {
	case []any:
		if len(x) == 0 {
			return nil
		}
		for i := range x {
			x[i] = normalize(x[i])
		}
	case map[string]any:
		for k := range x {
			x[k] = normalize(x[k])
		}
	}
	return v
}

func sameStructure(tb testing.TB, a, b any) bool {
	tb.Helper()
	var x, y any
	for _, p := range []struct {
		in  any
		out *any
	}{{a, &x}, {b, &y}} {
		j, err := json.Marshal(p.in)
		if err != nil {
			tb.Fatal(err)
		}
		if err := json.Unmarshal(j, p.out); err != nil {
			tb.Fatal(err)
		}
	}
	return reflect.DeepEqual(normalize(x), normalize(y))
}

// TestBinaryRecordsMatchJSON: decoding a JSON record and encoding it binary
// keeps every field (compared with the library's own JSON decoding), and
// the binary encoding is canonical (decode and encode again gives the same
// bytes).
func TestBinaryRecordsMatchJSON(t *testing.T) {
	var js serialize.JSONSessionSerializer
	for _, f := range []string{"alice-session-bob.json", "bob-session-alice.json"} {
		raw := readFixture(t, f)
		want, err := js.Deserialize(raw)
		if err != nil {
			t.Fatal(err)
		}
		if len(want.PreviousStates) == 0 {
			t.Fatalf("%s: fixture has no archived state", f)
		}
		bin := sessionSerializer{}.Serialize(want)
		got, err := sessionSerializer{}.Deserialize(bin)
		if err != nil {
			t.Fatalf("%s: %v", f, err)
		}
		if !sameStructure(t, want, got) {
			t.Fatalf("%s: binary round trip changed the record", f)
		}
		if again := (sessionSerializer{}).Serialize(got); !bytes.Equal(again, bin) {
			t.Fatalf("%s: binary encoding is not canonical", f)
		}
		if len(bin) >= len(raw) {
			t.Errorf("%s: binary %d bytes, JSON %d", f, len(bin), len(raw))
		}
		// Each state on its own, as tryState copies them.
		st, err := stateSerializer{}.Deserialize(stateSerializer{}.Serialize(want.SessionState))
		if err != nil || !sameStructure(t, want.SessionState, st) {
			t.Fatalf("%s: state round trip: %v", f, err)
		}
	}
	var jk serialize.JSONSenderKeySessionSerializer
	for _, f := range []string{"alice-senderkey-alice.json", "bob-senderkey-alice.json"} {
		want, err := jk.Deserialize(readFixture(t, f))
		if err != nil {
			t.Fatal(err)
		}
		bin := senderKeySerializer{}.Serialize(want)
		got, err := senderKeySerializer{}.Deserialize(bin)
		if err != nil {
			t.Fatalf("%s: %v", f, err)
		}
		if !sameStructure(t, want, got) {
			t.Fatalf("%s: binary round trip changed the record", f)
		}
		if again := (senderKeySerializer{}).Serialize(got); !bytes.Equal(again, bin) {
			t.Fatalf("%s: binary encoding is not canonical", f)
		}
		st, err := senderKeyStateSerializer{}.Deserialize(senderKeyStateSerializer{}.Serialize(want.SenderKeyStates[0]))
		if err != nil || !sameStructure(t, want.SenderKeyStates[0], st) {
			t.Fatalf("%s: state round trip: %v", f, err)
		}
	}
}

// TestCorruptBinaryRecords: every kind of damage gives an ErrCorruptRecord
// error that says what is wrong.
func TestCorruptBinaryRecords(t *testing.T) {
	var js serialize.JSONSessionSerializer
	s, err := js.Deserialize(readFixture(t, "bob-session-alice.json"))
	if err != nil {
		t.Fatal(err)
	}
	valid := sessionSerializer{}.Serialize(s)
	tag := func(num protowire.Number, typ protowire.Type) []byte { return protowire.AppendTag(nil, num, typ) }
	cat := func(parts ...[]byte) []byte { return bytes.Join(parts, nil) }
	msg := func(num protowire.Number, body []byte) []byte {
		return protowire.AppendBytes(tag(num, protowire.BytesType), body)
	}
	st := s.SessionState
	// A state with every required field, to which one bad field is added.
	okState := cat(
		msg(fStateLocalIdentity, st.LocalIdentityPublic),
		msg(fStateRemoteIdentity, st.RemoteIdentityPublic),
		msg(fStateRootKey, st.RootKey),
		msg(fStateSenderBaseKey, st.SenderBaseKey),
		msg(fStateSenderChain, cat(msg(fChainRatchetPublic, st.SenderChain.SenderRatchetKeyPublic), msg(fChainKey, st.SenderChain.ChainKey.Key))),
	)
	withState := func(extra ...[]byte) []byte {
		return cat([]byte{recordFormatBinary}, msg(fSessionCurrent, cat(append([][]byte{okState}, extra...)...)))
	}
	if _, err := (sessionSerializer{}).Deserialize(withState()); err != nil {
		t.Fatalf("minimal state refused: %v", err)
	}
	manyChains := make([][]byte, maxReceiverChains+1)
	for i := range manyChains {
		manyChains[i] = msg(fStateReceiverChain, cat(msg(fChainRatchetPublic, st.SenderChain.SenderRatchetKeyPublic), msg(fChainKey, st.SenderChain.ChainKey.Key)))
	}
	badType := bytes.Clone(st.RemoteIdentityPublic)
	badType[0] = 0x07

	for _, c := range []struct {
		name, in, want string
	}{
		{"empty", "", "empty"},
		{"unknown format", "\x02\x0a\x00", "unknown format byte 0x02"},
		{"truncated", string(valid[:len(valid)/2]), "session"},
		{"no current state", "\x01", "no current state"},
		{"bad tag", "\x01\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff", "bad field tag"},
		{"length past end", "\x01\x0a\x7f\x00", "field 1"},
		{"state as varint", "\x01\x08\x01", "wire type"},
		{"empty state", "\x01\x0a\x00", "no local identity key"},
		{"short root key", string(withState(msg(fStateRootKey, []byte{1, 2, 3}))), "root key: 3 bytes, want 32"},
		{"bad key type", string(withState(msg(fStateRemoteIdentity, badType))), "key type 0x07"},
		{"version out of range", string(withState(protowire.AppendVarint(tag(fStateVersion, protowire.VarintType), 1<<20))), "version"},
		{"counter over 32 bits", string(withState(protowire.AppendVarint(tag(fStatePreviousCounter, protowire.VarintType), 1<<40))), "out of range"},
		{"bool not 0 or 1", string(withState(protowire.AppendVarint(tag(fStateNeedsRefresh, protowire.VarintType), 2))), "not a bool"},
		{"too many receiver chains", string(withState(manyChains...)), "more than 16 receiver chains"},
		{"chain without key", string(withState(msg(fStateReceiverChain, msg(fChainRatchetPublic, st.SenderChain.SenderRatchetKeyPublic)))), "no chain key"},
		{"incomplete message keys", string(withState(msg(fStateSenderChain, cat(msg(fChainRatchetPublic, st.SenderChain.SenderRatchetKeyPublic), msg(fChainKey, st.SenderChain.ChainKey.Key), msg(fChainMessageKeys, msg(fKeysCipher, st.RootKey)))))), "incomplete"},
		{"pending prekey without id", string(withState(msg(fStatePendingPreKey, msg(fPendingBaseKey, st.SenderBaseKey)))), "no prekey id"},
	} {
		_, err := sessionSerializer{}.Deserialize([]byte(c.in))
		if !errors.Is(err, ErrCorruptRecord) || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: %v, want ErrCorruptRecord mentioning %q", c.name, err, c.want)
		}
	}
	if _, err := (senderKeySerializer{}).Deserialize([]byte("\x01\x0a\x00")); !errors.Is(err, ErrCorruptRecord) || !strings.Contains(err.Error(), "no signing key") {
		t.Errorf("empty sender key state: %v", err)
	}
	big := make([]byte, maxRecordSize+1)
	big[0] = recordFormatBinary
	if _, err := (sessionSerializer{}).Deserialize(big); !errors.Is(err, ErrCorruptRecord) || !strings.Contains(err.Error(), "limit") {
		t.Errorf("oversized record: %v", err)
	}
	// Through the package's decoder, a corrupt record is a clean error.
	if _, err := decodeSessionRecord(withState(msg(fStateRootKey, nil))); !errors.Is(err, ErrCorruptRecord) {
		t.Errorf("decodeSessionRecord: %v", err)
	}
}

// TestDecodedRecordDoesNotAliasInput: the decoder copies its input once, so
// a caller reusing its buffer cannot change a live record's keys.
func TestDecodedRecordDoesNotAliasInput(t *testing.T) {
	var js serialize.JSONSessionSerializer
	s, err := js.Deserialize(readFixture(t, "bob-session-alice.json"))
	if err != nil {
		t.Fatal(err)
	}
	bin := sessionSerializer{}.Serialize(s)
	got, err := sessionSerializer{}.Deserialize(bin)
	if err != nil {
		t.Fatal(err)
	}
	root := bytes.Clone(got.SessionState.RootKey)
	for i := range bin {
		bin[i] = 0
	}
	if !bytes.Equal(root, got.SessionState.RootKey) {
		t.Fatal("decoded root key changed with the input buffer")
	}
	if cap(got.SessionState.RootKey) != len(got.SessionState.RootKey) {
		t.Fatal("decoded key slice has spare capacity into the shared buffer")
	}
}

// FuzzRecordDecoders: the binary (and legacy JSON) record decoders never
// panic, and whatever they accept re-encodes to a record that decodes to
// the same thing.
func FuzzRecordDecoders(f *testing.F) {
	var js serialize.JSONSessionSerializer
	var jk serialize.JSONSenderKeySessionSerializer
	for _, name := range []string{"alice-session-bob.json", "bob-session-alice.json"} {
		raw := readFixture(f, name)
		f.Add(raw)
		s, err := js.Deserialize(raw)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(sessionSerializer{}.Serialize(s))
		f.Add(stateSerializer{}.Serialize(s.SessionState))
	}
	for _, name := range []string{"alice-senderkey-alice.json", "bob-senderkey-alice.json"} {
		raw := readFixture(f, name)
		f.Add(raw)
		s, err := jk.Deserialize(raw)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(senderKeySerializer{}.Serialize(s))
		f.Add(senderKeyStateSerializer{}.Serialize(s.SenderKeyStates[0]))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		if s, err := (sessionSerializer{}).Deserialize(b); err == nil && len(b) > 0 && b[0] == recordFormatBinary {
			again, err := sessionSerializer{}.Deserialize(sessionSerializer{}.Serialize(s))
			if err != nil || !sameStructure(t, s, again) {
				t.Fatalf("session record does not round-trip: %v", err)
			}
		}
		if s, err := (stateSerializer{}).Deserialize(b); err == nil && len(b) > 0 && b[0] == recordFormatBinary {
			again, err := stateSerializer{}.Deserialize(stateSerializer{}.Serialize(s))
			if err != nil || !sameStructure(t, s, again) {
				t.Fatalf("state does not round-trip: %v", err)
			}
		}
		if s, err := (senderKeySerializer{}).Deserialize(b); err == nil && len(b) > 0 && b[0] == recordFormatBinary {
			again, err := senderKeySerializer{}.Deserialize(senderKeySerializer{}.Serialize(s))
			if err != nil || !sameStructure(t, s, again) {
				t.Fatalf("sender key record does not round-trip: %v", err)
			}
		}
		if s, err := (senderKeyStateSerializer{}).Deserialize(b); err == nil && len(b) > 0 && b[0] == recordFormatBinary {
			again, err := senderKeyStateSerializer{}.Deserialize(senderKeyStateSerializer{}.Serialize(s))
			if err != nil || !sameStructure(t, s, again) {
				t.Fatalf("sender key state does not round-trip: %v", err)
			}
		}
		// Through the library, without the panic backstop of
		// decodeSessionRecord: a binary record the decoder accepts never
		// panics the library's constructors.
		if len(b) > 0 && b[0] == recordFormatBinary {
			_, _ = record.NewSessionFromBytes(b, serializer.Session, serializer.State)
			_, _ = grouprecord.NewSenderKeyFromBytes(b, serializer.SenderKeyRecord, serializer.SenderKeyState)
		}
	})
}

// TestRecordStructureUnchanged: the vendored library builds a record's
// structure (what every serializer encodes) with fewer allocations
// (third_party/libsignal/HUSH-PATCHES.md). Encoded with the library's JSON
// serializer it must give back exactly the fixture records, which the
// unpatched library wrote.
func TestRecordStructureUnchanged(t *testing.T) {
	js, jst := &serialize.JSONSessionSerializer{}, &serialize.JSONStateSerializer{}
	for _, f := range []string{"alice-session-bob.json", "bob-session-alice.json"} {
		raw := readFixture(t, f)
		rec, err := record.NewSessionFromBytes(raw, js, jst)
		if err != nil {
			t.Fatal(err)
		}
		if got := rec.Serialize(); !bytes.Equal(got, raw) {
			t.Fatalf("%s: re-encoded\n%s\nwant\n%s", f, got, raw)
		}
	}
}
