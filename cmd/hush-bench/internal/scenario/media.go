package scenario

import (
	"bytes"
	"context"
	"crypto/aes"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"os"
	"path/filepath"
	"runtime/metrics"
	"sync"
	"time"

	"github.com/hushchat/hush/crypto"
	"github.com/hushchat/hush/server/media/mediaapi"
	"github.com/hushchat/hush/server/media/mediaclient"
)

// MediaDefaultBlob is the default encrypted object size: the issue's
// 100 MiB, which is also the relay's default per-file limit.
const MediaDefaultBlob = 100 << 20

// LargestPlaintext returns the largest plaintext whose encrypted blob
// fits in blob bytes (0 if none does).
func LargestPlaintext(blob int64) int64 {
	// At least one padding byte: the blob is never smaller than the
	// plaintext plus EncryptedSize(0).
	p := blob - crypto.EncryptedSize(0) + aes.BlockSize
	for p > 0 && crypto.EncryptedSize(p) > blob {
		p--
	}
	return max(p, 0)
}

// MediaOptions configure the media scenario.
type MediaOptions struct {
	// Size is the plaintext size in bytes (default: the largest whose
	// encrypted blob is MediaDefaultBlob).
	Size int64
	// Rounds of raw + encrypted transfers; the best round of each counts
	// (the machine is shared).
	Rounds int
	// Dir for downloaded files (default: a temporary directory, removed
	// afterwards).
	Dir string
}

// MediaResult is the media scenario's outcome.
type MediaResult struct {
	Header
	// Size: plaintext bytes per transfer; BlobSize: the encrypted object.
	Size     int64 `json:"size"`
	BlobSize int64 `json:"blob_size"`
	Rounds   int   `json:"rounds"`
	// MB/s (10^6 bytes of plaintext per second) of the best round: upload
	// (encryption included), download (download, verification and
	// decryption to a file included), and both.
	RawUpMBps     float64 `json:"raw_upload_mb_per_s"`
	RawDownMBps   float64 `json:"raw_download_mb_per_s"`
	RawMBps       float64 `json:"raw_mb_per_s"`
	EncUpMBps     float64 `json:"encrypted_upload_mb_per_s"`
	EncDownMBps   float64 `json:"encrypted_download_mb_per_s"`
	EncMBps       float64 `json:"encrypted_mb_per_s"`
	RatioPct      float64 `json:"ratio_pct"`
	UpRatioPct    float64 `json:"upload_ratio_pct"`
	DownRatioPct  float64 `json:"download_ratio_pct"`
	HeapGrowthMiB float64 `json:"client_heap_growth_mib"`
	// Verified: every download's plaintext matched the upload's SHA-256.
	Verified bool `json:"verified"`
}

// Media runs the media scenario.
func (r *Runner) Media(ctx context.Context, o MediaOptions) (*MediaResult, error) {
	if o.Size == 0 {
		o.Size = LargestPlaintext(MediaDefaultBlob)
	}
	if o.Size < mediaapi.MinUpload {
		return nil, fmt.Errorf("--size %d: need at least %d byte", o.Size, mediaapi.MinUpload)
	}
	if o.Rounds < 1 {
		o.Rounds = 1
	}
	res := &MediaResult{Header: r.header("media"), Size: o.Size, BlobSize: crypto.EncryptedSize(o.Size), Rounds: o.Rounds}
	dir := o.Dir
	if dir == "" {
		d, err := os.MkdirTemp("", "hush-bench-media-")
		if err != nil {
			return nil, err
		}
		defer os.RemoveAll(d)
		dir = d
	}
	dev, err := r.Env.Register(ctx, r.Env.Name("f"))
	if err != nil {
		return nil, err
	}
	mc, err := mediaclient.New(r.Env.Base().String(), mediaclient.StaticToken(dev.Token),
		mediaclient.Options{HTTPClient: &http.Client{Transport: r.Env.Transport()}})
	if err != nil {
		return nil, err
	}
	seed := rand.Uint64()
	want := sha256.New()
	if _, err := io.Copy(want, plaintext(seed, o.Size)); err != nil {
		return nil, err
	}
	wantSum := want.Sum(nil)

	heap := newHeapWatch()
	var best [4]float64 // raw up, raw down, enc up, enc down (seconds)
	for round := range o.Rounds {
		r.logf("round %d/%d: %d bytes raw, then encrypted", round+1, o.Rounds, o.Size)
		up, down, err := r.mediaRaw(ctx, mc, dir, seed, o.Size, wantSum, heap)
		if err != nil {
			return nil, fmt.Errorf("raw transfer: %w", err)
		}
		keep(&best[0], up)
		keep(&best[1], down)
		up, down, err = r.mediaEncrypted(ctx, mc, dir, seed, o.Size, wantSum, heap)
		if err != nil {
			return nil, fmt.Errorf("encrypted transfer: %w", err)
		}
		keep(&best[2], up)
		keep(&best[3], down)
	}
	mb := float64(o.Size) / 1e6
	res.RawUpMBps, res.RawDownMBps = round(mb/best[0], 1), round(mb/best[1], 1)
	res.EncUpMBps, res.EncDownMBps = round(mb/best[2], 1), round(mb/best[3], 1)
	res.RawMBps = round(2*mb/(best[0]+best[1]), 1)
	res.EncMBps = round(2*mb/(best[2]+best[3]), 1)
	res.RatioPct = round(100*(best[0]+best[1])/(best[2]+best[3]), 1)
	res.UpRatioPct = round(100*best[0]/best[2], 1)
	res.DownRatioPct = round(100*best[1]/best[3], 1)
	res.HeapGrowthMiB = round(float64(heap.growth())/(1<<20), 1)
	res.Verified = true
	res.target("encrypted upload+download throughput vs raw", res.RatioPct, "%", ">=", TargetMediaRatioPct)
	res.Notes = append(res.Notes, "server and client share this machine's CPUs and disk; downloads are written to files and fsynced, as hush save does")
	res.finish()
	return res, nil
}

func keep(best *float64, d time.Duration) {
	if s := d.Seconds(); *best == 0 || s < *best {
		*best = s
	}
}

// plaintext is a deterministic stream of size pseudo-random bytes.
func plaintext(seed uint64, size int64) io.Reader {
	var key [32]byte
	for i := range 4 {
		key[i*8] = byte(seed >> (8 * i))
	}
	return io.LimitReader(rand.NewChaCha8(key), size)
}

func (r *Runner) mediaRaw(ctx context.Context, mc *mediaclient.Client, dir string, seed uint64, size int64, wantSum []byte, heap *heapWatch) (up, down time.Duration, err error) {
	heap.reset()
	start := time.Now()
	slot, err := mc.Upload(ctx, size, plaintext(seed, size), heap.progress)
	if err != nil {
		return 0, 0, mediaErr(err)
	}
	up = time.Since(start)
	out := filepath.Join(dir, "raw.out")
	defer os.Remove(out)
	start = time.Now()
	if _, err := mc.DownloadFile(ctx, slot.ObjectKey, out, heap.progress); err != nil {
		return 0, 0, err
	}
	down = time.Since(start)
	return up, down, checkFile(out, wantSum)
}

func (r *Runner) mediaEncrypted(ctx context.Context, mc *mediaclient.Client, dir string, seed uint64, size int64, wantSum []byte, heap *heapWatch) (up, down time.Duration, err error) {
	heap.reset()
	start := time.Now()
	key, err := crypto.NewAttachmentKey()
	if err != nil {
		return 0, 0, err
	}
	enc, err := crypto.EncryptAttachment(plaintext(seed, size), key)
	if err != nil {
		return 0, 0, err
	}
	blobSize := crypto.EncryptedSize(size)
	slot, err := mc.Upload(ctx, blobSize, enc, heap.progress)
	if err != nil {
		return 0, 0, mediaErr(err)
	}
	digest, err := enc.Digest()
	if err != nil {
		return 0, 0, err
	}
	up = time.Since(start)
	out := filepath.Join(dir, "enc.out")
	defer os.Remove(out)
	start = time.Now()
	if err := downloadDecrypt(ctx, mc, slot.ObjectKey, blobSize, out, key, digest, heap); err != nil {
		return 0, 0, err
	}
	down = time.Since(start)
	return up, down, checkFile(out, wantSum)
}

// downloadDecrypt downloads the blob and decrypts it as it arrives into a
// new file out (verified before it counts), and syncs it: one pass, as
// the client does.
func downloadDecrypt(ctx context.Context, mc *mediaclient.Client, objectKey string, size int64, out string, key, digest []byte, heap *heapWatch) error {
	dst, err := os.OpenFile(out, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return err
	}
	dec, err := crypto.NewAttachmentDecrypter(&watchedWriter{w: dst, heap: heap}, size, key, digest)
	if err != nil {
		dst.Close()
		return err
	}
	if _, err = mc.Download(ctx, objectKey, dec, 0, heap.progress); err == nil {
		_, err = dec.Finish()
	} else {
		dec.Close()
	}
	if err == nil {
		err = dst.Sync()
	}
	return errors.Join(err, dst.Close())
}

func checkFile(path string, wantSum []byte) error {
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		return err
	}
	if !bytes.Equal(h.Sum(nil), wantSum) {
		return fmt.Errorf("%s: the downloaded plaintext differs from the upload", filepath.Base(path))
	}
	return nil
}

func mediaErr(err error) error {
	var me *mediaclient.Error
	if errors.As(err, &me) && me.Status == http.StatusNotFound && me.Op == "request slot" {
		return fmt.Errorf("%w (this server does not serve the media API at %s)", err, mediaapi.PathSlots)
	}
	return err
}

// heapWatch samples the live heap (runtime/metrics, no stop-the-world)
// during transfers and keeps the largest growth over a phase's start.
type heapWatch struct {
	mu     sync.Mutex
	sample []metrics.Sample
	base   uint64
	peak   uint64 // largest growth of any phase
	last   int64
}

func newHeapWatch() *heapWatch {
	return &heapWatch{sample: []metrics.Sample{{Name: "/memory/classes/heap/objects:bytes"}}}
}

func (h *heapWatch) read() uint64 {
	metrics.Read(h.sample)
	return h.sample[0].Value.Uint64()
}

// reset starts a phase.
func (h *heapWatch) reset() {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.base = h.read()
	h.last = 0
}

// observe samples every 4 MiB of progress.
func (h *heapWatch) observe(done int64) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if done-h.last < 4<<20 && done >= h.last {
		return
	}
	h.last = done
	if v := h.read(); v > h.base && v-h.base > h.peak {
		h.peak = v - h.base
	}
}

func (h *heapWatch) progress(done, _ int64) { h.observe(done) }

func (h *heapWatch) growth() uint64 {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.peak
}

type watchedWriter struct {
	w    io.Writer
	heap *heapWatch
	n    int64
}

func (w *watchedWriter) Write(p []byte) (int, error) {
	n, err := w.w.Write(p)
	w.n += int64(n)
	w.heap.observe(w.n)
	return n, err
}

// Rows implements Result.
func (res *MediaResult) Rows() [][2]string {
	return [][2]string{
		{"plaintext / encrypted object", fmt.Sprintf("%d / %d bytes (best of %d rounds)", res.Size, res.BlobSize, res.Rounds)},
		{"raw: upload / download / both", fmt.Sprintf("%s / %s / %s MB/s", num(res.RawUpMBps), num(res.RawDownMBps), num(res.RawMBps))},
		{"encrypted: upload / download / both", fmt.Sprintf("%s / %s / %s MB/s", num(res.EncUpMBps), num(res.EncDownMBps), num(res.EncMBps))},
		{"encrypted ÷ raw: upload / download / both", fmt.Sprintf("%s / %s / %s %%", num(res.UpRatioPct), num(res.DownRatioPct), num(res.RatioPct))},
		{"client heap growth during a transfer (max)", num(res.HeapGrowthMiB) + " MiB"},
		{"every download verified (SHA-256)", fmt.Sprint(res.Verified)},
	}
}

// Err implements Result.
func (res *MediaResult) Err() error {
	if !res.Verified {
		return errors.New("downloads were not verified")
	}
	return nil
}
