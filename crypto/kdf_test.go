package crypto

import (
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"io"
	"math/big"
	"testing"

	"go.mau.fi/libsignal/kdf"
	"golang.org/x/crypto/hkdf"
)

// The vendored library derives chain and message keys and computes message
// MACs with its own allocation-free HMAC-SHA256 and HKDF
// (third_party/libsignal/HUSH-PATCHES.md). These tests hold them to
// crypto/hmac and golang.org/x/crypto/hkdf, which they replaced, and to
// RFC 4231 / RFC 5869 vectors.

func randBytes(tb testing.TB, max int) []byte {
	n, _ := rand.Int(rand.Reader, big.NewInt(int64(max+1)))
	b := make([]byte, n.Int64())
	_, _ = rand.Read(b)
	return b
}

func TestHMACSHA256MatchesCryptoHMAC(t *testing.T) {
	for i := range 500 {
		// Keys around and beyond the block size, messages around and
		// beyond the stack buffer, split into 0–3 parts.
		key := randBytes(t, 100)
		msg := randBytes(t, 1100)
		switch i % 50 {
		case 0:
			msg = make([]byte, 1024+i%3-1) // 1023, 1024, 1025 bytes
		case 1:
			msg = make([]byte, 64+i%3-1) // 63, 64, 65 bytes
		}
		var parts [][]byte
		rest := msg
		for j := range i % 4 {
			if j == i%4-1 || len(rest) == 0 {
				parts = append(parts, rest)
				rest = nil
				break
			}
			k := len(rest) / 2
			parts = append(parts, rest[:k])
			rest = rest[k:]
		}
		if len(rest) > 0 && len(parts) == 0 {
			parts = [][]byte{rest}
		}
		m := hmac.New(sha256.New, key)
		for _, p := range parts {
			m.Write(p)
		}
		want := m.Sum(nil)
		if got := kdf.HMACSHA256(key, parts...); string(got[:]) != string(want) {
			t.Fatalf("key %d bytes, %d parts of %d bytes: %x, want %x", len(key), len(parts), len(msg), got, want)
		}
	}
	// RFC 4231 test case 2.
	got := kdf.HMACSHA256([]byte("Jefe"), []byte("what do ya want "), []byte("for nothing?"))
	if want := hex32(t, "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"); got != want {
		t.Fatalf("RFC 4231 case 2: %x", got)
	}
}

func TestDeriveSecretsMatchesHKDF(t *testing.T) {
	for i := range 300 {
		ikm, info := randBytes(t, 200), randBytes(t, 40)
		var salt []byte
		if i%3 != 0 {
			salt = randBytes(t, 80)
		}
		n := 1 + i%200
		want := make([]byte, n)
		if _, err := io.ReadFull(hkdf.New(sha256.New, ikm, salt, info), want); err != nil {
			t.Fatal(err)
		}
		got, err := kdf.DeriveSecrets(ikm, salt, info, n)
		if err != nil || string(got) != string(want) {
			t.Fatalf("ikm %d salt %d info %d out %d: %x, %v; want %x", len(ikm), len(salt), len(info), n, got, err, want)
		}
	}
	// RFC 5869 test case 1.
	ikm := make([]byte, 22)
	for i := range ikm {
		ikm[i] = 0x0b
	}
	salt := []byte{0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12}
	info := []byte{0xf0, 0xf1, 0xf2, 0xf3, 0xf4, 0xf5, 0xf6, 0xf7, 0xf8, 0xf9}
	got, err := kdf.DeriveSecrets(ikm, salt, info, 42)
	want := "3cb25f25faacd57a90434f64d0362f2a2d2d0a90cf1a5a4c5db02d56ecc4c5bf34007208d5b887185865"
	if err != nil || hexString(got) != want {
		t.Fatalf("RFC 5869 case 1: %x, %v", got, err)
	}
	if _, err := kdf.DeriveSecrets(ikm, salt, info, 255*32+1); err == nil {
		t.Fatal("HKDF output over 255 blocks accepted")
	}
}

func hexString(b []byte) string {
	const digits = "0123456789abcdef"
	out := make([]byte, 0, 2*len(b))
	for _, c := range b {
		out = append(out, digits[c>>4], digits[c&15])
	}
	return string(out)
}

// TestHMACSHA256ShortInputsDoNotAllocate: the point of the patch.
func TestHMACSHA256ShortInputsDoNotAllocate(t *testing.T) {
	key, a, b := make([]byte, 32), make([]byte, 33), make([]byte, 300)
	if n := testing.AllocsPerRun(100, func() { _ = kdf.HMACSHA256(key, a, a, b) }); n != 0 {
		t.Fatalf("%v allocations per HMAC", n)
	}
}

func BenchmarkChainMessageKeys(b *testing.B) {
	key := make([]byte, 32)
	b.ReportAllocs()
	for range b.N {
		seed := kdf.HMACSHA256(key, []byte{1})
		_, _ = kdf.DeriveSecrets(seed[:], nil, []byte("WhisperMessageKeys"), 80)
		_ = kdf.HMACSHA256(key, []byte{2})
	}
}
