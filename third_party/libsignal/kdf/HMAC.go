package kdf

import (
	"bytes"
	"crypto/hmac"
	"crypto/sha256"
	"crypto/subtle"
)

// hush patch (see HUSH-PATCHES.md): HMAC-SHA256 without crypto/hmac's
// allocations for the short inputs of the ratchet.

// ipad is RFC 2104's inner pad block; ipadToOpad turns key ⊕ ipad into
// key ⊕ opad.
var (
	ipad       = [sha256.BlockSize]byte(bytes.Repeat([]byte{0x36}, sha256.BlockSize))
	ipadToOpad = [sha256.BlockSize]byte(bytes.Repeat([]byte{0x36 ^ 0x5c}, sha256.BlockSize))
)

// hmacShortInput is the longest key-padded input HMACSHA256 hashes from a
// stack buffer; longer messages go through crypto/hmac.
const hmacShortInput = 1024

// HMACSHA256 returns HMAC-SHA256(key, parts[0] ‖ parts[1] ‖ …), RFC 2104.
// For a key of at most 64 bytes and a message of at most 1,024 bytes —
// every chain-key step, HKDF block and Signal message MAC of a short
// message — it allocates nothing: each of the two passes is one
// sha256.Sum256 over a stack buffer. Otherwise it uses crypto/hmac.
func HMACSHA256(key []byte, parts ...[]byte) [32]byte {
	n := 0
	for _, p := range parts {
		n += len(p)
	}
	switch {
	case len(key) > sha256.BlockSize || n > hmacShortInput:
		return hmacLong(key, n, parts)
	case n <= sha256.BlockSize:
		// Key steps and HKDF blocks: a buffer that is cheap to zero.
		var buf [2 * sha256.BlockSize]byte
		return hmacShort(buf[:], key, n, parts)
	default:
		var buf [sha256.BlockSize + hmacShortInput]byte
		return hmacShort(buf[:], key, n, parts)
	}
}

// hmacShort computes HMACSHA256 in buf, which holds the padded key and
// the n message bytes (n ≥ the 32 bytes of the inner hash).
func hmacShort(buf, key []byte, n int, parts [][]byte) [32]byte {
	copy(buf, key)
	subtle.XORBytes(buf[:sha256.BlockSize], buf[:sha256.BlockSize], ipad[:])
	m := buf[sha256.BlockSize:sha256.BlockSize]
	for _, p := range parts {
		m = append(m, p...)
	}
	inner := sha256.Sum256(buf[:sha256.BlockSize+n])
	subtle.XORBytes(buf[:sha256.BlockSize], buf[:sha256.BlockSize], ipadToOpad[:])
	copy(buf[sha256.BlockSize:], inner[:])
	return sha256.Sum256(buf[:sha256.BlockSize+sha256.Size])
}

// hkdfSHA256 fills out with HKDF-SHA256(ikm, salt, info), RFC 5869. A nil
// salt is HashLen zero bytes, as in golang.org/x/crypto/hkdf; as an HMAC
// key that equals the empty key.
func hkdfSHA256(out, ikm, salt, info []byte) {
	prk := HMACSHA256(salt, ikm)
	var t [sha256.Size]byte
	prev := t[:0]
	for i := byte(1); len(out) > 0; i++ {
		t = HMACSHA256(prk[:], prev, info, []byte{i})
		prev = t[:]
		out = out[copy(out, t[:]):]
	}
}

// hmacLong is HMACSHA256 through crypto/hmac, on copies of its inputs so
// that HMACSHA256's arguments do not escape (and can stay on the caller's
// stack).
func hmacLong(key []byte, n int, parts [][]byte) [32]byte {
	msg := make([]byte, 0, n)
	for _, p := range parts {
		msg = append(msg, p...)
	}
	mac := hmac.New(sha256.New, append([]byte(nil), key...))
	mac.Write(msg)
	return [32]byte(mac.Sum(nil))
}
