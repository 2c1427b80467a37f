package crypto

import (
	"context"
	"crypto/sha512"
	"crypto/subtle"
	"encoding/binary"
	"errors"
	"fmt"

	"go.mau.fi/libsignal/serialize"
	"google.golang.org/protobuf/proto"
)

// Safety numbers, computed exactly as Signal computes them (libsignal's
// fingerprint.rs): per side, SHA-512 over 0x0000 ‖ identity key ‖ stable id
// ‖ identity key, then 5,199 more rounds of SHA-512(previous ‖ identity key).
// The first 30 bytes of a side's hash give six 5-digit groups (each 5-byte
// chunk as a big-endian integer mod 100,000). The two sides' 30 digits are
// sorted and concatenated, so both parties see the same 60 digits. The
// scannable form is Signal's CombinedFingerprints protobuf holding each
// side's hash truncated to 32 bytes. go.mau.fi/libsignal only formats
// digits; the hashing is here.

const (
	// SafetyNumberIterations is Signal's iteration count.
	SafetyNumberIterations = 5200
	// ScannableVersion is the CombinedFingerprints version hush writes
	// (Signal's current one, for stable ids that are not phone numbers).
	ScannableVersion = 2
	// SafetyNumberDigits is the length of SafetyNumber.Digits.
	SafetyNumberDigits = 60
	// maxScannableSize bounds a scanned code before it is parsed.
	maxScannableSize = 1024
	// maxStableIDSize bounds a stable identifier.
	maxStableIDSize = 1024
)

// Scannable-code errors.
var (
	ErrScannableParse   = errors.New("scanned code is not a safety-number code")
	ErrScannableVersion = errors.New("scanned code has another safety-number version")
)

// SafetyNumber is the comparison value for one pair of identities.
type SafetyNumber struct {
	// Digits is the 60-digit safety number, identical on both sides.
	Digits string

	version       uint32
	local, remote []byte // 32-byte truncated hashes
}

func (s *SafetyNumber) String() string { return s.Digits }

// NewSafetyNumber computes the safety number between this side (localID,
// localKey) and the other side (remoteID, remoteKey). The ids are the
// parties' stable identifiers (hush uses account names); keys are 33-byte
// identity public keys.
func NewSafetyNumber(localID string, localKey []byte, remoteID string, remoteKey []byte) (*SafetyNumber, error) {
	return newSafetyNumber(ScannableVersion, SafetyNumberIterations, []byte(localID), localKey, []byte(remoteID), remoteKey)
}

func newSafetyNumber(version uint32, iterations int, localID, localKey, remoteID, remoteKey []byte) (*SafetyNumber, error) {
	for _, k := range [][]byte{localKey, remoteKey} {
		if _, err := ParsePublicKey(k); err != nil {
			return nil, fmt.Errorf("safety number: %w", err)
		}
	}
	if len(localID) == 0 || len(remoteID) == 0 || len(localID) > maxStableIDSize || len(remoteID) > maxStableIDSize {
		return nil, fmt.Errorf("safety number: stable ids must be 1–%d bytes", maxStableIDSize)
	}
	l := fingerprintHash(iterations, localID, localKey)
	r := fingerprintHash(iterations, remoteID, remoteKey)
	ld, rd := displayDigits(l), displayDigits(r)
	digits := ld + rd
	if rd < ld {
		digits = rd + ld
	}
	return &SafetyNumber{Digits: digits, version: version, local: l[:32], remote: r[:32]}, nil
}

func fingerprintHash(iterations int, id, key []byte) []byte {
	h := sha512.New()
	h.Write([]byte{0, 0}) // fingerprint format version 0
	h.Write(key)
	h.Write(id)
	h.Write(key)
	buf := h.Sum(nil)
	for i := 1; i < iterations; i++ {
		h.Reset()
		h.Write(buf)
		h.Write(key)
		buf = h.Sum(buf[:0])
	}
	return buf
}

func displayDigits(hash []byte) string {
	out := make([]byte, 0, 30)
	for i := 0; i < 30; i += 5 {
		var b [8]byte
		copy(b[3:], hash[i:i+5])
		out = fmt.Appendf(out, "%05d", binary.BigEndian.Uint64(b[:])%100000)
	}
	return string(out)
}

// Scannable returns the bytes to show as a QR code: Signal's
// CombinedFingerprints protobuf from this side's point of view.
func (s *SafetyNumber) Scannable() []byte {
	b, err := proto.Marshal(&serialize.CombinedFingerprints{
		Version:           proto.Uint32(s.version),
		LocalFingerprint:  &serialize.LogicalFingerprint{Content: s.local},
		RemoteFingerprint: &serialize.LogicalFingerprint{Content: s.remote},
	})
	if err != nil {
		// Marshalling a message of two byte fields and an int cannot fail.
		panic(fmt.Sprintf("marshal scannable safety number: %v", err))
	}
	return b
}

// CompareScannable reports whether scanned — the other party's Scannable
// bytes — shows the same two identities (their local is our remote and
// vice versa), in constant time. A malformed code wraps ErrScannableParse; a
// code of another version wraps ErrScannableVersion.
func (s *SafetyNumber) CompareScannable(scanned []byte) (bool, error) {
	if len(scanned) > maxScannableSize {
		return false, fmt.Errorf("%w: %d bytes", ErrScannableParse, len(scanned))
	}
	var c serialize.CombinedFingerprints
	if err := proto.Unmarshal(scanned, &c); err != nil {
		return false, fmt.Errorf("%w: %w", ErrScannableParse, err)
	}
	if c.GetVersion() != s.version {
		return false, fmt.Errorf("%w: got %d, want %d", ErrScannableVersion, c.GetVersion(), s.version)
	}
	if c.LocalFingerprint == nil || c.RemoteFingerprint == nil || c.LocalFingerprint.Content == nil || c.RemoteFingerprint.Content == nil {
		return false, fmt.Errorf("%w: missing fingerprint", ErrScannableParse)
	}
	same1 := subtle.ConstantTimeCompare(c.LocalFingerprint.Content, s.remote)
	same2 := subtle.ConstantTimeCompare(c.RemoteFingerprint.Content, s.local)
	return same1&same2 == 1, nil
}

// SafetyNumber computes the safety number between this device and remote,
// using the identity key recorded for remote and the account names as
// stable ids.
func (p *Protocol) SafetyNumber(ctx context.Context, remote Address) (*SafetyNumber, error) {
	rec, err := p.store.LoadIdentity(ctx, remote)
	if err != nil {
		return nil, fmt.Errorf("safety number with %s: %w", remote, err)
	}
	return NewSafetyNumber(p.self.Name, p.identity.PublicKey(), remote.Name, rec.Key)
}
