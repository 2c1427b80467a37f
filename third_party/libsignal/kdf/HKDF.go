// Package kdf provides a key derivation function to calculate key output
// and negotiate shared secrets for curve X25519 keys.
package kdf

import (
	"crypto/sha256"
	"errors"

	"filippo.io/edwards25519/field"
)

// HKDF is a hashed key derivation function type that can be used to derive keys.
type HKDF func(inputKeyMaterial, salt, info []byte, outputLength int) ([]byte, error)

// DeriveSecrets derives the requested number of bytes using HKDF with the given
// input, salt, and info.
//
// hush patch: HKDF on HMACSHA256 (HMAC.go) instead of
// golang.org/x/crypto/hkdf, which allocates two crypto/hmac instances per
// call; this runs several times per message. Same output.
func DeriveSecrets(inputKeyMaterial, salt, info []byte, outputLength int) ([]byte, error) {
	if outputLength < 0 || outputLength > 255*sha256.Size {
		return nil, errors.New("hkdf: entropy limit reached")
	}
	secrets := make([]byte, outputLength)
	hkdfSHA256(secrets, inputKeyMaterial, salt, info)
	return secrets, nil
}

// CalculateSharedSecret uses DH Curve25519 to find a shared secret. The result of this function
// should be used in `DeriveSecrets` to output the Root and Chain keys.
//
// hush patch: x25519 below instead of curve25519.ScalarMult, which goes
// through crypto/ecdh and computes our public key (a second, unused scalar
// multiplication) before the shared secret. The result is the same,
// including all zeros for a low-order point.
func CalculateSharedSecret(theirKey, ourKey [32]byte) [32]byte {
	var sharedSecret [32]byte
	x25519(&sharedSecret, &ourKey, &theirKey)

	return sharedSecret
}

// x25519 is RFC 7748's X25519 function: the Montgomery ladder of Go's
// crypto/ecdh (x25519ScalarMult, BSD-licensed), on filippo.io/edwards25519's
// field arithmetic, which is the same code as Go's internal field package.
func x25519(dst, scalar, point *[32]byte) {
	var e [32]byte

	copy(e[:], scalar[:])
	e[0] &= 248
	e[31] &= 127
	e[31] |= 64

	var x1, x2, z2, x3, z3, tmp0, tmp1 field.Element
	x1.SetBytes(point[:]) // cannot fail on 32 bytes; ignores the top bit
	x2.One()
	x3.Set(&x1)
	z3.One()

	swap := 0
	for pos := 254; pos >= 0; pos-- {
		b := e[pos/8] >> uint(pos&7)
		b &= 1
		swap ^= int(b)
		x2.Swap(&x3, swap)
		z2.Swap(&z3, swap)
		swap = int(b)

		tmp0.Subtract(&x3, &z3)
		tmp1.Subtract(&x2, &z2)
		x2.Add(&x2, &z2)
		z2.Add(&x3, &z3)
		z3.Multiply(&tmp0, &x2)
		z2.Multiply(&z2, &tmp1)
		tmp0.Square(&tmp1)
		tmp1.Square(&x2)
		x3.Add(&z3, &z2)
		z2.Subtract(&z3, &z2)
		x2.Multiply(&tmp1, &tmp0)
		tmp1.Subtract(&tmp1, &tmp0)
		z2.Square(&z2)

		z3.Mult32(&tmp1, 121666)
		x3.Square(&x3)
		tmp0.Add(&tmp0, &z3)
		z3.Multiply(&x1, &z2)
		z2.Multiply(&tmp1, &tmp0)
	}

	x2.Swap(&x3, swap)
	z2.Swap(&z3, swap)

	z2.Invert(&z2)
	x2.Multiply(&x2, &z2)
	copy(dst[:], x2.Bytes())
}

// KeyMaterial is a structure for representing a cipherkey, mac, and iv
type KeyMaterial struct {
	CipherKey []byte
	MacKey    []byte
	IV        []byte
}
