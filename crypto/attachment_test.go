package crypto

import (
	"bytes"
	"crypto/aes"
	"crypto/cipher"
	"crypto/hmac"
	"crypto/sha256"
	"errors"
	"io"
	"os"
	"path/filepath"
	"runtime"
	"testing"
)

// referenceBlob builds a Signal attachment blob with the standard library in
// one piece, independently of the streaming code under test.
func referenceBlob(key, iv, plaintext []byte, padding []byte) (blob, digest []byte) {
	block, _ := aes.NewCipher(key[:32])
	padded := append(bytes.Clone(plaintext), padding...)
	ct := make([]byte, len(padded))
	cipher.NewCBCEncrypter(block, iv).CryptBlocks(ct, padded)
	m := hmac.New(sha256.New, key[32:])
	m.Write(iv)
	m.Write(ct)
	blob = append(append(bytes.Clone(iv), ct...), m.Sum(nil)...)
	d := sha256.Sum256(blob)
	return blob, d[:]
}

func pkcs7Pad(n int) []byte {
	p := aes.BlockSize - n%aes.BlockSize
	return bytes.Repeat([]byte{byte(p)}, p)
}

func testKey(t testing.TB) []byte {
	k, err := NewAttachmentKey()
	if err != nil {
		t.Fatal(err)
	}
	return k
}

// countingWriter records how many bytes reached it.
type countingWriter struct{ n int }

func (w *countingWriter) Write(p []byte) (int, error) { w.n += len(p); return len(p), nil }

func TestAttachmentMatchesReference(t *testing.T) {
	key := testKey(t)
	iv := bytes.Repeat([]byte{7}, 16)
	for _, n := range []int{0, 1, 15, 16, 17, 31, 32, 33, 1000, attachmentChunk - 1, attachmentChunk, attachmentChunk + 1, 3*attachmentChunk + 5} {
		pt := make([]byte, n)
		for i := range pt {
			pt[i] = byte(i*31 + n)
		}
		wantBlob, wantDigest := referenceBlob(key, iv, pt, pkcs7Pad(n))
		e, err := newAttachmentEncrypter(bytes.NewReader(pt), key, iv)
		if err != nil {
			t.Fatal(err)
		}
		// Tiny reads exercise the output buffering.
		got, err := io.ReadAll(io.LimitReader(struct{ io.Reader }{e}, 1<<30))
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(got, wantBlob) {
			t.Fatalf("%d bytes: blob differs from reference", n)
		}
		d, err := e.Digest()
		if err != nil || !bytes.Equal(d, wantDigest) {
			t.Fatalf("%d bytes: digest %x, %v", n, d, err)
		}
		if EncryptedSize(int64(n)) != int64(len(wantBlob)) || e.Size() != int64(len(wantBlob)) {
			t.Fatalf("%d bytes: EncryptedSize %d, Size %d, blob %d", n, EncryptedSize(int64(n)), e.Size(), len(wantBlob))
		}
		var out bytes.Buffer
		m, err := DecryptAttachment(&out, bytes.NewReader(wantBlob), int64(len(wantBlob)), key, wantDigest)
		if err != nil || m != int64(n) || !bytes.Equal(out.Bytes(), pt) {
			t.Fatalf("%d bytes: decrypt %d, %v", n, m, err)
		}
	}
}

func TestAttachmentDigestBeforeEOF(t *testing.T) {
	e, err := EncryptAttachment(bytes.NewReader([]byte("abc")), testKey(t))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := e.Digest(); err == nil {
		t.Fatal("digest before the blob was read")
	}
}

func roundTrip(t *testing.T, pt []byte) {
	key := testKey(t)
	e, err := EncryptAttachment(bytes.NewReader(pt), key)
	if err != nil {
		t.Fatal(err)
	}
	blob, err := io.ReadAll(e)
	if err != nil {
		t.Fatal(err)
	}
	d, _ := e.Digest()
	var out bytes.Buffer
	if _, err := DecryptAttachment(&out, bytes.NewReader(blob), int64(len(blob)), key, d); err != nil {
		t.Fatalf("%d bytes: %v", len(pt), err)
	}
	if !bytes.Equal(out.Bytes(), pt) {
		t.Fatalf("%d bytes: plaintext differs", len(pt))
	}
}

func TestAttachmentRoundTripSmall(t *testing.T) {
	for _, n := range []int{0, 1, 15, 16, 17} {
		pt := make([]byte, n)
		for i := range pt {
			pt[i] = byte(0xA0 + i)
		}
		roundTrip(t, pt)
	}
}

// genReader yields n deterministic pseudo-random bytes without holding them.
type genReader struct {
	left  int64
	state uint64
}

func (g *genReader) Read(p []byte) (int, error) {
	if g.left == 0 {
		return 0, io.EOF
	}
	if int64(len(p)) > g.left {
		p = p[:g.left]
	}
	for i := range p {
		g.state ^= g.state << 13
		g.state ^= g.state >> 7
		g.state ^= g.state << 17
		p[i] = byte(g.state)
	}
	g.left -= int64(len(p))
	return len(p), nil
}

// heapWatch samples HeapInuse every few MiB of traffic and keeps the peak.
type heapWatch struct {
	w        io.Writer
	sinceOne int
	peak     uint64
}

func (h *heapWatch) Write(p []byte) (int, error) {
	h.sinceOne += len(p)
	if h.sinceOne >= 4<<20 {
		h.sinceOne = 0
		var ms runtime.MemStats
		runtime.ReadMemStats(&ms)
		h.peak = max(h.peak, ms.HeapInuse)
	}
	return h.w.Write(p)
}

func TestAttachment50MiBConstantMemory(t *testing.T) {
	const size = 50 << 20
	key := testKey(t)
	path := filepath.Join(t.TempDir(), "blob")
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()

	runtime.GC()
	var base runtime.MemStats
	runtime.ReadMemStats(&base)

	e, err := EncryptAttachment(&genReader{left: size, state: 42}, key)
	if err != nil {
		t.Fatal(err)
	}
	encWatch := &heapWatch{w: f}
	if _, err := io.Copy(encWatch, e); err != nil {
		t.Fatal(err)
	}
	d, err := e.Digest()
	if err != nil {
		t.Fatal(err)
	}
	if e.Size() != EncryptedSize(size) {
		t.Fatalf("blob %d bytes, EncryptedSize says %d", e.Size(), EncryptedSize(size))
	}

	want := sha256.New()
	io.Copy(want, &genReader{left: size, state: 42})
	got := sha256.New()
	decWatch := &heapWatch{w: got}
	n, err := DecryptAttachment(decWatch, f, e.Size(), key, d)
	if err != nil {
		t.Fatal(err)
	}
	if n != size || !bytes.Equal(got.Sum(nil), want.Sum(nil)) {
		t.Fatalf("decrypted %d bytes, hash mismatch or wrong length", n)
	}
	const slack = 8 << 20
	for _, w := range []struct {
		name string
		peak uint64
	}{{"encrypt", encWatch.peak}, {"decrypt", decWatch.peak}} {
		if w.peak == 0 {
			t.Fatalf("%s: heap never sampled", w.name)
		}
		if w.peak > base.HeapInuse+slack {
			t.Errorf("%s: heap in use grew from %d to %d bytes for a %d-byte file", w.name, base.HeapInuse, w.peak, size)
		}
	}
}

// failWriter fails the test if any plaintext reaches it.
type failWriter struct{ t *testing.T }

func (w failWriter) Write(p []byte) (int, error) {
	w.t.Helper()
	w.t.Fatalf("plaintext written for a bad blob (%d bytes)", len(p))
	return 0, nil
}

func TestAttachmentTamper(t *testing.T) {
	key := testKey(t)
	pt := bytes.Repeat([]byte("attachment "), 9) // 99 bytes: 7 blocks
	e, _ := EncryptAttachment(bytes.NewReader(pt), key)
	blob, _ := io.ReadAll(e)
	d, _ := e.Digest()

	// One flipped bit anywhere: IV, body or MAC.
	for i := range blob {
		bad := bytes.Clone(blob)
		bad[i] ^= 1 << (i % 8)
		_, err := DecryptAttachment(failWriter{t}, bytes.NewReader(bad), int64(len(bad)), key, d)
		if !errors.Is(err, ErrBadMAC) {
			t.Fatalf("bit flip at byte %d: got %v, want ErrBadMAC", i, err)
		}
	}
	// Wrong digest.
	badDigest := bytes.Clone(d)
	badDigest[31] ^= 0x80
	if _, err := DecryptAttachment(failWriter{t}, bytes.NewReader(blob), int64(len(blob)), key, badDigest); !errors.Is(err, ErrBadDigest) {
		t.Fatalf("wrong digest: got %v", err)
	}
	if _, err := DecryptAttachment(failWriter{t}, bytes.NewReader(blob), int64(len(blob)), key, d[:16]); !errors.Is(err, ErrBadDigest) {
		t.Fatalf("short digest: got %v", err)
	}
	// Wrong MAC key.
	k := bytes.Clone(key)
	k[40] ^= 1
	if _, err := DecryptAttachment(failWriter{t}, bytes.NewReader(blob), int64(len(blob)), k, d); !errors.Is(err, ErrBadMAC) {
		t.Fatalf("wrong MAC key: got %v", err)
	}
	if _, err := DecryptAttachment(failWriter{t}, bytes.NewReader(blob), int64(len(blob)), key[:63], d); !errors.Is(err, ErrAttachmentKey) {
		t.Fatalf("short key: got %v", err)
	}
	// Truncation at every length, and a claimed size beyond the data.
	for n := 0; n < len(blob); n++ {
		cut := blob[:n]
		_, err := DecryptAttachment(failWriter{t}, bytes.NewReader(cut), int64(n), key, d)
		if !errors.Is(err, ErrTruncated) && !errors.Is(err, ErrBadMAC) {
			t.Fatalf("truncated to %d: got %v", n, err)
		}
	}
	if _, err := DecryptAttachment(failWriter{t}, bytes.NewReader(blob), int64(len(blob)+16), key, d); !errors.Is(err, ErrTruncated) {
		t.Fatalf("size past the data: got %v", err)
	}
	// Appended block.
	ext := append(bytes.Clone(blob), make([]byte, 16)...)
	if _, err := DecryptAttachment(failWriter{t}, bytes.NewReader(ext), int64(len(ext)), key, d); !errors.Is(err, ErrBadMAC) {
		t.Fatalf("extended blob: got %v", err)
	}
}

// A correctly MACed blob whose padding is wrong (a buggy or hostile sender)
// is refused before any plaintext is written.
func TestAttachmentBadPadding(t *testing.T) {
	key := testKey(t)
	iv := make([]byte, 16)
	pt := bytes.Repeat([]byte{1}, 20)
	for _, pad := range [][]byte{
		bytes.Repeat([]byte{0}, 12),              // zero padding byte
		append(bytes.Repeat([]byte{9}, 11), 12),  // inconsistent bytes
		append(bytes.Repeat([]byte{17}, 11), 17), // longer than a block... (12 bytes claiming 17)
	} {
		blob, d := referenceBlob(key, iv, pt, pad)
		_, err := DecryptAttachment(failWriter{t}, bytes.NewReader(blob), int64(len(blob)), key, d)
		if !errors.Is(err, ErrBadPadding) {
			t.Fatalf("padding %x: got %v", pad, err)
		}
	}
}

// flipAfter serves a blob and changes it after the first full read, as a
// file modified between the two passes would.
type flipAfter struct {
	b     []byte
	reads int
	at    int64
}

func (f *flipAfter) ReadAt(p []byte, off int64) (int, error) {
	if off == 0 {
		f.reads++
		if f.reads == 2 { // the IV read of pass 2: pass 1 has already verified
			f.b[f.at] ^= 1
		}
	}
	if off >= int64(len(f.b)) {
		return 0, io.EOF
	}
	n := copy(p, f.b[off:])
	if n < len(p) {
		return n, io.EOF
	}
	return n, nil
}

func TestAttachmentSourceChangesBetweenPasses(t *testing.T) {
	key := testKey(t)
	e, _ := EncryptAttachment(bytes.NewReader(bytes.Repeat([]byte{3}, 100)), key)
	blob, _ := io.ReadAll(e)
	d, _ := e.Digest()
	src := &flipAfter{b: blob, at: 40}
	_, err := DecryptAttachment(io.Discard, src, int64(len(blob)), key, d)
	if !errors.Is(err, ErrBadMAC) {
		t.Fatalf("source changed between passes: got %v", err)
	}
}
