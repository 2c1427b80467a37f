package crypto

import (
	"bytes"
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/json"
	"io"
	"strings"
	"testing"
)

// Fuzz targets for every decoder and decrypt path. Each must return an
// error for malformed input, never panic, and never return plaintext for a
// message it did not verify. Seeds are valid inputs.

// fuzzPair is a session alice→bob plus a few valid messages of each kind.
type fuzzPair struct {
	alice, bob *device
	prekeyMsgs [][]byte // from alice, before bob answered
	signalMsgs [][]byte // from alice, after bob answered
	group      string
	groupMsgs  [][]byte // from alice
	skdm       []byte   // alice's distribution message
}

func newFuzzPair(tb testing.TB) *fuzzPair {
	ctx := context.Background()
	fp := &fuzzPair{alice: newDevice(tb, "alice", 1, 0), bob: newDevice(tb, "bob", 1, 4), group: "fuzz"}
	connect(tb, fp.alice, fp.bob, 0)
	for range 2 {
		c, err := fp.alice.Encrypt(ctx, fp.bob.Address(), []byte("prekey message"))
		if err != nil {
			tb.Fatal(err)
		}
		fp.prekeyMsgs = append(fp.prekeyMsgs, c.Body)
	}
	// A second sender's prekey message that bob has not processed.
	carol := newDevice(tb, "carol", 1, 0)
	connect(tb, carol, fp.bob, 1)
	c, _ := carol.Encrypt(ctx, fp.bob.Address(), []byte("carol"))
	fp.prekeyMsgs = append(fp.prekeyMsgs, c.Body)

	// Bob starts a session of his own with alice at the same moment, so his
	// record holds two states and the trial decryption of archived states
	// is fuzzed too.
	connect(tb, fp.bob, fp.alice, -1)
	own, _ := fp.bob.Encrypt(ctx, fp.alice.Address(), []byte("bob's own session"))

	c, _ = fp.alice.Encrypt(ctx, fp.bob.Address(), []byte("first"))
	if _, err := fp.bob.Decrypt(ctx, fp.alice.Address(), c); err != nil {
		tb.Fatal(err)
	}
	r, _ := fp.bob.Encrypt(ctx, fp.alice.Address(), []byte("reply"))
	if _, err := fp.alice.Decrypt(ctx, fp.bob.Address(), r); err != nil {
		tb.Fatal(err)
	}
	for _, s := range []string{"", "a", "a somewhat longer message of several blocks ........"} {
		c, _ := fp.alice.Encrypt(ctx, fp.bob.Address(), []byte(s))
		fp.signalMsgs = append(fp.signalMsgs, c.Body)
	}
	// Alice takes bob's session: her next message is for the state bob has
	// archived.
	if _, err := fp.alice.Decrypt(ctx, fp.bob.Address(), own); err != nil {
		tb.Fatal(err)
	}
	c, _ = fp.alice.Encrypt(ctx, fp.bob.Address(), []byte("on bob's archived session"))
	fp.signalMsgs = append(fp.signalMsgs, c.Body)
	fp.skdm, _ = fp.alice.GroupDistribution(ctx, fp.group)
	if err := fp.bob.ProcessDistribution(ctx, fp.group, fp.alice.Address(), fp.skdm); err != nil {
		tb.Fatal(err)
	}
	for _, s := range []string{"", "group", "a longer group message, several AES blocks long"} {
		m, _ := fp.alice.GroupEncrypt(ctx, fp.group, []byte(s))
		fp.groupMsgs = append(fp.groupMsgs, m)
	}
	return fp
}

func FuzzDecryptSignalMessage(f *testing.F) {
	fp := newFuzzPair(f)
	for _, m := range fp.signalMsgs {
		f.Add(m)
	}
	f.Add([]byte{})
	f.Add([]byte{0x33})
	f.Fuzz(func(t *testing.T, b []byte) {
		pt, err := fp.bob.Decrypt(context.Background(), fp.alice.Address(), Ciphertext{Type: MessageTypeSignal, Body: b})
		noPanic(t, err)
		if err == nil && !isSeed(b, fp.signalMsgs) {
			t.Fatalf("forged message decrypted to %q", pt)
		}
	})
}

func FuzzDecryptPreKeyMessage(f *testing.F) {
	fp := newFuzzPair(f)
	for _, m := range fp.prekeyMsgs {
		f.Add(m)
	}
	f.Add([]byte{})
	f.Add([]byte{0x33, 0x08})
	f.Fuzz(func(t *testing.T, b []byte) {
		// Decrypting may legitimately succeed for a seed, or for a
		// re-encoding that carries a seed's authenticated inner message
		// under a fresh base key — that only yields the seed's plaintext.
		pt, err := fp.bob.Decrypt(context.Background(), fp.alice.Address(), Ciphertext{Type: MessageTypePreKey, Body: b})
		noPanic(t, err)
		if err == nil && string(pt) != "prekey message" && string(pt) != "carol" {
			t.Fatalf("forged prekey message decrypted to %q", pt)
		}
	})
}

func FuzzGroupDecrypt(f *testing.F) {
	fp := newFuzzPair(f)
	for _, m := range fp.groupMsgs {
		f.Add(m)
	}
	f.Add([]byte{})
	f.Add(bytes.Repeat([]byte{0x33}, 80))
	f.Fuzz(func(t *testing.T, b []byte) {
		pt, err := fp.bob.GroupDecrypt(context.Background(), fp.group, fp.alice.Address(), b)
		noPanic(t, err)
		if err == nil && !isSeed(b, fp.groupMsgs) {
			t.Fatalf("forged group message decrypted to %q", pt)
		}
	})
}

func FuzzProcessDistribution(f *testing.F) {
	fp := newFuzzPair(f)
	f.Add(fp.skdm)
	f.Add([]byte{})
	f.Add([]byte{0x33})
	f.Fuzz(func(t *testing.T, b []byte) {
		// Use a fresh sender address per input so a successful parse
		// exercises storing and then using the key.
		ctx := context.Background()
		from := Address{Name: "fuzz-sender", DeviceID: 1}
		if err := fp.bob.ProcessDistribution(ctx, fp.group, from, b); err != nil {
			noPanic(t, err)
			return
		}
		// A processed key must be usable without panicking; forged messages
		// must not decrypt.
		for _, m := range fp.groupMsgs {
			_, err := fp.bob.GroupDecrypt(ctx, fp.group, from, m)
			noPanic(t, err)
			if err == nil && !bytes.Equal(b, fp.skdm) {
				t.Fatal("message decrypted under a fuzzed sender key")
			}
		}
		_ = fp.bob.ForgetSenderKey(ctx, fp.group, from)
	})
}

// noPanic fails when the library panicked on a message (recovered by
// catch): message validation is meant to stop malformed input before the
// library sees it, so the backstop should never fire for messages.
func noPanic(t *testing.T, err error) {
	t.Helper()
	if err != nil && strings.Contains(err.Error(), "library panic") {
		t.Fatal(err)
	}
}

func isSeed(b []byte, seeds [][]byte) bool {
	for _, s := range seeds {
		if bytes.Equal(b, s) {
			return true
		}
	}
	return false
}

func FuzzBundle(f *testing.F) {
	bob := newDevice(f, "bob", 1, 1)
	for _, b := range []Bundle{bob.bundle(0), bob.bundle(-1)} {
		j, _ := json.Marshal(b)
		f.Add(j)
	}
	f.Add([]byte(`{}`))
	f.Add([]byte(`{"identity_key":"BQ=="}`))
	f.Fuzz(func(t *testing.T, j []byte) {
		var b Bundle
		if json.Unmarshal(j, &b) != nil {
			return
		}
		if b.Validate() != nil {
			return
		}
		alice := newDevice(t, "alice", 1, 0)
		if err := alice.ProcessBundle(context.Background(), Address{"bob", b.DeviceID}, b); err != nil {
			t.Fatalf("valid bundle refused: %v", err)
		}
	})
}

// FuzzStoredRecords feeds arbitrary bytes to every record decoder and then
// uses a decodable session record, as a corrupted local database would.
func FuzzStoredRecords(f *testing.F) {
	fp := newFuzzPair(f)
	ctx := context.Background()
	sess, _ := fp.bob.store.LoadSession(ctx, fp.alice.Address())
	f.Add(sess)
	pk, _ := fp.bob.store.LoadPreKey(ctx, LastResortPreKeyID)
	f.Add(pk)
	spk, _ := fp.bob.store.LoadSignedPreKey(ctx, 1)
	f.Add(spk)
	sk, _ := fp.bob.store.LoadSenderKey(ctx, fp.group, fp.alice.Address())
	f.Add(sk)
	// Records as profiles written before the binary format hold them.
	for _, name := range []string{"bob-session-alice.json", "bob-senderkey-alice.json"} {
		f.Add(readFixture(f, name))
	}
	f.Add([]byte(`{"SessionState":{}}`))
	f.Add([]byte(`{"SessionState":{"SenderChain":{}}}`))
	f.Add([]byte(`{"SenderKeyStates":[{}]}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		_, _ = decodePreKeyRecord(b)
		_, _ = decodeSignedPreKeyRecord(b)
		_, _ = decodeSenderKeyRecord(b)
		_, _ = decodeSessionRecord(b)

		// Install b as bob's session with a fresh peer and as a sender key,
		// then use them.
		peer := Address{Name: "peer", DeviceID: 1}
		_ = fp.bob.store.StoreSession(ctx, peer, b)
		_, _ = fp.bob.Encrypt(ctx, peer, []byte("x"))
		for _, m := range fp.signalMsgs {
			_, _ = fp.bob.Decrypt(ctx, peer, Ciphertext{Type: MessageTypeSignal, Body: m})
		}
		_ = fp.bob.store.DeleteSession(ctx, peer)
		_ = fp.bob.store.StoreSenderKey(ctx, fp.group, peer, b)
		for _, m := range fp.groupMsgs {
			_, _ = fp.bob.GroupDecrypt(ctx, fp.group, peer, m)
		}
		_ = fp.bob.store.StoreSenderKey(ctx, "own", fp.bob.Address(), b)
		_, _ = fp.bob.GroupEncrypt(ctx, "own", []byte("x"))
		_, _ = fp.bob.GroupDistribution(ctx, "own")
		_ = fp.bob.store.DeleteSenderKey(ctx, "own", fp.bob.Address())
		_ = fp.bob.store.DeleteSenderKey(ctx, fp.group, peer)
	})
}

func FuzzAttachmentDecrypt(f *testing.F) {
	key := bytes.Repeat([]byte{0x5a}, AttachmentKeySize)
	for _, n := range []int{0, 1, 16, 100} {
		e, _ := EncryptAttachment(bytes.NewReader(make([]byte, n)), key)
		blob, _ := io.ReadAll(e)
		d, _ := e.Digest()
		f.Add(blob, d)
	}
	f.Add([]byte{}, []byte{})
	f.Fuzz(func(t *testing.T, blob, digest []byte) {
		w := &countingWriter{}
		n, err := DecryptAttachment(w, bytes.NewReader(blob), int64(len(blob)), key, digest)
		if err != nil && w.n != 0 {
			t.Fatalf("%d plaintext bytes written before error %v", w.n, err)
		}
		if err == nil && int64(w.n) != n {
			t.Fatalf("reported %d bytes, wrote %d", n, w.n)
		}
	})
}

// FuzzAttachmentDecryptAuthenticated gives arbitrary ciphertext a valid MAC
// and digest, so the padding and decryption paths see hostile input.
func FuzzAttachmentDecryptAuthenticated(f *testing.F) {
	key := bytes.Repeat([]byte{0xa5}, AttachmentKeySize)
	f.Add(make([]byte, 32))
	f.Add(make([]byte, 48))
	f.Add([]byte{1, 2, 3})
	f.Fuzz(func(t *testing.T, body []byte) {
		m := hmac.New(sha256.New, key[32:])
		m.Write(body)
		blob := m.Sum(bytes.Clone(body))
		d := sha256.Sum256(blob)
		w := &countingWriter{}
		n, err := DecryptAttachment(w, bytes.NewReader(blob), int64(len(blob)), key, d[:])
		if err != nil && w.n != 0 {
			t.Fatalf("%d plaintext bytes written before error %v", w.n, err)
		}
		if err == nil && (int64(w.n) != n || n > int64(len(body))) {
			t.Fatalf("reported %d bytes, wrote %d, body %d", n, w.n, len(body))
		}
	})
}

func FuzzCompareScannable(f *testing.F) {
	a, _ := GenerateIdentityKeyPair()
	b, _ := GenerateIdentityKeyPair()
	sa, err := NewSafetyNumber("a", a.PublicKey(), "b", b.PublicKey())
	if err != nil {
		f.Fatal(err)
	}
	sb, _ := NewSafetyNumber("b", b.PublicKey(), "a", a.PublicKey())
	f.Add(sb.Scannable())
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, code []byte) {
		ok, err := sa.CompareScannable(code)
		if ok && err != nil {
			t.Fatal("match reported with an error")
		}
	})
}
