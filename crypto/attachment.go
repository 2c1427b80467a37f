package crypto

import (
	"crypto/aes"
	"crypto/cipher"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"errors"
	"fmt"
	"hash"
	"io"
)

// Attachments use Signal's format: a random 64-byte key (AES-256 key ‖
// HMAC-SHA256 key); the blob is IV (16) ‖ AES-256-CBC ciphertext with PKCS#7
// padding ‖ HMAC-SHA256(IV ‖ ciphertext) (32, untruncated); the digest is
// SHA-256 of the whole blob and travels with the key inside the E2E message,
// so the storage server cannot swap the blob.
//
// Both directions stream with constant memory. Decryption needs the MAC
// verified before any plaintext is released, so it reads the blob twice
// from an io.ReaderAt (a file, or a download spooled to one): once to check
// MAC, digest and padding, once to decrypt.

const (
	// AttachmentKeySize is the random key: 32 bytes AES-256 ‖ 32 bytes HMAC.
	AttachmentKeySize = 64
	// AttachmentDigestSize is SHA-256 of the blob.
	AttachmentDigestSize = sha256.Size
	attachmentIVSize     = aes.BlockSize
	attachmentMACSize    = sha256.Size
	// attachmentChunk is the streaming buffer size.
	attachmentChunk = 64 << 10
	// minAttachmentBlob is IV + one padded block + MAC (an empty file).
	minAttachmentBlob = attachmentIVSize + aes.BlockSize + attachmentMACSize
)

// Attachment errors.
var (
	ErrAttachmentKey = errors.New("attachment key must be 64 bytes")
	ErrBadMAC        = errors.New("attachment MAC mismatch")
	ErrBadDigest     = errors.New("attachment digest mismatch")
	ErrTruncated     = errors.New("attachment blob truncated or malformed")
	ErrBadPadding    = errors.New("attachment padding invalid")
)

// NewAttachmentKey returns a fresh random attachment key.
func NewAttachmentKey() ([]byte, error) {
	k := make([]byte, AttachmentKeySize)
	if _, err := rand.Read(k); err != nil {
		return nil, fmt.Errorf("attachment key: %w", err)
	}
	return k, nil
}

// EncryptedSize returns the blob size for a plaintext of plainLen bytes:
// IV + plaintext padded to the next full block (always at least one byte of
// padding) + MAC.
func EncryptedSize(plainLen int64) int64 {
	return attachmentIVSize + (plainLen/aes.BlockSize+1)*aes.BlockSize + attachmentMACSize
}

// AttachmentEncrypter is an io.Reader of the encrypted blob. Digest is
// available once Read has returned io.EOF.
type AttachmentEncrypter struct {
	src    io.Reader
	cbc    cipher.BlockMode
	mac    hash.Hash
	digest hash.Hash

	in      []byte // plaintext read but not yet encrypted (< one block carried over)
	out     []byte // encrypted bytes not yet returned
	outBuf  []byte
	n       int64
	err     error // sticky source error
	done    bool  // padding and MAC emitted
	sum     []byte
	srcDone bool
}

// EncryptAttachment returns a reader of the blob for plaintext under key
// (64 bytes, see NewAttachmentKey). It reads plaintext as it is read
// itself, holding at most a few chunks in memory.
func EncryptAttachment(plaintext io.Reader, key []byte) (*AttachmentEncrypter, error) {
	if len(key) != AttachmentKeySize {
		return nil, fmt.Errorf("encrypt attachment: %w, got %d", ErrAttachmentKey, len(key))
	}
	iv := make([]byte, attachmentIVSize)
	if _, err := rand.Read(iv); err != nil {
		return nil, fmt.Errorf("encrypt attachment: iv: %w", err)
	}
	return newAttachmentEncrypter(plaintext, key, iv)
}

func newAttachmentEncrypter(plaintext io.Reader, key, iv []byte) (*AttachmentEncrypter, error) {
	block, err := aes.NewCipher(key[:32])
	if err != nil {
		return nil, fmt.Errorf("encrypt attachment: %w", err)
	}
	e := &AttachmentEncrypter{
		src:    plaintext,
		cbc:    cipher.NewCBCEncrypter(block, iv),
		mac:    hmac.New(sha256.New, key[32:]),
		digest: sha256.New(),
		// Room for a carried partial block and a padding block, and the MAC.
		in:     make([]byte, 0, attachmentChunk+2*aes.BlockSize),
		outBuf: make([]byte, 0, attachmentChunk+2*aes.BlockSize+attachmentMACSize),
	}
	e.mac.Write(iv)
	e.out = append(e.outBuf[:0], iv...)
	e.digest.Write(iv)
	return e, nil
}

// Read implements io.Reader.
func (e *AttachmentEncrypter) Read(p []byte) (int, error) {
	for len(e.out) == 0 {
		if e.done {
			return 0, io.EOF
		}
		if e.err != nil {
			return 0, e.err
		}
		e.fill()
	}
	n := copy(p, e.out)
	e.out = e.out[n:]
	e.n += int64(n)
	return n, nil
}

// fill reads the next plaintext chunk and encrypts every full block of it;
// at the end of the plaintext it pads, encrypts the last block and appends
// the MAC.
func (e *AttachmentEncrypter) fill() {
	if !e.srcDone {
		start := len(e.in)
		buf := e.in[start : start+attachmentChunk]
		n, err := io.ReadFull(e.src, buf)
		e.in = e.in[:start+n]
		switch {
		case err == io.EOF || err == io.ErrUnexpectedEOF:
			e.srcDone = true
		case err != nil:
			e.err = fmt.Errorf("encrypt attachment: read plaintext: %w", err)
			return
		}
	}
	full := len(e.in) / aes.BlockSize * aes.BlockSize
	if e.srcDone {
		pad := aes.BlockSize - len(e.in)%aes.BlockSize
		for range pad {
			e.in = append(e.in, byte(pad))
		}
		full = len(e.in)
	}
	out := e.outBuf[:full]
	e.cbc.CryptBlocks(out, e.in[:full])
	e.mac.Write(out)
	if e.srcDone {
		out = e.mac.Sum(out)
		e.done = true
	}
	e.digest.Write(out)
	e.out = out
	rest := copy(e.in, e.in[full:])
	e.in = e.in[:rest]
	if e.done {
		e.sum = e.digest.Sum(nil)
	}
}

// Digest returns the SHA-256 digest of the blob, once Read has returned
// io.EOF.
func (e *AttachmentEncrypter) Digest() ([]byte, error) {
	if !e.done || len(e.out) != 0 {
		return nil, errors.New("attachment digest: blob not fully read")
	}
	return append([]byte(nil), e.sum...), nil
}

// Size returns the blob bytes returned by Read so far.
func (e *AttachmentEncrypter) Size() int64 { return e.n }

// DecryptAttachment verifies the blob src[0:size] against key and digest
// and only then decrypts it into dst, returning the plaintext length. It
// reads src twice: the first pass checks the MAC, the digest and the
// padding and writes nothing; the second decrypts (and checks the MAC
// again, in case src changed in between, reporting ErrBadMAC at the end).
// Errors: ErrAttachmentKey, ErrTruncated (size impossible for the format),
// ErrBadMAC, ErrBadDigest, ErrBadPadding, or the reader's/writer's error.
func DecryptAttachment(dst io.Writer, src io.ReaderAt, size int64, key, digest []byte) (int64, error) {
	if len(key) != AttachmentKeySize {
		return 0, fmt.Errorf("decrypt attachment: %w, got %d", ErrAttachmentKey, len(key))
	}
	if len(digest) != AttachmentDigestSize {
		return 0, fmt.Errorf("decrypt attachment: %w: digest must be %d bytes, got %d", ErrBadDigest, AttachmentDigestSize, len(digest))
	}
	if size < minAttachmentBlob || (size-attachmentIVSize-attachmentMACSize)%aes.BlockSize != 0 {
		return 0, fmt.Errorf("decrypt attachment: %w: %d bytes", ErrTruncated, size)
	}
	block, err := aes.NewCipher(key[:32])
	if err != nil {
		return 0, fmt.Errorf("decrypt attachment: %w", err)
	}
	bodyEnd := size - attachmentMACSize
	buf := make([]byte, attachmentChunk)

	// Pass 1: MAC and digest, nothing written.
	mac := hmac.New(sha256.New, key[32:])
	sum := sha256.New()
	if err := readRange(src, 0, bodyEnd, buf, func(b []byte) { mac.Write(b); sum.Write(b) }); err != nil {
		return 0, fmt.Errorf("decrypt attachment: %w", err)
	}
	theirMAC := make([]byte, attachmentMACSize)
	if err := readFullAt(src, theirMAC, bodyEnd); err != nil {
		return 0, fmt.Errorf("decrypt attachment: %w", err)
	}
	sum.Write(theirMAC)
	ourMAC := mac.Sum(nil)
	if !hmac.Equal(ourMAC, theirMAC) {
		return 0, fmt.Errorf("decrypt attachment: %w", ErrBadMAC)
	}
	if subtle.ConstantTimeCompare(sum.Sum(nil), digest) != 1 {
		return 0, fmt.Errorf("decrypt attachment: %w", ErrBadDigest)
	}

	// Padding: decrypt the last block alone (CBC needs only the block
	// before it) so a bad padding is refused before any plaintext is out.
	var last [2 * aes.BlockSize]byte
	if err := readFullAt(src, last[:], bodyEnd-2*aes.BlockSize); err != nil {
		return 0, fmt.Errorf("decrypt attachment: %w", err)
	}
	cipher.NewCBCDecrypter(block, last[:aes.BlockSize]).CryptBlocks(last[aes.BlockSize:], last[aes.BlockSize:])
	pad, ok := pkcs7(last[aes.BlockSize:])
	if !ok {
		return 0, fmt.Errorf("decrypt attachment: %w", ErrBadPadding)
	}

	// Pass 2: decrypt, holding back the padding.
	iv := make([]byte, attachmentIVSize)
	if err := readFullAt(src, iv, 0); err != nil {
		return 0, fmt.Errorf("decrypt attachment: %w", err)
	}
	mac.Reset()
	mac.Write(iv)
	cbc := cipher.NewCBCDecrypter(block, iv)
	plainLen := bodyEnd - attachmentIVSize - int64(pad)
	var written int64
	var werr error
	err = readRange(src, attachmentIVSize, bodyEnd, buf, func(b []byte) {
		mac.Write(b)
		if werr != nil {
			return
		}
		cbc.CryptBlocks(b, b)
		if rest := plainLen - written; int64(len(b)) > rest {
			b = b[:rest]
		}
		n, err := dst.Write(b)
		written += int64(n)
		if err != nil {
			werr = fmt.Errorf("decrypt attachment: write plaintext: %w", err)
		}
	})
	if werr != nil {
		return written, werr
	}
	if err != nil {
		return written, fmt.Errorf("decrypt attachment: %w", err)
	}
	if !hmac.Equal(mac.Sum(nil), ourMAC) {
		return written, fmt.Errorf("decrypt attachment: %w: blob changed between passes", ErrBadMAC)
	}
	return written, nil
}

// readRange streams src[from:to] through fn in chunks of len(buf) bytes
// (a multiple of the block size, so CBC can work in place).
func readRange(src io.ReaderAt, from, to int64, buf []byte, fn func([]byte)) error {
	for off := from; off < to; {
		n := int64(len(buf))
		if to-off < n {
			n = to - off
		}
		if err := readFullAt(src, buf[:n], off); err != nil {
			return err
		}
		fn(buf[:n])
		off += n
	}
	return nil
}

func readFullAt(src io.ReaderAt, b []byte, off int64) error {
	n, err := src.ReadAt(b, off)
	if n == len(b) {
		return nil
	}
	if err == nil || err == io.EOF {
		return fmt.Errorf("%w: blob ends at %d, short of %d", ErrTruncated, off+int64(n), off+int64(len(b)))
	}
	return fmt.Errorf("read blob: %w", err)
}

// pkcs7 returns the padding length of the final block, checking every pad
// byte (in constant time over the block).
func pkcs7(block []byte) (int, bool) {
	pad := int(block[len(block)-1])
	good := subtle.ConstantTimeLessOrEq(1, pad) & subtle.ConstantTimeLessOrEq(pad, len(block))
	for i := range block {
		inPad := subtle.ConstantTimeLessOrEq(len(block)-pad, i)
		eq := subtle.ConstantTimeByteEq(block[i], byte(pad))
		good &= eq | (inPad ^ 1)
	}
	return pad, good == 1
}
