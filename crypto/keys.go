package crypto

import (
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"math/big"
	"time"

	"go.mau.fi/libsignal/ecc"
	"go.mau.fi/libsignal/keys/identity"
	"go.mau.fi/libsignal/state/record"
	"go.mau.fi/libsignal/util/medium"
	"golang.org/x/crypto/curve25519"
)

// LastResortPreKeyID is the id of the last-resort prekey: the one the key
// server hands out when a device's one-time prekeys run out. libsignal never
// deletes the prekey with this id after using it (it is Signal's historical
// Medium.MAX_VALUE), so a session built on it keeps working for every sender
// that gets it; ordinary one-time prekeys use 1…MaxPreKeyID.
const LastResortPreKeyID = medium.MaxValue

// MaxPreKeyBatch bounds one GeneratePreKeys call.
const MaxPreKeyBatch = 1000

// PrivateKeySize is a Curve25519 private key.
const PrivateKeySize = 32

// Errors for identifiers outside the Signal protocol's ranges.
var (
	ErrRegistrationID = errors.New("registration id out of range 1–16380")
	ErrDeviceID       = errors.New("device id out of range 1–127")
	ErrPreKeyID       = errors.New("prekey id out of range")
	ErrPreKeyCount    = errors.New("prekey batch size out of range")
	ErrPrivateKeySize = errors.New("private key must be 32 bytes")
)

// ValidateRegistrationID reports whether id is a valid registration id.
func ValidateRegistrationID(id uint32) error {
	if id < MinRegistrationID || id > MaxRegistrationID {
		return fmt.Errorf("%w: %d", ErrRegistrationID, id)
	}
	return nil
}

// ValidateDeviceID reports whether id is a valid device id.
func ValidateDeviceID(id uint32) error {
	if id < MinDeviceID || id > MaxDeviceID {
		return fmt.Errorf("%w: %d", ErrDeviceID, id)
	}
	return nil
}

// ValidatePreKeyID reports whether id may name a one-time or signed prekey:
// 1…MaxPreKeyID. Zero means "no prekey" to libsignal and LastResortPreKeyID
// is reserved; use ValidateLastResortID for that one.
func ValidatePreKeyID(id uint32) error {
	if id < 1 || id > MaxPreKeyID {
		return fmt.Errorf("%w: %d (want 1–%d)", ErrPreKeyID, id, MaxPreKeyID)
	}
	return nil
}

// NextPreKeyID returns the id after id, wrapping from MaxPreKeyID back to 1,
// so a long-lived device can keep issuing ids without ever reaching 0 or the
// last-resort id.
func NextPreKeyID(id uint32) uint32 {
	if id >= MaxPreKeyID {
		return 1
	}
	return id + 1
}

// GenerateRegistrationID returns a uniformly random registration id in
// 1…16380. (libsignal's keyhelper returns any uint32, outside Signal's range.)
func GenerateRegistrationID() (uint32, error) {
	n, err := rand.Int(rand.Reader, big.NewInt(MaxRegistrationID))
	if err != nil {
		return 0, fmt.Errorf("generate registration id: %w", err)
	}
	return uint32(n.Int64()) + MinRegistrationID, nil
}

// generateKeyPair makes a Curve25519 key pair. It does not use
// ecc.CreateKeyPair, which passes the private key to the library's Debug log.
func generateKeyPair() (*ecc.ECKeyPair, error) {
	var priv [32]byte
	if _, err := rand.Read(priv[:]); err != nil {
		return nil, fmt.Errorf("generate key pair: %w", err)
	}
	return keyPairFromPrivate(priv)
}

func keyPairFromPrivate(priv [32]byte) (*ecc.ECKeyPair, error) {
	priv[0] &= 248
	priv[31] &= 127
	priv[31] |= 64
	pub, err := curve25519.X25519(priv[:], curve25519.Basepoint)
	if err != nil {
		return nil, fmt.Errorf("derive public key: %w", err)
	}
	return ecc.NewECKeyPair(ecc.NewDjbECPublicKey([32]byte(pub)), ecc.NewDjbECPrivateKey(priv)), nil
}

// IdentityKeyPair is a device's long-term identity key. Its String, GoString
// and LogValue methods show only the public key, so printing or logging one
// never reveals the private half.
type IdentityKeyPair struct {
	kp *identity.KeyPair
}

// GenerateIdentityKeyPair makes a new identity key pair.
func GenerateIdentityKeyPair() (*IdentityKeyPair, error) {
	kp, err := generateKeyPair()
	if err != nil {
		return nil, fmt.Errorf("generate identity: %w", err)
	}
	return &IdentityKeyPair{kp: identity.NewKeyPair(identity.NewKey(kp.PublicKey()), kp.PrivateKey())}, nil
}

// ParseIdentityKeyPair restores an identity key pair from its 32-byte
// private key (as returned by PrivateKey); the public key is derived.
func ParseIdentityKeyPair(private []byte) (*IdentityKeyPair, error) {
	if len(private) != PrivateKeySize {
		return nil, fmt.Errorf("parse identity key pair: %w, got %d", ErrPrivateKeySize, len(private))
	}
	kp, err := keyPairFromPrivate([32]byte(private))
	if err != nil {
		return nil, fmt.Errorf("parse identity key pair: %w", err)
	}
	return &IdentityKeyPair{kp: identity.NewKeyPair(identity.NewKey(kp.PublicKey()), kp.PrivateKey())}, nil
}

// PublicKey returns the 33-byte serialized public identity key.
func (k *IdentityKeyPair) PublicKey() []byte { return k.kp.PublicKey().Serialize() }

// PrivateKey returns a copy of the 32-byte private key, for the caller's
// own encrypted storage.
func (k *IdentityKeyPair) PrivateKey() []byte {
	p := k.kp.PrivateKey().Serialize()
	return p[:]
}

// Sign makes an XEdDSA signature over message (verifiable with
// VerifySignature and the public key).
func (k *IdentityKeyPair) Sign(message []byte) ([]byte, error) {
	ensureLogger()
	sig := ecc.CalculateSignature(k.kp.PrivateKey(), message)
	return sig[:], nil
}

func (k *IdentityKeyPair) String() string {
	return "IdentityKeyPair{public:" + hex.EncodeToString(k.PublicKey()) + "}"
}

// GoString keeps %#v from printing the private key.
func (k *IdentityKeyPair) GoString() string { return k.String() }

// LogValue keeps slog from printing the private key.
func (k *IdentityKeyPair) LogValue() slog.Value {
	return slog.StringValue(hex.EncodeToString(k.PublicKey()))
}

// PreKey is a one-time (or last-resort) prekey with its private half.
type PreKey struct {
	rec *record.PreKey
	id  uint32
}

// PublicPreKey is what the key server stores and hands out for a prekey.
type PublicPreKey struct {
	ID        uint32 `json:"id"`
	PublicKey []byte `json:"public_key"`
}

// ID returns the prekey id.
func (p *PreKey) ID() uint32 { return p.id }

// Public returns the id and 33-byte public key, for upload.
func (p *PreKey) Public() PublicPreKey {
	return PublicPreKey{ID: p.id, PublicKey: p.rec.KeyPair().PublicKey().Serialize()}
}

func (p *PreKey) String() string { return fmt.Sprintf("PreKey{id:%d}", p.id) }

// GoString keeps %#v from printing the private key.
func (p *PreKey) GoString() string { return p.String() }

// GeneratePreKeys makes count one-time prekeys with ids start, start+1, …,
// wrapping from MaxPreKeyID back to 1. It returns the keys and the id to
// start the next batch with. Store them with Protocol.StorePreKeys before
// uploading the public halves.
func GeneratePreKeys(start uint32, count int) ([]*PreKey, uint32, error) {
	if err := ValidatePreKeyID(start); err != nil {
		return nil, 0, fmt.Errorf("generate prekeys: %w", err)
	}
	if count < 1 || count > MaxPreKeyBatch {
		return nil, 0, fmt.Errorf("generate prekeys: %w: %d (want 1–%d)", ErrPreKeyCount, count, MaxPreKeyBatch)
	}
	keys := make([]*PreKey, 0, count)
	id := start
	for range count {
		kp, err := generateKeyPair()
		if err != nil {
			return nil, 0, fmt.Errorf("generate prekeys: %w", err)
		}
		keys = append(keys, &PreKey{id: id, rec: record.NewPreKey(id, kp, serializer.PreKeyRecord)})
		id = NextPreKeyID(id)
	}
	return keys, id, nil
}

// GenerateLastResortPreKey makes the last-resort prekey (id
// LastResortPreKeyID). The client never deletes it after use; it replaces it
// only by generating and uploading a new one.
func GenerateLastResortPreKey() (*PreKey, error) {
	kp, err := generateKeyPair()
	if err != nil {
		return nil, fmt.Errorf("generate last-resort prekey: %w", err)
	}
	return &PreKey{id: LastResortPreKeyID, rec: record.NewPreKey(LastResortPreKeyID, kp, serializer.PreKeyRecord)}, nil
}

// SignedPreKey is a medium-term prekey signed by the identity key.
type SignedPreKey struct {
	rec *record.SignedPreKey
}

// PublicSignedPreKey is what the key server stores for a signed prekey.
type PublicSignedPreKey struct {
	ID        uint32 `json:"id"`
	PublicKey []byte `json:"public_key"`
	Signature []byte `json:"signature"`
}

// GenerateSignedPreKey makes a signed prekey with the given id (1…MaxPreKeyID)
// signed by identity. Signal rotates it every few days; keep the previous one
// stored for a while so messages built on it still decrypt.
func GenerateSignedPreKey(id *IdentityKeyPair, keyID uint32) (*SignedPreKey, error) {
	ensureLogger()
	if err := ValidatePreKeyID(keyID); err != nil {
		return nil, fmt.Errorf("generate signed prekey: %w", err)
	}
	kp, err := generateKeyPair()
	if err != nil {
		return nil, fmt.Errorf("generate signed prekey: %w", err)
	}
	sig := ecc.CalculateSignature(id.kp.PrivateKey(), kp.PublicKey().Serialize())
	return &SignedPreKey{rec: record.NewSignedPreKey(keyID, time.Now().UnixMilli(), kp, sig, serializer.SignedPreKeyRecord)}, nil
}

// ID returns the signed prekey id.
func (s *SignedPreKey) ID() uint32 { return s.rec.ID() }

// Created returns when the key was generated.
func (s *SignedPreKey) Created() time.Time { return time.UnixMilli(s.rec.Timestamp()) }

// Public returns the id, public key and signature, for upload.
func (s *SignedPreKey) Public() PublicSignedPreKey {
	sig := s.rec.Signature()
	return PublicSignedPreKey{ID: s.rec.ID(), PublicKey: s.rec.KeyPair().PublicKey().Serialize(), Signature: sig[:]}
}

func (s *SignedPreKey) String() string { return fmt.Sprintf("SignedPreKey{id:%d}", s.rec.ID()) }

// GoString keeps %#v from printing the private key.
func (s *SignedPreKey) GoString() string { return s.String() }
