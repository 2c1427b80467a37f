package crypto

import (
	"bytes"
	"crypto/rand"
	"encoding/hex"
	"testing"

	"go.mau.fi/libsignal/kdf"
	"golang.org/x/crypto/curve25519"
)

// The vendored library computes Diffie-Hellman with its own one-ladder
// X25519 (third_party/libsignal/HUSH-PATCHES.md). These tests hold it to
// RFC 7748 and to golang.org/x/crypto/curve25519, which it replaced.

func hex32(tb testing.TB, s string) [32]byte {
	tb.Helper()
	b, err := hex.DecodeString(s)
	if err != nil || len(b) != 32 {
		tb.Fatalf("bad hex %q", s)
	}
	return [32]byte(b)
}

// TestX25519RFC7748 uses the Diffie-Hellman example of RFC 7748 §6.1.
func TestX25519RFC7748(t *testing.T) {
	alicePriv := hex32(t, "77076d0a7318a57d3c16c17251b26645df4c2f87ebc0992ab177fba51db92c2a")
	alicePub := hex32(t, "8520f0098930a754748b7ddcb43ef75a0dbf3a0d26381af4eba4a98eaa9b4e6a")
	bobPriv := hex32(t, "5dab087e624a8a4b79e17f8b83800ee66f3bb1292618b6fd1c2f8b27ff88e0eb")
	bobPub := hex32(t, "de9edb7d7b7dc1b4d35b61c2ece435373f8343c85b78674dadfc7e146f882b4f")
	shared := hex32(t, "4a5d9d5ba4ce2de1728e3bf480350f25e07e21c947d19e3376f09b3c1e161742")
	if got := kdf.CalculateSharedSecret(bobPub, alicePriv); got != shared {
		t.Fatalf("alice: %x, want %x", got, shared)
	}
	if got := kdf.CalculateSharedSecret(alicePub, bobPriv); got != shared {
		t.Fatalf("bob: %x, want %x", got, shared)
	}
	// RFC 7748 §5.2, iterated: k = X25519(k, u), u = old k, from k = u = 9.
	k, u := [32]byte{9}, [32]byte{9}
	for range 1000 {
		k, u = kdf.CalculateSharedSecret(u, k), k
	}
	if want := hex32(t, "684cf59ba83309552800ef566f2f4d3c1c3887c49360e3875f2eb94d99532c51"); k != want {
		t.Fatalf("1000 iterations: %x, want %x", k, want)
	}
}

// TestX25519MatchesXCrypto compares random inputs (including points with
// the top bit set, which X25519 ignores) and low-order points (all-zero
// result) with golang.org/x/crypto's X25519 (which refuses low-order
// points with an error where the library returns zeros).
func TestX25519MatchesXCrypto(t *testing.T) {
	for i := range 200 {
		var scalar, point [32]byte
		_, _ = rand.Read(scalar[:])
		_, _ = rand.Read(point[:])
		if i%2 == 0 {
			point[31] |= 0x80
		}
		want, err := curve25519.X25519(scalar[:], point[:])
		if err != nil {
			want = make([]byte, 32) // a low-order point
		}
		if got := kdf.CalculateSharedSecret(point, scalar); !bytes.Equal(got[:], want) {
			t.Fatalf("scalar %x point %x: %x, want %x", scalar, point, got, want)
		}
	}
	var scalar [32]byte
	_, _ = rand.Read(scalar[:])
	for _, p := range []string{
		"0000000000000000000000000000000000000000000000000000000000000000",
		"0100000000000000000000000000000000000000000000000000000000000000",
		"e0eb7a7c3b41b8ae1656e3faf19fc46ada098deb9c32b1fd866205165f49b800",
		"ecffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",
	} {
		if got := kdf.CalculateSharedSecret(hex32(t, p), scalar); !bytes.Equal(got[:], make([]byte, 32)) {
			t.Fatalf("low-order point %s: %x, want zeros", p, got)
		}
	}
}
