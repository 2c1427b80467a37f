package crypto

import (
	"crypto/aes"
	"crypto/cipher"
	"crypto/hmac"
	"crypto/sha256"
	"crypto/subtle"
	"errors"
	"fmt"
	"hash"
	"io"
	"runtime"
	"sync"
	"sync/atomic"
)

// attChunk is up to attachmentChunk bytes of a blob starting at offset
// off, handed to every stage of a chunkPipe.
type attChunk struct {
	buf  []byte
	off  int64
	refs atomic.Int32 // stages yet to see it
}

// chunkPipe runs stages, each on a goroutine of its own, over a blob's
// chunks in order: every stage sees every chunk, and a chunk is reused
// once all have seen it. At most pipeChunks chunks exist, so memory is
// bounded whatever the blob's size and whichever stage is slowest.
type chunkPipe struct {
	free    chan *attChunk
	queues  []chan *attChunk
	made    int
	wg      sync.WaitGroup
	once    sync.Once
	aborted atomic.Bool
}

func newChunkPipe(stages ...func(*attChunk)) *chunkPipe {
	return newChunkPipeEnds(stages, nil)
}

// newChunkPipeEnds is newChunkPipe where stage i calls ends[i] (if not
// nil) once it has seen its last chunk.
func newChunkPipeEnds(stages []func(*attChunk), ends []func()) *chunkPipe {
	p := &chunkPipe{free: make(chan *attChunk, pipeChunks)}
	for i, st := range stages {
		q := make(chan *attChunk, pipeChunks)
		p.queues = append(p.queues, q)
		var end func()
		if i < len(ends) {
			end = ends[i]
		}
		p.wg.Add(1)
		go p.stage(q, st, end)
	}
	return p
}

func (p *chunkPipe) stage(q chan *attChunk, fn func(*attChunk), end func()) {
	defer p.wg.Done()
	if end != nil {
		defer end()
	}
	for c := range q {
		if !p.aborted.Load() {
			fn(c)
		}
		if c.refs.Add(-1) == 0 {
			p.free <- c // never blocks: at most pipeChunks chunks exist
		}
	}
}

// get returns an empty chunk for the bytes from off, waiting for one to
// come back when pipeChunks are in flight.
func (p *chunkPipe) get(off int64) *attChunk {
	var c *attChunk
	select {
	case c = <-p.free:
	default:
		if p.made < pipeChunks {
			p.made++
			c = &attChunk{buf: make([]byte, 0, attachmentChunk)}
		} else {
			c = <-p.free
		}
	}
	c.buf, c.off = c.buf[:0], off
	return c
}

func (p *chunkPipe) send(c *attChunk) {
	c.refs.Store(int32(len(p.queues)))
	for _, q := range p.queues {
		q <- c
	}
}

// feedAt sends src[0:size] through the pipe, reading straight into the
// chunks.
func (p *chunkPipe) feedAt(src io.ReaderAt, size int64) error {
	for off := int64(0); off < size; {
		c := p.get(off)
		c.buf = c.buf[:min(attachmentChunk, size-off)]
		if err := readFullAt(src, c.buf, off); err != nil {
			return err
		}
		p.send(c)
		off += int64(len(c.buf))
	}
	return nil
}

// close lets the stages finish the chunks sent and end; it does not wait.
func (p *chunkPipe) close() {
	p.once.Do(func() {
		for _, q := range p.queues {
			close(q)
		}
	})
}

// finish closes the pipe and waits for the stages.
func (p *chunkPipe) finish() {
	p.close()
	p.wg.Wait()
}

// abort makes the stages skip what is left and waits for them.
func (p *chunkPipe) abort() {
	p.aborted.Store(true)
	p.finish()
}

// halt is abort without the wait (for a cleanup, which must not block).
func (p *chunkPipe) halt() {
	p.aborted.Store(true)
	p.close()
}

// blobHash is the MAC stage: HMAC over the blob up to macEnd, keeping
// the blob's own MAC (the bytes from macEnd) aside; and, if sum is set,
// SHA-256 over the whole blob.
type blobHash struct {
	macEnd   int64
	mac      hash.Hash
	sum      hash.Hash
	theirMAC [attachmentMACSize]byte
}

func (h *blobHash) writeMAC(c *attChunk) {
	lo, hi := c.off, c.off+int64(len(c.buf))
	if lo < h.macEnd {
		h.mac.Write(c.buf[:min(hi, h.macEnd)-lo])
	}
	if hi > h.macEnd {
		from := max(lo, h.macEnd)
		copy(h.theirMAC[from-h.macEnd:], c.buf[from-lo:])
	}
}

func (h *blobHash) write(c *attChunk) {
	h.writeMAC(c)
	if h.sum != nil {
		h.sum.Write(c.buf)
	}
}

// decrypter is AttachmentDecrypter's state. Three goroutines do the
// work: the pipe's two stages (hashing; decrypting) and a writer of the
// decrypted chunks to dst, which for a file costs as much as the
// decryption itself. Only the goroutine that feeds the decrypter touches
// the fields above the line.
type decrypter struct {
	size   int64
	digest []byte // expected digest; nil: not checked (DecryptAttachment's pass 2)
	pipe   *chunkPipe
	cur    *attChunk
	n      int64 // blob bytes taken
	err    error // sticky
	done   bool

	// --- stages ---
	hash    blobHash
	dst     io.Writer
	block   cipher.Block
	cbc     cipher.BlockMode
	last    [aes.BlockSize]byte // the last plaintext block, held back: it has the padding
	outFree chan []byte         // plaintext buffers, at most outBuffers
	outMade int
	outQ    chan []byte // plaintext for the writer
	wrote   chan struct{}
	written int64
	werr    error
	failed  atomic.Bool // werr is set
}

// outBuffers is the number of plaintext chunks between the decryption
// and the writer.
const outBuffers = 2

func newDecrypter(dst io.Writer, size int64, block cipher.Block, macKey, digest []byte) *decrypter {
	d := &decrypter{
		size:    size,
		digest:  digest,
		hash:    blobHash{macEnd: size - attachmentMACSize, mac: hmac.New(sha256.New, macKey)},
		dst:     dst,
		block:   block,
		outFree: make(chan []byte, outBuffers),
		outQ:    make(chan []byte, outBuffers),
		wrote:   make(chan struct{}),
	}
	if digest != nil {
		d.hash.sum = sha256.New()
	}
	d.pipe = newChunkPipeEnds([]func(*attChunk){d.hash.write, d.decrypt}, []func(){nil, func() { close(d.outQ) }})
	go d.writeOut()
	return d
}

// writeOut is the writer: decrypted chunks to dst, in order, until the
// first error.
func (d *decrypter) writeOut() {
	defer close(d.wrote)
	for b := range d.outQ {
		if !d.failed.Load() && !d.pipe.aborted.Load() {
			n, err := d.dst.Write(b)
			d.written += int64(n)
			if err == nil && n < len(b) {
				err = io.ErrShortWrite
			}
			if err != nil {
				d.werr = fmt.Errorf("decrypt attachment: write plaintext: %w", err)
				d.failed.Store(true)
			}
		}
		d.outFree <- b[:0] // never blocks: at most outBuffers exist
	}
}

// decrypt is the decryption stage: CBC over the ciphertext body, written
// to dst except for the last block.
func (d *decrypter) decrypt(c *attChunk) {
	if d.failed.Load() {
		return
	}
	lo, hi := c.off, c.off+int64(len(c.buf))
	if lo == 0 {
		// Every chunk but the last is a full attachmentChunk, and the
		// blob is at least minAttachmentBlob: the IV is in this chunk.
		d.cbc = cipher.NewCBCDecrypter(d.block, c.buf[:attachmentIVSize])
	}
	bodyEnd := d.size - attachmentMACSize
	from, to := max(lo, attachmentIVSize), min(hi, bodyEnd)
	if from >= to {
		return
	}
	// Chunks start at multiples of attachmentChunk and the body is whole
	// blocks from the IV on, so [from, to) is whole blocks.
	var out []byte
	select {
	case out = <-d.outFree:
	default:
		if d.outMade < outBuffers {
			d.outMade++
			out = make([]byte, 0, attachmentChunk)
		} else {
			out = <-d.outFree
		}
	}
	out = out[:to-from]
	d.cbc.CryptBlocks(out, c.buf[from-lo:to-lo])
	if to == bodyEnd {
		copy(d.last[:], out[len(out)-aes.BlockSize:])
		out = out[:len(out)-aes.BlockSize]
	}
	d.outQ <- out // the writer recycles it, even if empty
}

func (d *decrypter) write(b []byte) (int, error) {
	if d.err != nil {
		return 0, d.err
	}
	if d.failed.Load() {
		d.err = d.werr
		return 0, d.err
	}
	if int64(len(b)) > d.size-d.n {
		d.err = fmt.Errorf("decrypt attachment: %w: the blob is longer than %d bytes", ErrTruncated, d.size)
		return 0, d.err
	}
	n := len(b)
	for len(b) > 0 {
		if d.cur == nil {
			d.cur = d.pipe.get(d.n)
		}
		k := min(attachmentChunk-len(d.cur.buf), len(b))
		d.cur.buf = append(d.cur.buf, b[:k]...)
		b = b[k:]
		d.n += int64(k)
		if len(d.cur.buf) == attachmentChunk || d.n == d.size {
			d.pipe.send(d.cur)
			d.cur = nil
		}
	}
	return n, nil
}

// feedAt takes the whole blob from src.
func (d *decrypter) feedAt(src io.ReaderAt) error {
	if d.n != 0 {
		return errors.New("decrypt attachment: blob already started")
	}
	if err := d.pipe.feedAt(src, d.size); err != nil {
		return err
	}
	d.n = d.size
	return nil
}

// finish waits for the stages and checks, in order, the length, the MAC,
// the digest and the padding; only then does the last block's plaintext
// go to dst.
func (d *decrypter) finish() (int64, error) {
	if d.done {
		return 0, errors.New("decrypt attachment: already finished")
	}
	d.done = true
	if d.err != nil {
		d.stop()
		return 0, d.err
	}
	if d.n != d.size {
		d.stop()
		return 0, fmt.Errorf("decrypt attachment: %w: blob ends at %d, short of %d", ErrTruncated, d.n, d.size)
	}
	d.pipe.finish()
	<-d.wrote
	if d.werr != nil {
		return 0, d.werr
	}
	if !hmac.Equal(d.hash.mac.Sum(nil), d.hash.theirMAC[:]) {
		return 0, fmt.Errorf("decrypt attachment: %w", ErrBadMAC)
	}
	if d.hash.sum != nil && subtle.ConstantTimeCompare(d.hash.sum.Sum(nil), d.digest) != 1 {
		return 0, fmt.Errorf("decrypt attachment: %w", ErrBadDigest)
	}
	pad, ok := pkcs7(d.last[:])
	if !ok {
		return 0, fmt.Errorf("decrypt attachment: %w", ErrBadPadding)
	}
	if keep := d.last[:aes.BlockSize-pad]; len(keep) > 0 {
		n, err := d.dst.Write(keep)
		d.written += int64(n)
		if err == nil && n < len(keep) {
			err = io.ErrShortWrite
		}
		if err != nil {
			return 0, fmt.Errorf("decrypt attachment: write plaintext: %w", err)
		}
	}
	return d.written, nil
}

// stop abandons the work in flight and waits for every goroutine.
func (d *decrypter) stop() {
	d.pipe.abort()
	<-d.wrote
}

func (d *decrypter) abort() {
	if !d.done {
		d.done = true
		d.stop()
	}
}

// AttachmentDecrypter decrypts a blob in one pass as it arrives: Write it
// the blob's bytes in order (e.g. as the download's destination), then
// call Finish. It hashes (MAC and digest) on one goroutine and decrypts
// into dst on another, holding at most a few chunks.
//
// dst receives plaintext BEFORE the blob is verified. It must be private
// to the caller (e.g. a temporary file no one else opens) until Finish
// returns nil, and be discarded when Finish returns an error or is never
// called: only then is the plaintext authentic. The last block (which
// holds the padding) reaches dst only after MAC, digest and padding check
// out, so an unverified dst is never the complete plaintext.
//
// Use it from one goroutine. Abandon one with Close.
type AttachmentDecrypter struct {
	d *decrypter
}

// NewAttachmentDecrypter returns a decrypter of a size-byte blob under key
// (64 bytes) whose SHA-256 must be digest, writing the plaintext to dst.
// Errors: ErrAttachmentKey, ErrBadDigest (digest of the wrong length) and
// ErrTruncated (size impossible for the format).
func NewAttachmentDecrypter(dst io.Writer, size int64, key, digest []byte) (*AttachmentDecrypter, error) {
	if err := checkDecryptArgs(size, key, digest); err != nil {
		return nil, err
	}
	block, err := aes.NewCipher(key[:32])
	if err != nil {
		return nil, fmt.Errorf("decrypt attachment: %w", err)
	}
	d := newDecrypter(dst, size, block, key[32:], append([]byte(nil), digest...))
	ad := &AttachmentDecrypter{d: d}
	// An abandoned decrypter must not keep its goroutines and buffers.
	runtime.AddCleanup(ad, (*chunkPipe).halt, d.pipe)
	return ad, nil
}

// Write takes the next bytes of the blob. It fails with ErrTruncated for
// bytes beyond the blob's size, and with dst's error once a write of
// plaintext failed; either error is sticky. dst is written on another
// goroutine, so its failure may surface only in a later Write, or only in
// Finish, which always reports it.
func (a *AttachmentDecrypter) Write(b []byte) (int, error) {
	n, err := a.d.write(b)
	// The cleanup that stops the pipe is tied to a, not to a.d: keep a
	// alive until its state is done with, or the pipe could be stopped
	// mid-call.
	runtime.KeepAlive(a)
	return n, err
}

// Written returns the blob bytes taken so far (for resuming a download).
func (a *AttachmentDecrypter) Written() int64 { return a.d.n }

// Finish waits for the work in flight, then verifies: the whole blob
// arrived (else ErrTruncated), the MAC (ErrBadMAC), the digest
// (ErrBadDigest) and the padding (ErrBadPadding). Only on success does it
// write the last plaintext bytes to dst and return the plaintext length;
// on any error the plaintext length is 0 and dst must be discarded.
func (a *AttachmentDecrypter) Finish() (int64, error) {
	n, err := a.d.finish()
	runtime.KeepAlive(a)
	return n, err
}

// Close abandons the decryption, stopping its goroutines; nothing more
// is written to dst after it returns. Close after Finish is a no-op.
func (a *AttachmentDecrypter) Close() error {
	a.d.abort()
	runtime.KeepAlive(a)
	return nil
}
