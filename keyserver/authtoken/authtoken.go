// Package authtoken issues and verifies hush's device auth tokens.
//
// A token says "device D of account A authenticated to the key server at
// time T and may act as that device until E". The key server issues it after
// a challenge–response login (the device signs a server nonce with its
// identity key) and signs it with its own Ed25519 key. Anyone holding the key
// server's public key — in practice the relay — verifies a token offline,
// without a round trip and without shared secrets.
//
// Wire format (ASCII, URL-safe, no padding):
//
//	"v1." base64url(payload) "." base64url(signature)
//
// where payload is a fixed binary layout
//
//	len(account) uint8 | account | device uint32 | issued_at int64 | expiry int64
//
// (integers big-endian, times in Unix milliseconds) and signature is
// Ed25519 over "hush-token-v1\x00" ‖ payload. The explicit version prefix
// lets a later format coexist; the domain-separation string keeps the key
// server's signing key from ever producing a token by signing something
// else. Parsing is bounded (MaxTokenLen) and strict: non-canonical base64,
// trailing bytes and impossible claims are ErrMalformed, so exactly one
// string verifies for each (claims, signature) pair.
//
// Tokens are bearer credentials: they must never be logged. Revocation is
// not in the token: a token is only honoured while its device is still
// listed for its account (the key server checks its store, the relay its
// device directory), and device ids are never reused within an account, so
// removing a device revokes all its tokens for good.
package authtoken

import (
	"bytes"
	"crypto/ed25519"
	"encoding/base64"
	"encoding/binary"
	"errors"
	"fmt"
	"strings"
	"time"
	"unicode/utf8"
)

// Limits of a token. They are part of the format: Issue refuses claims
// outside them and Verify refuses tokens outside them.
const (
	// Version is the prefix of every token this package issues.
	Version = "v1"
	// MaxAccountLen bounds the account name carried in a token, in bytes.
	MaxAccountLen = 64
	// MaxDevice is the largest device id (Signal's range is 1–127).
	MaxDevice = 127
	// MaxTokenLen bounds the length of a token string Verify will look at.
	MaxTokenLen = 256
)

// Errors returned by Verify (wrapped, test with errors.Is).
var (
	// ErrMalformed: the string is not a well-formed v1 token.
	ErrMalformed = errors.New("malformed token")
	// ErrBadSignature: well-formed, but not signed by the given key.
	ErrBadSignature = errors.New("token signature does not verify")
	// ErrExpired: genuine, but its expiry has passed.
	ErrExpired = errors.New("token expired")
)

// Claims are what a token asserts. Times are carried with millisecond
// precision; Verify returns them in UTC.
type Claims struct {
	Account  string
	Device   uint32
	IssuedAt time.Time
	Expiry   time.Time
}

const (
	prefix    = Version + "."
	sigDomain = "hush-token-v1\x00"
	fixedLen  = 1 + 4 + 8 + 8 // everything but the account bytes
)

var b64 = base64.RawURLEncoding.Strict()

func (c Claims) check() error {
	if c.Account == "" || len(c.Account) > MaxAccountLen {
		return fmt.Errorf("account must be 1–%d bytes, got %d", MaxAccountLen, len(c.Account))
	}
	if !utf8.ValidString(c.Account) {
		return errors.New("account is not valid UTF-8")
	}
	if c.Device < 1 || c.Device > MaxDevice {
		return fmt.Errorf("device must be 1–%d, got %d", MaxDevice, c.Device)
	}
	if !c.Expiry.After(c.IssuedAt) {
		return errors.New("expiry must be after issued-at")
	}
	return nil
}

func (c Claims) payload() []byte {
	p := make([]byte, 0, fixedLen+len(c.Account))
	p = append(p, byte(len(c.Account)))
	p = append(p, c.Account...)
	p = binary.BigEndian.AppendUint32(p, c.Device)
	p = binary.BigEndian.AppendUint64(p, uint64(c.IssuedAt.UnixMilli()))
	p = binary.BigEndian.AppendUint64(p, uint64(c.Expiry.UnixMilli()))
	return p
}

func signedMessage(payload []byte) []byte {
	m := make([]byte, 0, len(sigDomain)+len(payload))
	m = append(m, sigDomain...)
	return append(m, payload...)
}

// Issue signs c with the key server's private key. Times are truncated to
// milliseconds. It fails on a wrong-sized key or on claims a verifier would
// refuse (empty or over-long account, device outside 1–127, expiry not
// after issued-at).
func Issue(priv ed25519.PrivateKey, c Claims) (string, error) {
	if len(priv) != ed25519.PrivateKeySize {
		return "", fmt.Errorf("issue token: private key must be %d bytes, got %d", ed25519.PrivateKeySize, len(priv))
	}
	c.IssuedAt = c.IssuedAt.Truncate(time.Millisecond)
	c.Expiry = c.Expiry.Truncate(time.Millisecond)
	if err := c.check(); err != nil {
		return "", fmt.Errorf("issue token: %w", err)
	}
	p := c.payload()
	sig := ed25519.Sign(priv, signedMessage(p))
	var sb strings.Builder
	sb.Grow(len(prefix) + b64.EncodedLen(len(p)) + 1 + b64.EncodedLen(len(sig)))
	sb.WriteString(prefix)
	sb.WriteString(b64.EncodeToString(p))
	sb.WriteByte('.')
	sb.WriteString(b64.EncodeToString(sig))
	return sb.String(), nil
}

// Verify checks token against the key server's public key and returns its
// claims. The signature is checked before any claim is trusted, then the
// expiry against now (a token is expired from its Expiry instant on).
// Errors wrap ErrMalformed, ErrBadSignature or ErrExpired; a wrong-sized
// public key is reported as ErrBadSignature.
func Verify(pub ed25519.PublicKey, token string, now time.Time) (Claims, error) {
	if len(token) > MaxTokenLen {
		return Claims{}, fmt.Errorf("verify token: %w: longer than %d bytes", ErrMalformed, MaxTokenLen)
	}
	rest, ok := strings.CutPrefix(token, prefix)
	if !ok {
		return Claims{}, fmt.Errorf("verify token: %w: missing %q prefix", ErrMalformed, prefix)
	}
	encPayload, encSig, ok := strings.Cut(rest, ".")
	if !ok {
		return Claims{}, fmt.Errorf("verify token: %w: missing signature part", ErrMalformed)
	}
	payload, err := b64.DecodeString(encPayload)
	if err != nil {
		return Claims{}, fmt.Errorf("verify token: %w: payload encoding", ErrMalformed)
	}
	sig, err := b64.DecodeString(encSig)
	if err != nil {
		return Claims{}, fmt.Errorf("verify token: %w: signature encoding", ErrMalformed)
	}
	if len(sig) != ed25519.SignatureSize {
		return Claims{}, fmt.Errorf("verify token: %w: signature is %d bytes", ErrMalformed, len(sig))
	}
	c, err := parsePayload(payload)
	if err != nil {
		return Claims{}, fmt.Errorf("verify token: %w: %v", ErrMalformed, err)
	}
	if len(pub) != ed25519.PublicKeySize || !ed25519.Verify(pub, signedMessage(payload), sig) {
		return Claims{}, fmt.Errorf("verify token: %w", ErrBadSignature)
	}
	if !now.Before(c.Expiry) {
		return Claims{}, fmt.Errorf("verify token for %s/%d: %w at %s", c.Account, c.Device, ErrExpired, c.Expiry.Format(time.RFC3339))
	}
	return c, nil
}

func parsePayload(p []byte) (Claims, error) {
	if len(p) < fixedLen+1 {
		return Claims{}, fmt.Errorf("payload is %d bytes", len(p))
	}
	n := int(p[0])
	if len(p) != fixedLen+n {
		return Claims{}, fmt.Errorf("payload is %d bytes, want %d", len(p), fixedLen+n)
	}
	acct := p[1 : 1+n]
	p = p[1+n:]
	c := Claims{
		Account:  string(acct),
		Device:   binary.BigEndian.Uint32(p[0:4]),
		IssuedAt: time.UnixMilli(int64(binary.BigEndian.Uint64(p[4:12]))).UTC(),
		Expiry:   time.UnixMilli(int64(binary.BigEndian.Uint64(p[12:20]))).UTC(),
	}
	if bytes.IndexByte(acct, 0) >= 0 {
		return Claims{}, errors.New("account contains NUL")
	}
	if err := c.check(); err != nil {
		return Claims{}, err
	}
	return c, nil
}
