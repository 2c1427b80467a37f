package crypto

import (
	"errors"
	"fmt"

	"go.mau.fi/libsignal/ecc"
)

// Identifier ranges and sizes used by the Signal protocol. They are exported
// so the key server and the client validate with the same numbers.
const (
	// MinRegistrationID and MaxRegistrationID bound a device's registration
	// id (Signal's KeyHelper range).
	MinRegistrationID = 1
	MaxRegistrationID = 16380
	// MinDeviceID and MaxDeviceID bound a device id.
	MinDeviceID = 1
	MaxDeviceID = 127
	// MaxPreKeyID is the largest prekey id (a 24-bit "Medium" value). Id 0 is
	// never issued: libsignal reads a zero one-time prekey id as "none".
	MaxPreKeyID = 0xFFFFFE
	// PublicKeySize is a serialized public key: a 0x05 type byte and the
	// 32-byte X25519 u-coordinate.
	PublicKeySize = 33
	// SignatureSize is an XEdDSA signature.
	SignatureSize = 64
	// KeyTypeDJB is the type byte of a Curve25519 public key.
	KeyTypeDJB = ecc.DjbType
)

// Errors returned by key parsing and signature verification.
var (
	ErrPublicKeySize = errors.New("public key must be 33 bytes")
	ErrPublicKeyType = errors.New("public key type byte must be 0x05")
	ErrSignatureSize = errors.New("signature must be 64 bytes")
	ErrBadSignature  = errors.New("signature does not verify")
)

// PublicKey is a parsed Curve25519 public key (identity, prekey or signed
// prekey). The zero value is not valid; obtain one from ParsePublicKey.
type PublicKey struct {
	k ecc.ECPublicKeyable
}

// ParsePublicKey parses a 33-byte serialized public key (0x05 ‖ X25519).
// Unlike libsignal's ecc.DecodePoint it checks the length, so a short input
// is an error rather than a panic or a silently zero-padded key.
func ParsePublicKey(b []byte) (PublicKey, error) {
	if len(b) != PublicKeySize {
		return PublicKey{}, fmt.Errorf("parse public key: %w, got %d", ErrPublicKeySize, len(b))
	}
	if b[0] != KeyTypeDJB {
		return PublicKey{}, fmt.Errorf("parse public key: %w, got 0x%02x", ErrPublicKeyType, b[0])
	}
	var raw [32]byte
	copy(raw[:], b[1:])
	return PublicKey{k: ecc.NewDjbECPublicKey(raw)}, nil
}

// Bytes returns the 33-byte serialized form.
func (p PublicKey) Bytes() []byte {
	if p.k == nil {
		return nil
	}
	return p.k.Serialize()
}

// Verify checks an XEdDSA signature over message made with the private half
// of p.
func (p PublicKey) Verify(message, signature []byte) error {
	ensureLogger()
	if p.k == nil {
		return fmt.Errorf("verify signature: %w", ErrPublicKeySize)
	}
	if len(signature) != SignatureSize {
		return fmt.Errorf("verify signature: %w, got %d", ErrSignatureSize, len(signature))
	}
	var sig [SignatureSize]byte
	copy(sig[:], signature)
	if !ecc.VerifySignature(p.k, message, sig) {
		return fmt.Errorf("verify signature: %w", ErrBadSignature)
	}
	return nil
}

// VerifySignature checks an XEdDSA signature (64 bytes) over message made by
// the identity key identityKey (33 bytes, 0x05 ‖ X25519). The key server
// calls it on every uploaded signed prekey, where message is the signed
// prekey's 33-byte serialized public key. The error wraps ErrPublicKeySize,
// ErrPublicKeyType, ErrSignatureSize or ErrBadSignature.
func VerifySignature(identityKey, message, signature []byte) error {
	ensureLogger()
	pk, err := ParsePublicKey(identityKey)
	if err != nil {
		return fmt.Errorf("verify signature: %w", err)
	}
	return pk.Verify(message, signature)
}
