package crypto

import (
	"bytes"
	"crypto/sha256"
	"errors"
	"io"
	"runtime"
	"testing"
	"time"
)

// streamDecrypt feeds blob to a new AttachmentDecrypter in pieces of
// piece bytes and returns what dst received and Finish's answer.
func streamDecrypt(t *testing.T, blob []byte, size int64, key, digest []byte, piece int) ([]byte, int64, error) {
	t.Helper()
	var dst bytes.Buffer
	d, err := NewAttachmentDecrypter(&dst, size, key, digest)
	if err != nil {
		return nil, 0, err
	}
	for rest := blob; len(rest) > 0; {
		k := min(len(rest), piece)
		n, err := d.Write(rest[:k])
		if err != nil {
			d.Close()
			return dst.Bytes(), 0, err
		}
		if n != k {
			t.Fatalf("Write took %d of %d bytes without an error", n, k)
		}
		rest = rest[k:]
	}
	n, err := d.Finish()
	return dst.Bytes(), n, err
}

// The one-pass decrypter returns the plaintext for blobs around every
// chunk and block boundary, whatever the write sizes.
func TestAttachmentDecrypterRoundTrip(t *testing.T) {
	key := testKey(t)
	iv := bytes.Repeat([]byte{9}, 16)
	for _, n := range []int{0, 1, 15, 16, 17, 1000,
		attachmentChunk - 64, attachmentChunk - 48, attachmentChunk - 33, attachmentChunk - 32, attachmentChunk - 17, attachmentChunk,
		2*attachmentChunk - 48, 3*attachmentChunk + 5, (pipeChunks + 2) * attachmentChunk} {
		pt := make([]byte, n)
		for i := range pt {
			pt[i] = byte(i*7 + n)
		}
		// The reference blob, built in one piece by the standard library.
		blob, digest := referenceBlob(key, iv, pt, pkcs7Pad(n))
		for _, piece := range []int{1 << 30, 128 << 10, 4093, 16} {
			if piece < 4093 && n > 4*attachmentChunk {
				continue // byte-sized writes of a large blob: slow, nothing new
			}
			got, m, err := streamDecrypt(t, blob, int64(len(blob)), key, digest, piece)
			if err != nil {
				t.Fatalf("%d bytes in pieces of %d: %v", n, piece, err)
			}
			if m != int64(n) || !bytes.Equal(got, pt) {
				t.Fatalf("%d bytes in pieces of %d: got %d bytes (reported %d), differing", n, piece, len(got), m)
			}
		}
	}
}

// streamBlob encrypts n bytes and returns the blob, its digest and the
// plaintext.
func streamBlob(t *testing.T, key []byte, n int) (blob, digest, pt []byte) {
	t.Helper()
	pt = make([]byte, n)
	for i := range pt {
		pt[i] = byte(i)
	}
	e, err := EncryptAttachment(bytes.NewReader(pt), key)
	if err != nil {
		t.Fatal(err)
	}
	blob, err = io.ReadAll(e)
	if err != nil {
		t.Fatal(err)
	}
	digest, err = e.Digest()
	if err != nil {
		t.Fatal(err)
	}
	return blob, digest, pt
}

// Nothing that fails verification is the plaintext: Finish refuses it
// with the precise error, and the last block (and so the complete
// plaintext) never reaches dst.
func TestAttachmentDecrypterRefuses(t *testing.T) {
	key := testKey(t)
	blob, digest, pt := streamBlob(t, key, 2*attachmentChunk+100)
	size := int64(len(blob))
	check := func(name string, got []byte, n int64, err, want error) {
		t.Helper()
		if !errors.Is(err, want) {
			t.Fatalf("%s: got %v, want %v", name, err, want)
		}
		if n != 0 {
			t.Fatalf("%s: Finish reported %d plaintext bytes with an error", name, n)
		}
		if len(got) >= len(pt) {
			t.Fatalf("%s: dst received %d bytes, the whole plaintext is %d", name, len(got), len(pt))
		}
	}
	for _, at := range []int{0, 15, 16, 100, attachmentChunk, len(blob) - 33, len(blob) - 32, len(blob) - 1} {
		bad := bytes.Clone(blob)
		bad[at] ^= 0x10
		got, n, err := streamDecrypt(t, bad, size, key, digest, 64<<10)
		check("flipped byte", got, n, err, ErrBadMAC)
	}
	badDigest := bytes.Clone(digest)
	badDigest[0] ^= 1
	got, n, err := streamDecrypt(t, blob, size, key, badDigest, 64<<10)
	check("wrong digest", got, n, err, ErrBadDigest)

	wrongKey := bytes.Clone(key)
	wrongKey[33] ^= 1
	got, n, err = streamDecrypt(t, blob, size, wrongKey, digest, 64<<10)
	check("wrong MAC key", got, n, err, ErrBadMAC)

	// Short: Finish before the end.
	got, n, err = streamDecrypt(t, blob[:len(blob)-16], size, key, digest, 64<<10)
	check("truncated", got, n, err, ErrTruncated)
	// Long: a byte beyond the size is refused by Write.
	got, n, err = streamDecrypt(t, append(bytes.Clone(blob), 0), size, key, digest, 1<<30)
	check("extended", got, n, err, ErrTruncated)

	// Sizes the format cannot have, bad keys and digests.
	if _, err := NewAttachmentDecrypter(io.Discard, 63, key, digest); !errors.Is(err, ErrTruncated) {
		t.Fatalf("size 63: %v", err)
	}
	if _, err := NewAttachmentDecrypter(io.Discard, size+1, key, digest); !errors.Is(err, ErrTruncated) {
		t.Fatalf("unaligned size: %v", err)
	}
	if _, err := NewAttachmentDecrypter(io.Discard, size, key[:32], digest); !errors.Is(err, ErrAttachmentKey) {
		t.Fatalf("short key: %v", err)
	}
	if _, err := NewAttachmentDecrypter(io.Discard, size, key, digest[:31]); !errors.Is(err, ErrBadDigest) {
		t.Fatalf("short digest: %v", err)
	}
}

// A correctly MACed blob with bad padding is refused, and the block with
// the padding never reaches dst.
func TestAttachmentDecrypterBadPadding(t *testing.T) {
	key := testKey(t)
	iv := make([]byte, 16)
	pt := bytes.Repeat([]byte{1}, 20)
	blob, d := referenceBlob(key, iv, pt, bytes.Repeat([]byte{0}, 12))
	got, n, err := streamDecrypt(t, blob, int64(len(blob)), key, d, 7)
	if !errors.Is(err, ErrBadPadding) || n != 0 {
		t.Fatalf("got %d, %v; want ErrBadPadding", n, err)
	}
	if len(got) != 16 {
		t.Fatalf("dst received %d bytes before the refusal, want only the first block (16)", len(got))
	}
}

type errWriter struct{ after int }

func (w *errWriter) Write(p []byte) (int, error) {
	if w.after <= 0 {
		return 0, errors.New("disk full")
	}
	w.after -= len(p)
	return len(p), nil
}

// A failing destination stops the decryption with its error.
func TestAttachmentDecrypterWriteError(t *testing.T) {
	key := testKey(t)
	blob, digest, _ := streamBlob(t, key, (pipeChunks+4)*attachmentChunk)
	d, err := NewAttachmentDecrypter(&errWriter{after: attachmentChunk}, int64(len(blob)), key, digest)
	if err != nil {
		t.Fatal(err)
	}
	var werr error
	for rest := blob; len(rest) > 0 && werr == nil; {
		k := min(len(rest), 32<<10)
		_, werr = d.Write(rest[:k])
		rest = rest[k:]
	}
	// The writer fails on its own goroutine: a Write after the failure is
	// seen returns it, but the Writes may all be taken before that (the
	// stages skip their work once it has failed, so nothing blocks them).
	// Finish always reports it.
	if werr != nil && !bytes.Contains([]byte(werr.Error()), []byte("disk full")) {
		t.Fatalf("Write error %v, want none or the writer's", werr)
	}
	_, ferr := d.Finish()
	if ferr == nil || !bytes.Contains([]byte(ferr.Error()), []byte("disk full")) {
		t.Fatalf("Finish error %v, want the writer's", ferr)
	}
}

// goroutinesSettle waits until at most want goroutines run.
func goroutinesSettle(t *testing.T, want int) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for runtime.NumGoroutine() > want {
		if time.Now().After(deadline) {
			t.Fatalf("%d goroutines remain, want at most %d", runtime.NumGoroutine(), want)
		}
		runtime.GC()
		time.Sleep(10 * time.Millisecond)
	}
}

// Encrypters and decrypters abandoned halfway (closed, or just dropped)
// leave no goroutine behind.
func TestAttachmentPipelinesEnd(t *testing.T) {
	key := testKey(t)
	base := runtime.NumGoroutine()
	blob, digest, _ := streamBlob(t, key, 8*attachmentChunk)
	goroutinesSettle(t, base)

	half := make([]byte, 3*attachmentChunk)
	// Closed.
	e, _ := EncryptAttachment(&genReader{left: 1 << 30, state: 1}, key)
	if _, err := io.ReadFull(e, half); err != nil {
		t.Fatal(err)
	}
	e.Close()
	if _, err := e.Read(half); err == nil {
		t.Fatal("Read after Close succeeded")
	}
	d, _ := NewAttachmentDecrypter(io.Discard, int64(len(blob)), key, digest)
	d.Write(blob[:3*attachmentChunk])
	d.Close()
	if _, err := d.Finish(); err == nil {
		t.Fatal("Finish after Close succeeded")
	}
	goroutinesSettle(t, base)

	// Dropped: the cleanups stop them once they are garbage.
	func() {
		e, _ := EncryptAttachment(&genReader{left: 1 << 30, state: 1}, key)
		io.ReadFull(e, half)
		d, _ := NewAttachmentDecrypter(io.Discard, int64(len(blob)), key, digest)
		d.Write(blob[:3*attachmentChunk])
	}()
	goroutinesSettle(t, base)
}

// A plaintext read error ends the blob with that error.
func TestAttachmentEncryptReadError(t *testing.T) {
	key := testKey(t)
	boom := errors.New("boom")
	e, _ := EncryptAttachment(io.MultiReader(&genReader{left: 3*attachmentChunk + 5, state: 2}, iotestErr{boom}), key)
	_, err := io.Copy(io.Discard, e)
	if !errors.Is(err, boom) {
		t.Fatalf("got %v, want the plaintext's error", err)
	}
	if _, err := e.Digest(); err == nil {
		t.Fatal("digest of a failed blob")
	}
}

type iotestErr struct{ err error }

func (r iotestErr) Read([]byte) (int, error) { return 0, r.err }

// heapSampler is a writer that samples the live heap
// (runtime.MemStats.HeapAlloc after a collection) every 8 MiB written
// and keeps its largest growth over what it was at the start.
type heapSampler struct {
	base, peak uint64
	since      int
	samples    int
}

func newHeapSampler() *heapSampler {
	runtime.GC()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	return &heapSampler{base: ms.HeapAlloc}
}

func (h *heapSampler) Write(p []byte) (int, error) {
	h.since += len(p)
	if h.since >= 8<<20 {
		h.since = 0
		h.samples++
		runtime.GC() // what is live, not garbage awaiting collection
		var ms runtime.MemStats
		runtime.ReadMemStats(&ms)
		if ms.HeapAlloc > h.base {
			h.peak = max(h.peak, ms.HeapAlloc-h.base)
		}
	}
	return len(p), nil
}

// patternReader yields n bytes cycling through a pseudo-random table of
// prime length, so no two chunks of a blob are alike (a reordered or
// repeated chunk changes the hash) yet bytes are cheap to make.
type patternReader struct {
	table []byte
	off   int
	left  int64
}

func newPatternReader(n int64) *patternReader {
	table := make([]byte, 1_000_003)
	g := genReader{left: int64(len(table)), state: 77}
	g.Read(table)
	return &patternReader{table: table, left: n}
}

func (r *patternReader) Read(p []byte) (int, error) {
	if r.left == 0 {
		return 0, io.EOF
	}
	p = p[:min(int64(len(p)), r.left)]
	n := 0
	for n < len(p) {
		k := copy(p[n:], r.table[r.off:])
		r.off = (r.off + k) % len(r.table)
		n += k
	}
	r.left -= int64(n)
	return n, nil
}

// A 100 MiB attachment grows the live heap by a few chunks at most, in
// both directions: encrypted, then encrypted again (same IV, so the same
// blob) straight into the one-pass decrypter.
func TestAttachment100MiBFlatMemory(t *testing.T) {
	const size = 100 << 20
	const bound = 3 << 20 // both pipelines' chunks (2.25 MiB), the copy buffer, and slack
	key := testKey(t)
	iv := bytes.Repeat([]byte{0x33}, attachmentIVSize)

	src := newPatternReader(size)
	encHeap := newHeapSampler()
	e, _ := newAttachmentEncrypter(src, key, iv)
	if _, err := io.CopyBuffer(encHeap, struct{ io.Reader }{e}, make([]byte, 32<<10)); err != nil {
		t.Fatal(err)
	}
	digest, err := e.Digest()
	if err != nil {
		t.Fatal(err)
	}

	want := sha256.New()
	io.Copy(want, newPatternReader(size))
	got := sha256.New()
	e2, _ := newAttachmentEncrypter(newPatternReader(size), key, iv)
	decHeap := newHeapSampler()
	d, err := NewAttachmentDecrypter(io.MultiWriter(got, decHeap), EncryptedSize(size), key, digest)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := io.CopyBuffer(d, struct{ io.Reader }{e2}, make([]byte, 128<<10)); err != nil {
		t.Fatal(err)
	}
	n, err := d.Finish()
	if err != nil {
		t.Fatal(err)
	}
	if n != size || !bytes.Equal(got.Sum(nil), want.Sum(nil)) {
		t.Fatalf("decrypted %d bytes, or the wrong ones", n)
	}
	for _, h := range []struct {
		name string
		s    *heapSampler
	}{{"encrypt", encHeap}, {"encrypt+decrypt", decHeap}} {
		if h.s.samples == 0 {
			t.Fatalf("%s: heap never sampled", h.name)
		}
		t.Logf("%s: live heap grew by at most %d bytes", h.name, h.s.peak)
		if h.s.peak > bound {
			t.Errorf("%s: live heap grew by %d bytes for a %d-byte attachment, bound %d", h.name, h.s.peak, size, bound)
		}
	}
}
