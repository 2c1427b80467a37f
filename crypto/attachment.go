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
	"runtime"
	"sync"
)

// Attachments use Signal's format: a random 64-byte key (AES-256 key ‖
// HMAC-SHA256 key); the blob is IV (16) ‖ AES-256-CBC ciphertext with PKCS#7
// padding ‖ HMAC-SHA256(IV ‖ ciphertext) (32, untruncated); the digest is
// SHA-256 of the whole blob and travels with the key inside the E2E message,
// so the storage server cannot swap the blob.
//
// Every direction streams with constant memory (a few 256 KiB chunks) and
// spreads its work over two goroutines, because the per-byte cost is all
// CPU: AES-CBC encryption is one sequential chain of blocks, and the blob
// needs two SHA-256 passes (MAC and digest). Encryption runs the cipher on
// a goroutine of its own while the reader's goroutine hashes; decryption
// hashes on one goroutine while another decrypts.
//
// Decryption never releases unverified plaintext. Two ways:
//
//   - AttachmentDecrypter takes the blob as it downloads (io.Writer) and
//     decrypts into a destination the caller keeps private, e.g. a
//     temporary file; only when Finish has checked the MAC, the digest and
//     the padding may the caller publish it (rename it into place). One
//     pass over the bytes.
//   - DecryptAttachment reads a stored blob (io.ReaderAt) twice: once to
//     check MAC, digest and padding, writing nothing, then to decrypt into
//     any writer, checking the MAC again in case the source changed.

const (
	// AttachmentKeySize is the random key: 32 bytes AES-256 ‖ 32 bytes HMAC.
	AttachmentKeySize = 64
	// AttachmentDigestSize is SHA-256 of the blob.
	AttachmentDigestSize = sha256.Size
	attachmentIVSize     = aes.BlockSize
	attachmentMACSize    = sha256.Size
	// attachmentChunk is the unit of streaming work: large enough that
	// per-chunk costs (channel hand-offs, syscalls) vanish, small enough
	// that a few chunks in flight stay in the L2 cache.
	attachmentChunk = 256 << 10
	// pipeChunks bounds the chunks in flight in a pipeline (memory:
	// pipeChunks × attachmentChunk per transfer).
	pipeChunks = 3
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
//
// The first Read starts a goroutine that reads the plaintext and runs
// AES-CBC up to pipeChunks chunks ahead; Read itself computes the MAC and
// the digest over the ciphertext it returns. The goroutine ends at the end
// of the plaintext, at a plaintext read error, or at Close. An encrypter
// is for one goroutine at a time.
type AttachmentEncrypter struct {
	p      *encPipe
	mac    hash.Hash
	digest hash.Hash

	iv      [attachmentIVSize]byte
	tag     [attachmentMACSize]byte
	cur     *encChunk // chunk being returned, recycled when drained
	out     []byte    // bytes not yet returned
	n       int64
	started bool
	tail    bool  // the MAC is in out: the blob ends after it
	done    bool  // everything returned
	err     error // sticky
	sum     []byte
}

// encChunk is ciphertext the cipher goroutine produced.
type encChunk struct {
	buf  []byte
	last bool  // the final chunk: padding included
	err  error // a plaintext read error instead of data
}

// encPipe is the cipher goroutine's state. It holds no reference to the
// AttachmentEncrypter, so an abandoned encrypter is collected and its
// cleanup stops the goroutine.
type encPipe struct {
	src    io.Reader
	cbc    cipher.BlockMode
	free   chan *encChunk
	ready  chan *encChunk
	stop   chan struct{}
	once   sync.Once
	exited chan struct{}
}

var errEncrypterClosed = errors.New("encrypt attachment: encrypter closed")

// EncryptAttachment returns a reader of the blob for plaintext under key
// (64 bytes, see NewAttachmentKey). It reads plaintext as it is read
// itself, holding at most a few chunks in memory. Close it if the blob is
// abandoned before io.EOF.
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
	p := &encPipe{
		src:    plaintext,
		cbc:    cipher.NewCBCEncrypter(block, iv),
		free:   make(chan *encChunk, pipeChunks),
		ready:  make(chan *encChunk, pipeChunks),
		stop:   make(chan struct{}),
		exited: make(chan struct{}),
	}
	e := &AttachmentEncrypter{
		p:      p,
		mac:    hmac.New(sha256.New, key[32:]),
		digest: sha256.New(),
	}
	copy(e.iv[:], iv)
	e.mac.Write(iv)
	e.digest.Write(iv)
	e.out = e.iv[:]
	runtime.AddCleanup(e, (*encPipe).halt, p)
	return e, nil
}

// Read implements io.Reader.
func (e *AttachmentEncrypter) Read(b []byte) (int, error) {
	for len(e.out) == 0 {
		if e.done {
			return 0, io.EOF
		}
		if e.err != nil {
			return 0, e.err
		}
		e.next()
	}
	n := copy(b, e.out)
	e.out = e.out[n:]
	e.n += int64(n)
	return n, nil
}

// next makes the next bytes of the blob ready in e.out.
func (e *AttachmentEncrypter) next() {
	if e.tail {
		e.done = true
		return
	}
	if c := e.cur; c != nil {
		e.cur = nil
		if c.last {
			// The MAC ends the blob; the digest covers it too.
			tag := e.mac.Sum(e.tag[:0])
			e.digest.Write(tag)
			e.sum = e.digest.Sum(nil)
			e.out, e.tail = tag, true
			return
		}
		e.p.free <- c // never blocks: at most pipeChunks chunks exist
	}
	if !e.started {
		e.started = true
		for range pipeChunks {
			e.p.free <- &encChunk{buf: make([]byte, 0, attachmentChunk+aes.BlockSize)}
		}
		go e.p.run()
	}
	var c *encChunk
	select {
	case c = <-e.p.ready:
	case <-e.p.stop:
		e.err = errEncrypterClosed
		return
	}
	if c.err != nil {
		e.err = c.err
		return
	}
	e.mac.Write(c.buf)
	e.digest.Write(c.buf)
	e.cur, e.out = c, c.buf
}

// run reads plaintext chunk by chunk and encrypts every full block; at the
// end of the plaintext it pads and encrypts the last block.
func (p *encPipe) run() {
	defer close(p.exited)
	// Plaintext read but not yet encrypted: less than a block carried over
	// from the last chunk, then up to a chunk, then room for the padding.
	in := make([]byte, 0, attachmentChunk+aes.BlockSize)
	for {
		var c *encChunk
		select {
		case c = <-p.free:
		case <-p.stop:
			return
		}
		start := len(in)
		n, err := io.ReadFull(p.src, in[start:attachmentChunk])
		in = in[:start+n]
		eof := err == io.EOF || err == io.ErrUnexpectedEOF
		if err != nil && !eof {
			c.err = fmt.Errorf("encrypt attachment: read plaintext: %w", err)
			p.send(c)
			return
		}
		full := len(in) / aes.BlockSize * aes.BlockSize
		if eof {
			pad := aes.BlockSize - len(in)%aes.BlockSize
			for range pad {
				in = append(in, byte(pad))
			}
			full = len(in)
		}
		c.buf = c.buf[:full]
		p.cbc.CryptBlocks(c.buf, in[:full])
		c.last = eof
		in = in[:copy(in, in[full:])]
		if !p.send(c) || eof {
			return
		}
	}
}

func (p *encPipe) send(c *encChunk) bool {
	select {
	case p.ready <- c:
		return true
	case <-p.stop:
		return false
	}
}

// halt tells the cipher goroutine to stop; it does not wait.
func (p *encPipe) halt() { p.once.Do(func() { close(p.stop) }) }

// Close stops the cipher goroutine and waits for it, which includes a
// plaintext read in progress; after Close the plaintext reader is no
// longer used. Close after io.EOF is a no-op; Read after Close fails.
func (e *AttachmentEncrypter) Close() error {
	if e.tail {
		return nil // the goroutine has ended
	}
	e.p.halt()
	if e.started {
		<-e.p.exited
	}
	if e.err == nil {
		e.err = errEncrypterClosed
	}
	e.out = nil
	return nil
}

// Digest returns the SHA-256 digest of the blob, once Read has returned
// io.EOF.
func (e *AttachmentEncrypter) Digest() ([]byte, error) {
	if !e.done && !(e.tail && len(e.out) == 0) {
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
// again, in case src changed in between, reporting ErrBadMAC before the
// last block). Each pass runs its two computations on two goroutines.
// Errors: ErrAttachmentKey, ErrTruncated (size impossible for the format),
// ErrBadMAC, ErrBadDigest, ErrBadPadding, or the reader's/writer's error.
//
// For a blob that is still arriving, AttachmentDecrypter needs one pass.
func DecryptAttachment(dst io.Writer, src io.ReaderAt, size int64, key, digest []byte) (int64, error) {
	if err := checkDecryptArgs(size, key, digest); err != nil {
		return 0, err
	}
	block, err := aes.NewCipher(key[:32])
	if err != nil {
		return 0, fmt.Errorf("decrypt attachment: %w", err)
	}
	bodyEnd := size - attachmentMACSize

	// Pass 1: MAC and digest, nothing written.
	v := &blobHash{macEnd: bodyEnd, mac: hmac.New(sha256.New, key[32:])}
	sum := sha256.New()
	p := newChunkPipe(v.writeMAC, func(c *attChunk) { sum.Write(c.buf) })
	err = p.feedAt(src, size)
	p.finish()
	if err != nil {
		return 0, fmt.Errorf("decrypt attachment: %w", err)
	}
	if !hmac.Equal(v.mac.Sum(nil), v.theirMAC[:]) {
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
	if _, ok := pkcs7(last[aes.BlockSize:]); !ok {
		return 0, fmt.Errorf("decrypt attachment: %w", ErrBadPadding)
	}

	// Pass 2: decrypt while the MAC is checked again.
	d := newDecrypter(dst, size, block, key[32:], nil)
	if err := d.feedAt(src); err != nil {
		d.abort()
		return d.written, fmt.Errorf("decrypt attachment: %w", err)
	}
	n, err := d.finish()
	if errors.Is(err, ErrBadMAC) {
		return d.written, fmt.Errorf("decrypt attachment: %w: blob changed between passes", ErrBadMAC)
	}
	if err != nil {
		return d.written, err
	}
	return n, nil
}

func checkDecryptArgs(size int64, key, digest []byte) error {
	if len(key) != AttachmentKeySize {
		return fmt.Errorf("decrypt attachment: %w, got %d", ErrAttachmentKey, len(key))
	}
	if len(digest) != AttachmentDigestSize {
		return fmt.Errorf("decrypt attachment: %w: digest must be %d bytes, got %d", ErrBadDigest, AttachmentDigestSize, len(digest))
	}
	if size < minAttachmentBlob || (size-attachmentIVSize-attachmentMACSize)%aes.BlockSize != 0 {
		return fmt.Errorf("decrypt attachment: %w: %d bytes", ErrTruncated, size)
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
