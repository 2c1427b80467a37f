package crypto

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"testing"
)

// Benchmarks use 200-byte plaintexts, as in docs/benchmarks.md and the
// project's measured reference figures. Records are stored serialized in a
// MemoryStore, as a real client stores them.

var benchPlaintext = bytes.Repeat([]byte("x"), 200)

// established returns alice and bob with a session in which bob has
// answered, so alice sends SignalMessages.
func established(b *testing.B) (alice, bob *device) {
	ctx := context.Background()
	alice = newDevice(b, "alice", 1, 0)
	bob = newDevice(b, "bob", 1, 1)
	connect(b, alice, bob, 0)
	c, _ := alice.Encrypt(ctx, bob.Address(), []byte("hi"))
	if _, err := bob.Decrypt(ctx, alice.Address(), c); err != nil {
		b.Fatal(err)
	}
	r, _ := bob.Encrypt(ctx, alice.Address(), []byte("hi"))
	if _, err := alice.Decrypt(ctx, bob.Address(), r); err != nil {
		b.Fatal(err)
	}
	return alice, bob
}

// BenchmarkSessionSetup: process a bundle (X3DH) and encrypt the first
// message.
func BenchmarkSessionSetup(b *testing.B) {
	ctx := context.Background()
	alice := newDevice(b, "alice", 1, 0)
	bob := newDevice(b, "bob", 1, 0)
	bundle := bob.bundle(-1)
	b.ReportAllocs()
	b.ResetTimer()
	for i := range b.N {
		remote := Address{Name: fmt.Sprint("bob", i), DeviceID: 1}
		if err := alice.ProcessBundle(ctx, remote, bundle); err != nil {
			b.Fatal(err)
		}
		if _, err := alice.Encrypt(ctx, remote, benchPlaintext); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkSessionAccept: decrypt the first (PreKeySignalMessage) message,
// building the session on the receiving side.
func BenchmarkSessionAccept(b *testing.B) {
	ctx := context.Background()
	bob := newDevice(b, "bob", 1, 0)
	bundle := bob.bundle(-1)
	alice := newDevice(b, "alice", 1, 0)
	msgs := make([]Ciphertext, b.N)
	for i := range b.N {
		// One sender identity, many sender devices' worth of sessions.
		if err := alice.ProcessBundle(ctx, bob.Address(), bundle); err != nil {
			b.Fatal(err)
		}
		msgs[i], _ = alice.Encrypt(ctx, bob.Address(), benchPlaintext)
		_ = alice.DeleteSession(ctx, bob.Address())
	}
	b.ReportAllocs()
	b.ResetTimer()
	for i := range b.N {
		from := Address{Name: "alice", DeviceID: uint32(1 + i%MaxDeviceID)}
		_ = bob.store.DeleteSession(ctx, from)
		if _, err := bob.Decrypt(ctx, from, msgs[i]); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkEncrypt: encrypt on an established sending chain.
func BenchmarkEncrypt(b *testing.B) {
	ctx := context.Background()
	alice, bob := established(b)
	b.ReportAllocs()
	b.ResetTimer()
	for range b.N {
		if _, err := alice.Encrypt(ctx, bob.Address(), benchPlaintext); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkDecrypt: decrypt in order on one receiving chain.
func BenchmarkDecrypt(b *testing.B) {
	ctx := context.Background()
	alice, bob := established(b)
	msgs := make([]Ciphertext, b.N)
	for i := range msgs {
		msgs[i], _ = alice.Encrypt(ctx, bob.Address(), benchPlaintext)
	}
	b.ReportAllocs()
	b.ResetTimer()
	for i := range b.N {
		if _, err := bob.Decrypt(ctx, alice.Address(), msgs[i]); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkRatchetStep: every message goes the other way from the last, so
// each encrypt+decrypt pair carries a DH ratchet step. One op is one
// message, encrypted and decrypted.
func BenchmarkRatchetStep(b *testing.B) {
	ctx := context.Background()
	alice, bob := established(b)
	b.ReportAllocs()
	b.ResetTimer()
	for i := range b.N {
		from, to := alice, bob
		if i%2 == 1 {
			from, to = bob, alice
		}
		c, err := from.Encrypt(ctx, to.Address(), benchPlaintext)
		if err != nil {
			b.Fatal(err)
		}
		if _, err := to.Decrypt(ctx, from.Address(), c); err != nil {
			b.Fatal(err)
		}
	}
}

func groupPair(b *testing.B) (alice, bob *device, group string) {
	ctx := context.Background()
	alice = newDevice(b, "alice", 1, 0)
	bob = newDevice(b, "bob", 1, 0)
	group = "bench-group"
	skdm, err := alice.GroupDistribution(ctx, group)
	if err != nil {
		b.Fatal(err)
	}
	if err := bob.ProcessDistribution(ctx, group, alice.Address(), skdm); err != nil {
		b.Fatal(err)
	}
	return alice, bob, group
}

func BenchmarkGroupEncrypt(b *testing.B) {
	ctx := context.Background()
	alice, _, group := groupPair(b)
	b.ReportAllocs()
	b.ResetTimer()
	for range b.N {
		if _, err := alice.GroupEncrypt(ctx, group, benchPlaintext); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkGroupDecrypt(b *testing.B) {
	ctx := context.Background()
	alice, bob, group := groupPair(b)
	msgs := make([][]byte, b.N)
	for i := range msgs {
		msgs[i], _ = alice.GroupEncrypt(ctx, group, benchPlaintext)
	}
	b.ReportAllocs()
	b.ResetTimer()
	for i := range b.N {
		if _, err := bob.GroupDecrypt(ctx, group, alice.Address(), msgs[i]); err != nil {
			b.Fatal(err)
		}
	}
}

const benchAttachment = 8 << 20

func BenchmarkAttachmentEncrypt(b *testing.B) {
	key, _ := NewAttachmentKey()
	pt := make([]byte, benchAttachment)
	b.SetBytes(benchAttachment)
	b.ReportAllocs()
	b.ResetTimer()
	for range b.N {
		e, err := EncryptAttachment(bytes.NewReader(pt), key)
		if err != nil {
			b.Fatal(err)
		}
		if _, err := io.Copy(io.Discard, e); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkAttachmentDecrypt includes both passes (verify, then decrypt).
func BenchmarkAttachmentDecrypt(b *testing.B) {
	key, _ := NewAttachmentKey()
	e, _ := EncryptAttachment(bytes.NewReader(make([]byte, benchAttachment)), key)
	blob, _ := io.ReadAll(e)
	d, _ := e.Digest()
	b.SetBytes(benchAttachment)
	b.ReportAllocs()
	b.ResetTimer()
	for range b.N {
		if _, err := DecryptAttachment(io.Discard, bytes.NewReader(blob), int64(len(blob)), key, d); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkSafetyNumber(b *testing.B) {
	x, _ := GenerateIdentityKeyPair()
	y, _ := GenerateIdentityKeyPair()
	b.ReportAllocs()
	for range b.N {
		if _, err := NewSafetyNumber("alice", x.PublicKey(), "bob", y.PublicKey()); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkDecryptPreKeyEstablished: PreKeySignalMessages on a session the
// receiver already has (the sender keeps sending them until it hears back),
// the common prekey case: no X3DH, the current state decrypts in place.
func BenchmarkDecryptPreKeyEstablished(b *testing.B) {
	ctx := context.Background()
	alice := newDevice(b, "alice", 1, 0)
	bob := newDevice(b, "bob", 1, 1)
	connect(b, alice, bob, 0)
	msgs := make([]Ciphertext, b.N+1)
	for i := range msgs {
		msgs[i], _ = alice.Encrypt(ctx, bob.Address(), benchPlaintext)
	}
	if _, err := bob.Decrypt(ctx, alice.Address(), msgs[0]); err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	b.ResetTimer()
	for i := range b.N {
		if _, err := bob.Decrypt(ctx, alice.Address(), msgs[i+1]); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkDecryptArchivedState: the slow path of trial decryption. After a
// simultaneous session start bob's current session with alice is hers and
// his own is archived; alice's message on his session is refused by the
// current state (a trial DH ratchet step on it), then decrypted on a copy
// of the archived state, which is promoted. The record is put back before
// each op so every op takes that path.
func BenchmarkDecryptArchivedState(b *testing.B) {
	ctx := context.Background()
	alice := newDevice(b, "alice", 1, 1)
	bob := newDevice(b, "bob", 1, 1)
	connect(b, alice, bob, 0)
	connect(b, bob, alice, 0)
	m1, _ := alice.Encrypt(ctx, bob.Address(), []byte("on alice's session"))
	n1, _ := bob.Encrypt(ctx, alice.Address(), []byte("on bob's session"))
	if _, err := bob.Decrypt(ctx, alice.Address(), m1); err != nil {
		b.Fatal(err)
	}
	if _, err := alice.Decrypt(ctx, bob.Address(), n1); err != nil {
		b.Fatal(err)
	}
	m2, _ := alice.Encrypt(ctx, bob.Address(), benchPlaintext) // on bob's session
	snapshot, err := bob.store.LoadSession(ctx, alice.Address())
	if err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	b.ResetTimer()
	for range b.N {
		if err := bob.store.StoreSession(ctx, alice.Address(), snapshot); err != nil {
			b.Fatal(err)
		}
		if _, err := bob.Decrypt(ctx, alice.Address(), m2); err != nil {
			b.Fatal(err)
		}
	}
}
