package client

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"image"
	"image/color"
	"image/jpeg"
	"image/png"
	"io"
	"io/fs"
	"math/rand/v2"
	"net/http"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/aws/aws-sdk-go-v2/aws"
	awss3 "github.com/aws/aws-sdk-go-v2/service/s3"

	"github.com/hushchat/hush/crypto"
	"github.com/hushchat/hush/internal/testenv"
	"github.com/hushchat/hush/protocol"
	"github.com/hushchat/hush/server/app"
	"github.com/hushchat/hush/server/app/apptest"
	"github.com/hushchat/hush/server/media/backend"
	"github.com/hushchat/hush/server/media/mediaapi"
	"github.com/hushchat/hush/server/media/s3"
)

// The media tests run a real hush-server with its media service (disk by
// default; S3 against the server from scripts/testenv) and real clients:
// files go through SendFile, the relay's upload slots, the object store,
// an end-to-end message, and SaveAttachment.

// mediaServer is a hush-server with the media service configured.
type mediaServer struct {
	app  *app.App
	dir  string
	kind string
	s3   testenv.S3
}

func startMediaServer(t *testing.T, m app.MediaOptions) *mediaServer {
	t.Helper()
	srv := apptest.Start(t, func(c *app.AllInOneConfig) {
		c.Logger = testLogger(t).With("side", "server")
		c.Relay.Media = m
	})
	ms := &mediaServer{app: srv.App(), dir: srv.DataDir(), kind: m.Kind}
	return ms
}

// startS3MediaServer runs hush-server on a fresh bucket of the real S3
// server, with credentials from the standard AWS environment.
func startS3MediaServer(t *testing.T, maxUpload int64) *mediaServer {
	s := testenv.NeedS3(t)
	t.Setenv("AWS_ACCESS_KEY_ID", s.AccessKey)
	t.Setenv("AWS_SECRET_ACCESS_KEY", s.SecretKey)
	t.Setenv("AWS_CONFIG_FILE", filepath.Join(t.TempDir(), "none"))
	t.Setenv("AWS_SHARED_CREDENTIALS_FILE", filepath.Join(t.TempDir(), "none"))
	ms := startMediaServer(t, app.MediaOptions{Kind: backend.S3, MaxUpload: maxUpload, QuotaBytes: 4 << 30,
		S3: s3.Config{Bucket: s.Bucket, Region: s.Region, Endpoint: s.Endpoint, PathStyle: true}})
	ms.s3 = s
	return ms
}

func (ms *mediaServer) url() string { return "http://" + ms.app.Addr() }

// join registers name on ms; mutate adjusts the client configuration.
func (ms *mediaServer) join(t *testing.T, name string, mutate func(*Config)) *party {
	t.Helper()
	cfg := testConfig(t, filepath.Join(t.TempDir(), name))
	if mutate != nil {
		mutate(&cfg)
	}
	p := openParty(t, cfg, name)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if err := p.Register(ctx, ms.url(), name); err != nil {
		t.Fatalf("register %s: %v", name, err)
	}
	p.waitConnected()
	return p
}

// object returns the stored blob of key (reading it whole: test sizes
// only) or calls fn on a reader of it.
func (ms *mediaServer) readObject(t *testing.T, key string, fn func(io.Reader)) {
	t.Helper()
	if ms.kind == backend.S3 {
		out, err := ms.s3.Client().GetObject(context.Background(), &awss3.GetObjectInput{
			Bucket: aws.String(ms.s3.Bucket), Key: aws.String(s3.DefaultPrefix + key)})
		if err != nil {
			t.Fatalf("get object %s…: %v", key[:6], err)
		}
		defer out.Body.Close()
		fn(out.Body)
		return
	}
	f, err := os.Open(ms.objectPath(key))
	if err != nil {
		t.Fatalf("stored object: %v", err)
	}
	defer f.Close()
	fn(f)
}

// objectPath is the disk backend's file of key.
func (ms *mediaServer) objectPath(key string) string {
	return filepath.Join(ms.dir, app.MediaDir, "objects", key[:2], key)
}

// objects counts the disk backend's stored objects.
func (ms *mediaServer) objects(t *testing.T) int {
	t.Helper()
	n := 0
	err := filepath.WalkDir(filepath.Join(ms.dir, app.MediaDir, "objects"), func(p string, d fs.DirEntry, err error) error {
		if err == nil && !d.IsDir() {
			n++
		}
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	return n
}

// marker is written into every test file; the stored objects must not
// contain it.
var marker = []byte("HUSH-PLAINTEXT-MARKER-7f3a9c")

// writeFile writes size bytes of seeded random data with the marker
// repeated every MiB and returns the path and its SHA-256.
func writeFile(t *testing.T, dir, name string, size int64, seed uint64) (string, []byte) {
	t.Helper()
	p := filepath.Join(dir, name)
	f, err := os.Create(p)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	rng := rand.NewChaCha8([32]byte{byte(seed), byte(seed >> 8)})
	h := sha256.New()
	buf := make([]byte, 1<<20)
	for left := size; left > 0; {
		n := min(int64(len(buf)), left)
		b := buf[:n]
		rng.Read(b)
		copy(b, marker)
		h.Write(b)
		if _, err := f.Write(b); err != nil {
			t.Fatal(err)
		}
		left -= n
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	return p, h.Sum(nil)
}

func fileSum(t *testing.T, p string) []byte {
	t.Helper()
	f, err := os.Open(p)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		t.Fatal(err)
	}
	return h.Sum(nil)
}

// containsMarker scans r for the marker in constant memory.
func containsMarker(r io.Reader) (bool, int64) {
	buf := make([]byte, 256<<10)
	var carry []byte
	var n int64
	for {
		k, err := r.Read(buf)
		n += int64(k)
		chunk := append(carry, buf[:k]...)
		if bytes.Contains(chunk, marker) {
			return true, n
		}
		if len(chunk) >= len(marker) {
			carry = append([]byte(nil), chunk[len(chunk)-len(marker)+1:]...)
		} else {
			carry = append([]byte(nil), chunk...)
		}
		if err != nil {
			return false, n
		}
	}
}

// heapWatch samples the heap from progress callbacks: a streaming
// transfer keeps it flat; one that buffers the file grows by the file.
type heapWatch struct {
	mu         sync.Mutex
	base, peak uint64
	next       int64
	every      int64
	samples    int
}

func newHeapWatch(every int64) *heapWatch {
	runtime.GC()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	return &heapWatch{base: ms.HeapAlloc, peak: ms.HeapAlloc, every: every}
}

func (w *heapWatch) observe(done, _ int64) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if done < w.next {
		return
	}
	w.next = done + w.every
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	w.samples++
	w.peak = max(w.peak, ms.HeapAlloc)
}

func (w *heapWatch) growth() uint64 {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.peak < w.base {
		return 0
	}
	return w.peak - w.base
}

// maxHeapGrowth: a few MiB of buffers (client and in-process server),
// against the file size a buffering implementation would hold.
const maxHeapGrowth = 48 << 20

func attachmentFrom2(from string, id MessageID) func(Event) bool {
	return func(ev Event) bool {
		m, ok := ev.(*MessageEvent)
		return ok && m.Message.Sender == from && m.Message.ID == id && m.Message.Attachment != nil
	}
}

// sendAndSave sends a file of size bytes from alice to bob through ms,
// saves it on bob's side and checks it byte for byte, the heap on both
// sides, and that the stored object holds no plaintext.
func sendAndSave(t *testing.T, ms *mediaServer, alice, bob *party, size int64) {
	t.Helper()
	ctx := context.Background()
	dir := t.TempDir()
	src, sum := writeFile(t, dir, "file.bin", size, uint64(size))
	up := newHeapWatch(4 << 20)
	var lastUp atomic.Int64
	id, err := alice.SendFile(ctx, "bob", src, WithCaption("size "+hex.EncodeToString([]byte{byte(size)})),
		WithProgress(func(done, total int64) { up.observe(done, total); lastUp.Store(done) }))
	if err != nil {
		t.Fatalf("send %d bytes: %v", size, err)
	}
	alice.waitSent(id)
	ev := bob.waitFor("attachment", 1, attachmentFrom2("alice", id))[0].(*MessageEvent)
	a := ev.Message.Attachment
	if ev.Message.Kind != KindAttachment || a.Size != uint64(size) || a.FileName != "file.bin" ||
		a.EncryptedSize != uint64(crypto.EncryptedSize(PaddedSize(size))) || ev.Message.Text != a.Caption || a.Caption == "" {
		t.Fatalf("received %+v (kind %s, text %q)", a, ev.Message.Kind, ev.Message.Text)
	}
	if lastUp.Load() != int64(a.EncryptedSize) {
		t.Errorf("upload progress ended at %d of %d", lastUp.Load(), a.EncryptedSize)
	}

	// What the server holds is ciphertext of the announced size.
	ms.readObject(t, a.ObjectKey, func(r io.Reader) {
		found, n := containsMarker(r)
		if found {
			t.Errorf("the stored object contains the plaintext marker")
		}
		if n != int64(a.EncryptedSize) {
			t.Errorf("stored object has %d bytes, want %d", n, a.EncryptedSize)
		}
	})

	down := newHeapWatch(4 << 20)
	out := filepath.Join(t.TempDir(), "saved")
	got, err := bob.SaveAttachment(ctx, MessageRef{ID: id}, out, SaveOptions{Progress: down.observe})
	if err != nil {
		t.Fatalf("save %d bytes: %v", size, err)
	}
	if got != out {
		t.Fatalf("saved to %s, asked for %s", got, out)
	}
	if s := fileSum(t, out); !bytes.Equal(s, sum) {
		t.Fatalf("%d bytes: saved file sha256 %x, sent %x", size, s, sum)
	}
	if st, _ := os.Stat(out); st.Size() != size || st.Mode().Perm() != 0o600 {
		t.Fatalf("saved file: %d bytes, mode %v", st.Size(), st.Mode())
	}
	assertOnly(t, filepath.Dir(out), "saved")
	if size >= 32<<20 {
		if up.samples < 4 || down.samples < 4 {
			t.Fatalf("heap sampled %d/%d times", up.samples, down.samples)
		}
		if g := up.growth(); g > maxHeapGrowth {
			t.Errorf("upload of %d MiB grew the heap by %d MiB", size>>20, g>>20)
		}
		if g := down.growth(); g > maxHeapGrowth {
			t.Errorf("download of %d MiB grew the heap by %d MiB", size>>20, g>>20)
		}
		t.Logf("%d MiB: heap growth upload %.1f MiB, download %.1f MiB", size>>20,
			float64(up.growth())/(1<<20), float64(down.growth())/(1<<20))
	}
	os.Remove(out)
	os.Remove(src)
}

// assertOnly checks that dir holds exactly the named files (no part or
// temporary files left behind).
func assertOnly(t *testing.T, dir string, names ...string) {
	t.Helper()
	es, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, e := range es {
		got = append(got, e.Name())
	}
	if strings.Join(got, ",") != strings.Join(names, ",") {
		t.Fatalf("%s holds %q, want %q", dir, got, names)
	}
}

// TestFileRoundTripDisk: 0 B, 1 B, 5 MiB and 200 MiB through the disk
// backend, byte-identical, with a flat heap on both sides.
func TestFileRoundTripDisk(t *testing.T) {
	ms := startMediaServer(t, app.MediaOptions{MaxUpload: 256 << 20, QuotaBytes: 4 << 30})
	alice := ms.join(t, "alice", nil)
	bob := ms.join(t, "bob", nil)
	for _, size := range []int64{0, 1, 5 << 20, 200 << 20} {
		sendAndSave(t, ms, alice, bob, size)
	}
}

// TestFileRoundTripS3: the same through the real S3 server.
func TestFileRoundTripS3(t *testing.T) {
	ms := startS3MediaServer(t, 256<<20)
	alice := ms.join(t, "alice", nil)
	bob := ms.join(t, "bob", nil)
	for _, size := range []int64{0, 1, 5 << 20, 200 << 20} {
		sendAndSave(t, ms, alice, bob, size)
	}
}

// sentFile sends a small file from alice to bob and returns the pointer
// bob received.
func sentFile(t *testing.T, alice, bob *party, size int64) (MessageID, *Attachment, []byte) {
	t.Helper()
	src, sum := writeFile(t, t.TempDir(), "doc.pdf", size, 99)
	id, err := alice.SendFile(context.Background(), "bob", src)
	if err != nil {
		t.Fatal(err)
	}
	ev := bob.waitFor("attachment", 1, attachmentFrom2("alice", id))[0].(*MessageEvent)
	return id, ev.Message.Attachment, sum
}

// A tampered object, a truncated object and a wrong key are refused with
// ErrAttachmentCorrupt, and nothing is left at the destination: no
// plaintext, no part file.
func TestSaveRefusesDamagedFiles(t *testing.T) {
	ctx := context.Background()
	ms := startMediaServer(t, app.MediaOptions{})
	alice := ms.join(t, "alice", nil)
	bob := ms.join(t, "bob", nil)

	check := func(what string, err error) {
		t.Helper()
		if !errors.Is(err, ErrAttachmentCorrupt) {
			t.Fatalf("%s: %v, want ErrAttachmentCorrupt", what, err)
		}
		if !strings.Contains(err.Error(), "doc.pdf") {
			t.Errorf("%s: the error does not name the file: %v", what, err)
		}
	}

	// Tampered: one ciphertext byte flipped on the server.
	id, a, _ := sentFile(t, alice, bob, 300<<10)
	obj := ms.objectPath(a.ObjectKey)
	b, err := os.ReadFile(obj)
	if err != nil {
		t.Fatal(err)
	}
	b[len(b)/2] ^= 1
	if err := os.WriteFile(obj, b, 0o600); err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	_, err = bob.SaveAttachment(ctx, MessageRef{ID: id}, filepath.Join(dir, "out.pdf"), SaveOptions{})
	check("tampered", err)
	assertOnly(t, dir)

	// Truncated: the object lost its last block on the server.
	id, a, _ = sentFile(t, alice, bob, 200<<10)
	if err := os.Truncate(ms.objectPath(a.ObjectKey), int64(a.EncryptedSize)-16); err != nil {
		t.Fatal(err)
	}
	_, err = bob.SaveAttachment(ctx, MessageRef{ID: id}, dir, SaveOptions{})
	check("truncated", err)
	assertOnly(t, dir)

	// Truncated below a part file an earlier, interrupted save left:
	// the resumed download finds the object shorter than what it has.
	id, a, _ = sentFile(t, alice, bob, 200<<10)
	blob, err := os.ReadFile(ms.objectPath(a.ObjectKey))
	if err != nil {
		t.Fatal(err)
	}
	part := filepath.Join(dir, ".doc.pdf."+hex.EncodeToString(a.Digest[:6])+".part")
	if err := os.WriteFile(part, blob[:100<<10], 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(ms.objectPath(a.ObjectKey), 50<<10); err != nil {
		t.Fatal(err)
	}
	_, err = bob.SaveAttachment(ctx, MessageRef{ID: id}, dir, SaveOptions{})
	check("truncated below the part file", err)
	assertOnly(t, dir)

	// Wrong key: the pointer's key altered.
	_, a, _ = sentFile(t, alice, bob, 100<<10)
	bad := *a
	bad.Key = append([]byte(nil), a.Key...)
	bad.Key[40] ^= 0x80
	_, err = bob.DownloadAttachment(ctx, &bad, dir, SaveOptions{})
	check("wrong key", err)
	assertOnly(t, dir)
	// A digest that is not the blob's is refused the same way.
	bad = *a
	bad.Digest = make([]byte, 32)
	_, err = bob.DownloadAttachment(ctx, &bad, dir, SaveOptions{})
	check("wrong digest", err)
	assertOnly(t, dir)
	// The real pointer still works, named after the sender's file.
	got, err := bob.DownloadAttachment(ctx, a, dir, SaveOptions{})
	if err != nil || got != filepath.Join(dir, "doc.pdf") {
		t.Fatalf("save the intact file: %s, %v", got, err)
	}
	// It is not overwritten without asking.
	if _, err := bob.DownloadAttachment(ctx, a, dir, SaveOptions{}); !errors.Is(err, fs.ErrExist) {
		t.Fatalf("save over an existing file: %v", err)
	}
	if _, err := bob.DownloadAttachment(ctx, a, dir, SaveOptions{Overwrite: true}); err != nil {
		t.Fatalf("overwrite: %v", err)
	}
	assertOnly(t, dir, "doc.pdf")

	// Removed from the server (retention): a clear error, nothing left.
	if err := os.Remove(ms.objectPath(a.ObjectKey)); err != nil {
		t.Fatal(err)
	}
	if _, err := bob.DownloadAttachment(ctx, a, filepath.Join(dir, "again.pdf"), SaveOptions{}); !errors.Is(err, ErrAttachmentGone) {
		t.Fatalf("save a removed file: %v", err)
	}
	assertOnly(t, dir, "doc.pdf")

	// A message without a file, and an unknown id.
	tid := alice.send("bob", "just text")
	bob.waitFor("text", 1, isText("alice", "just text"))
	if _, err := bob.SaveAttachment(ctx, MessageRef{ID: tid}, dir, SaveOptions{}); !errors.Is(err, ErrNoAttachment) {
		t.Fatalf("save a text message: %v", err)
	}
	if _, err := bob.SaveAttachment(ctx, MessageRef{ID: MessageID{1}}, dir, SaveOptions{}); !errors.Is(err, ErrNoMessage) {
		t.Fatalf("save an unknown message: %v", err)
	}
}

// countingTransport counts the bytes of blob downloads.
type countingTransport struct {
	base http.RoundTripper
	n    atomic.Int64
}

func (c *countingTransport) RoundTrip(r *http.Request) (*http.Response, error) {
	resp, err := c.base.RoundTrip(r)
	if err == nil && r.Method == http.MethodGet && strings.Contains(r.URL.Path, "/blob/") {
		resp.Body = &countingBody{ReadCloser: resp.Body, n: &c.n}
	}
	return resp, err
}

type countingBody struct {
	io.ReadCloser
	n *atomic.Int64
}

func (b *countingBody) Read(p []byte) (int, error) {
	n, err := b.ReadCloser.Read(p)
	b.n.Add(int64(n))
	return n, err
}

// An interrupted download leaves only the encrypted part file; the next
// call fetches just the rest and produces the identical file.
func TestSaveResumes(t *testing.T) {
	ctx := context.Background()
	ms := startMediaServer(t, app.MediaOptions{})
	ct := &countingTransport{base: http.DefaultTransport.(*http.Transport).Clone()}
	alice := ms.join(t, "alice", nil)
	bob := ms.join(t, "bob", func(c *Config) { c.HTTPClient = &http.Client{Transport: ct, Timeout: 30 * time.Second} })
	const size = 8 << 20
	id, a, sum := sentFile(t, alice, bob, size)

	dir := t.TempDir()
	out := filepath.Join(dir, "big.pdf")
	cctx, cancel := context.WithCancel(ctx)
	_, err := bob.SaveAttachment(cctx, MessageRef{Sender: "alice", ID: id}, out, SaveOptions{Progress: func(done, total int64) {
		if done >= 3<<20 {
			cancel()
		}
	}})
	cancel()
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("interrupted save: %v", err)
	}
	es, _ := os.ReadDir(dir)
	if len(es) != 1 || !strings.HasSuffix(es[0].Name(), ".part") {
		t.Fatalf("after the interruption %s holds %v, want only the part file", dir, es)
	}
	part := filepath.Join(dir, es[0].Name())
	st, _ := os.Stat(part)
	have := st.Size()
	if have < 3<<20 || have >= int64(a.EncryptedSize) {
		t.Fatalf("part file has %d of %d bytes", have, a.EncryptedSize)
	}
	// The part file is ciphertext.
	pf, _ := os.Open(part)
	found, _ := containsMarker(pf)
	pf.Close()
	if found {
		t.Fatal("the part file holds plaintext")
	}

	before := ct.n.Load()
	var first atomic.Int64
	first.Store(-1)
	if _, err := bob.SaveAttachment(ctx, MessageRef{ID: id}, out, SaveOptions{Progress: func(done, _ int64) {
		first.CompareAndSwap(-1, done)
	}}); err != nil {
		t.Fatalf("resumed save: %v", err)
	}
	if fetched := ct.n.Load() - before; fetched != int64(a.EncryptedSize)-have {
		t.Fatalf("the resumed download fetched %d bytes; %d were missing", fetched, int64(a.EncryptedSize)-have)
	}
	if first.Load() <= have {
		t.Fatalf("progress restarted at %d, part file had %d", first.Load(), have)
	}
	if !bytes.Equal(fileSum(t, out), sum) {
		t.Fatal("the resumed file differs from the sent one")
	}
	assertOnly(t, dir, "big.pdf")
}

// A group file is uploaded once and every member can save it.
func TestGroupFileUploadedOnce(t *testing.T) {
	ctx := context.Background()
	ms := startMediaServer(t, app.MediaOptions{})
	alice := ms.join(t, "alice", nil)
	bob := ms.join(t, "bob", nil)
	carol := ms.join(t, "carol", nil)
	gid, err := alice.CreateGroup(ctx, "trio", []string{"bob", "carol"})
	if err != nil {
		t.Fatal(err)
	}
	bob.waitFor("create", 1, groupUpdate(gid, "create"))
	carol.waitFor("create", 1, groupUpdate(gid, "create"))

	src, sum := writeFile(t, t.TempDir(), "notes.txt", 700<<10, 7)
	before := ms.objects(t)
	id, err := alice.SendGroupFile(ctx, gid, src, WithCaption("for everyone"))
	if err != nil {
		t.Fatal(err)
	}
	alice.waitSent(id)
	if n := ms.objects(t) - before; n != 1 {
		t.Fatalf("the group file was stored %d times", n)
	}
	for _, p := range []*party{bob, carol} {
		ev := p.waitFor("group file", 1, attachmentFrom2("alice", id))[0].(*MessageEvent)
		if ev.Message.Group == nil || *ev.Message.Group != gid || ev.Message.Text != "for everyone" {
			t.Fatalf("%s got %+v", p.name, ev.Message)
		}
		out := filepath.Join(t.TempDir(), "n.txt")
		if _, err := p.SaveAttachment(ctx, MessageRef{ID: id}, out, SaveOptions{}); err != nil {
			t.Fatalf("%s: save: %v", p.name, err)
		}
		if !bytes.Equal(fileSum(t, out), sum) {
			t.Fatalf("%s saved a different file", p.name)
		}
	}
	// The sender's own copy is in its history with the same pointer.
	m, err := alice.FindMessage(ctx, MessageRef{ID: id})
	if err != nil || m.Attachment == nil || m.Attachment.FileName != "notes.txt" || !m.Outgoing {
		t.Fatalf("sender's message: %+v, %v", m, err)
	}
}

// testImage is a w×h PNG with a gradient.
func testImage(t *testing.T, w, h int) []byte {
	t.Helper()
	img := image.NewNRGBA(image.Rect(0, 0, w, h))
	for y := range h {
		for x := range w {
			img.Set(x, y, color.NRGBA{uint8(x), uint8(y), 128, 255})
		}
	}
	var buf bytes.Buffer
	if err := png.Encode(&buf, img); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

// An image gets a JPEG thumbnail and its dimensions inside the encrypted
// message; the stored object does not contain the thumbnail.
func TestImageThumbnail(t *testing.T) {
	ctx := context.Background()
	ms := startMediaServer(t, app.MediaOptions{})
	alice := ms.join(t, "alice", nil)
	bob := ms.join(t, "bob", nil)
	pngBytes := testImage(t, 640, 400)
	src := filepath.Join(t.TempDir(), "photo") // no extension: sniffed
	if err := os.WriteFile(src, pngBytes, 0o600); err != nil {
		t.Fatal(err)
	}
	id, err := alice.SendFile(ctx, "bob", src)
	if err != nil {
		t.Fatal(err)
	}
	a := bob.waitFor("image", 1, attachmentFrom2("alice", id))[0].(*MessageEvent).Message.Attachment
	if a.ContentType != "image/png" || a.Width != 640 || a.Height != 400 {
		t.Fatalf("image pointer: type %q, %d×%d", a.ContentType, a.Width, a.Height)
	}
	if len(a.Thumbnail) == 0 || len(a.Thumbnail) > protocol.MaxThumbnailLen {
		t.Fatalf("thumbnail of %d bytes", len(a.Thumbnail))
	}
	th, err := jpeg.Decode(bytes.NewReader(a.Thumbnail))
	if err != nil {
		t.Fatalf("thumbnail is not a JPEG: %v", err)
	}
	if b := th.Bounds(); b.Dx() != 128 || b.Dy() != 80 {
		t.Fatalf("thumbnail is %v, want 128×80", b)
	}
	// The thumbnail's top-left pixel matches the image's (dark red-blue),
	// its bottom-right the bright corner.
	r, g, _, _ := th.At(0, 0).RGBA()
	r2, g2, _, _ := th.At(127, 79).RGBA()
	if r > r2 || g > g2 {
		t.Errorf("thumbnail gradient runs the wrong way: %v %v", th.At(0, 0), th.At(127, 79))
	}
	ms.readObject(t, a.ObjectKey, func(rd io.Reader) {
		b, _ := io.ReadAll(rd)
		if bytes.Contains(b, a.Thumbnail[:64]) || bytes.Contains(b, []byte("IHDR")) {
			t.Error("the stored object holds the thumbnail or the PNG")
		}
	})
	out, err := bob.SaveAttachment(ctx, MessageRef{ID: id}, t.TempDir(), SaveOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if got, _ := os.ReadFile(out); !bytes.Equal(got, pngBytes) || filepath.Base(out) != "photo" {
		t.Fatalf("saved image %s differs", out)
	}

	// A bot's in-memory image (io.ReadSeeker) gets one too; a plain
	// io.Reader is sent without one.
	id2, err := alice.SendReader(ctx, "bob", bytes.NewReader(pngBytes), int64(len(pngBytes)), "chart.png", "")
	if err != nil {
		t.Fatal(err)
	}
	a2 := bob.waitFor("image", 1, attachmentFrom2("alice", id2))[0].(*MessageEvent).Message.Attachment
	if len(a2.Thumbnail) == 0 || a2.Width != 640 || a2.ContentType != "image/png" || a2.FileName != "chart.png" {
		t.Fatalf("reader image: %d-byte thumbnail, %d wide, %q", len(a2.Thumbnail), a2.Width, a2.ContentType)
	}
	id3, err := alice.SendReader(ctx, "bob", io.MultiReader(bytes.NewReader(pngBytes)), int64(len(pngBytes)), "stream.png", "")
	if err != nil {
		t.Fatal(err)
	}
	a3 := bob.waitFor("image", 1, attachmentFrom2("alice", id3))[0].(*MessageEvent).Message.Attachment
	if len(a3.Thumbnail) != 0 || a3.ContentType != "image/png" {
		t.Fatalf("stream image: %d-byte thumbnail, %q", len(a3.Thumbnail), a3.ContentType)
	}
	out3 := filepath.Join(t.TempDir(), "s.png")
	if _, err := bob.SaveAttachment(ctx, MessageRef{ID: id3}, out3, SaveOptions{}); err != nil {
		t.Fatal(err)
	}
	if got, _ := os.ReadFile(out3); !bytes.Equal(got, pngBytes) {
		t.Fatal("streamed image differs")
	}
}

// Limits: a file over the server's limit is refused with the limit
// before anything is sent; one that fits only without the full padding
// is sent with less; a file that shrinks while it is read fails cleanly.
func TestFileLimits(t *testing.T) {
	ctx := context.Background()
	const size = 1 << 20
	limit := crypto.EncryptedSize(size) + 1024 // fits, but not with the 5% bucket
	if crypto.EncryptedSize(PaddedSize(size)) <= limit {
		t.Fatal("test setup: the padded size fits the limit")
	}
	ms := startMediaServer(t, app.MediaOptions{MaxUpload: limit})
	alice := ms.join(t, "alice", nil)
	bob := ms.join(t, "bob", nil)

	src, sum := writeFile(t, t.TempDir(), "fits.bin", size, 3)
	id, err := alice.SendFile(ctx, "bob", src)
	if err != nil {
		t.Fatalf("a file that fits without full padding: %v", err)
	}
	a := bob.waitFor("file", 1, attachmentFrom2("alice", id))[0].(*MessageEvent).Message.Attachment
	if int64(a.EncryptedSize) > limit || a.Size != size {
		t.Fatalf("sent %d bytes encrypted (limit %d)", a.EncryptedSize, limit)
	}
	out := filepath.Join(t.TempDir(), "f")
	if _, err := bob.SaveAttachment(ctx, MessageRef{ID: id}, out, SaveOptions{}); err != nil || !bytes.Equal(fileSum(t, out), sum) {
		t.Fatalf("save: %v", err)
	}

	big, _ := writeFile(t, t.TempDir(), "big.bin", 2<<20, 4)
	n := len(alice.history(Direct("bob")))
	_, err = alice.SendFile(ctx, "bob", big)
	if err == nil || !strings.Contains(err.Error(), mediaapi.CodeTooLarge) || !strings.Contains(err.Error(), "up to about") {
		t.Fatalf("too large: %v", err)
	}
	if len(alice.history(Direct("bob"))) != n {
		t.Fatal("a refused file left a message behind")
	}

	// The reader ends early: nothing is sent.
	_, err = alice.SendReader(ctx, "bob", io.LimitReader(strings.NewReader(strings.Repeat("x", 1000)), 500), 1000, "short.txt", "text/plain")
	if !errors.Is(err, ErrFileChanged) {
		t.Fatalf("short reader: %v", err)
	}
	if len(alice.history(Direct("bob"))) != n {
		t.Fatal("a failed upload left a message behind")
	}
	// Unknown recipients and missing files are refused before uploading.
	if _, err := alice.SendFile(ctx, "nobody", src); !errors.Is(err, ErrUnknownAccount) {
		t.Fatalf("unknown account: %v", err)
	}
	if _, err := alice.SendFile(ctx, "bob", filepath.Join(t.TempDir(), "missing")); !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("missing file: %v", err)
	}
	if _, err := alice.SendFile(ctx, "bob", t.TempDir()); err == nil {
		t.Fatal("sent a directory")
	}
}

func TestPaddedSize(t *testing.T) {
	prev := int64(0)
	for _, n := range []int64{0, 1, 540, 541, 542, 1000, 1 << 20, 5 << 20, 200 << 20, 1 << 40} {
		p := PaddedSize(n)
		if p < n || p < 541 || p < prev {
			t.Fatalf("PaddedSize(%d) = %d", n, p)
		}
		if n > 1000 && float64(p) > float64(n)*1.05+1 {
			t.Fatalf("PaddedSize(%d) = %d pads more than 5%%", n, p)
		}
		prev = p
	}
	// Sizes in one bucket pad alike: Signal's first buckets above 541.
	if PaddedSize(542) != 568 || PaddedSize(568) != 568 || PaddedSize(569) != 596 {
		t.Fatalf("buckets: %d %d %d", PaddedSize(542), PaddedSize(568), PaddedSize(569))
	}
	for _, limit := range []int64{64, 79, 80, 1000, 100 << 20} {
		p := maxPlainFor(limit)
		if crypto.EncryptedSize(p) > limit || crypto.EncryptedSize(p+1) <= limit {
			t.Fatalf("maxPlainFor(%d) = %d (encrypted %d)", limit, p, crypto.EncryptedSize(p))
		}
	}
}

func TestSafeFileName(t *testing.T) {
	for in, want := range map[string]string{
		"report.pdf":             "report.pdf",
		"../../etc/passwd":       "passwd",
		`C:\Users\x\evil.exe`:    "evil.exe",
		".bashrc":                "bashrc",
		"..":                     "attachment.txt",
		"":                       "attachment.txt",
		"a\x00b\nc.txt":          "abc.txt",
		"what?.txt":              "what_.txt",
		strings.Repeat("é", 300): strings.Repeat("é", 100),
	} {
		got := SafeFileName(&Attachment{FileName: in, ContentType: "text/plain; charset=utf-8"})
		if got != want {
			t.Errorf("SafeFileName(%q) = %q, want %q", in, got, want)
		}
	}
}

func FuzzSafeFileName(f *testing.F) {
	for _, s := range []string{"report.pdf", "../x", ".", "..", "a/b\\c", "\x00", strings.Repeat("ü", 200) + ".jpeg"} {
		f.Add(s, "image/png")
	}
	f.Fuzz(func(t *testing.T, name, ct string) {
		got := SafeFileName(&Attachment{FileName: name, ContentType: ct})
		if got == "" || got == "." || got == ".." || strings.HasPrefix(got, ".") || strings.ContainsAny(got, "/\\\x00") ||
			len(got) > 200 || !utf8.ValidString(got) || filepath.Base(got) != got {
			t.Fatalf("SafeFileName(%q) = %q", name, got)
		}
	})
}

func TestParseMessageRef(t *testing.T) {
	id := "8d382ec7aa06b99a87fd40f4bc14d485"
	r, err := ParseMessageRef(id)
	if err != nil || r.Sender != "" || r.ID.String() != id {
		t.Fatalf("%+v %v", r, err)
	}
	r, err = ParseMessageRef("Alice/" + id)
	if err != nil || r.Sender != "alice" || r.String() != "alice/"+id {
		t.Fatalf("%+v %v", r, err)
	}
	for _, bad := range []string{"", "xyz", id + "00", "a/" + id, "alice/", "/" + id} {
		if _, err := ParseMessageRef(bad); err == nil {
			t.Errorf("ParseMessageRef(%q) accepted", bad)
		}
	}
}

func TestDetectContentType(t *testing.T) {
	for _, c := range []struct {
		name string
		head []byte
		want string
	}{
		{"x.png", testImage(t, 2, 2), "image/png"},
		{"x.bin", testImage(t, 2, 2), "image/png"}, // content wins over a wrong extension
		{"x.pdf", []byte("%PDF-1.7 ..."), "application/pdf"},
		{"x.json", []byte(`{"a":1}`), "application/json"},
		{"x", []byte{0, 1, 2, 3}, "application/octet-stream"},
	} {
		if got := detectContentType(c.name, c.head); got != c.want {
			t.Errorf("detectContentType(%q) = %q, want %q", c.name, got, c.want)
		}
	}
}

// makeThumbnail never upscales and keeps the aspect ratio.
func TestMakeThumbnail(t *testing.T) {
	for _, c := range []struct{ w, h, tw, th int }{{16, 8, 16, 8}, {1000, 10, 128, 1}, {300, 600, 64, 128}} {
		img := image.NewGray(image.Rect(0, 0, c.w, c.h))
		b, err := makeThumbnail(img)
		if err != nil {
			t.Fatal(err)
		}
		th, err := jpeg.Decode(bytes.NewReader(b))
		if err != nil || th.Bounds().Dx() != c.tw || th.Bounds().Dy() != c.th {
			t.Fatalf("%d×%d → %v, %v", c.w, c.h, th.Bounds(), err)
		}
	}
	// Not an image: no thumbnail and no error.
	th, w, h, err := imageInfo(strings.NewReader("not a png"), nil)
	if th != nil || w != 0 || h != 0 || err != nil {
		t.Fatal("a non-image got a thumbnail")
	}
}

func FuzzParseMessageRef(f *testing.F) {
	for _, s := range []string{"8d382ec7aa06b99a87fd40f4bc14d485", "alice/8d382ec7aa06b99a87fd40f4bc14d485", "/", "x/y/z", ""} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		r, err := ParseMessageRef(s)
		if err != nil {
			return
		}
		back, err := ParseMessageRef(r.String())
		if err != nil || back != r {
			t.Fatalf("%q → %+v → %q → %+v, %v", s, r, r.String(), back, err)
		}
	})
}

// BenchmarkFileRoundTrip: SendFile and SaveAttachment of a 16 MiB file
// through an in-process hush-server on the disk backend (loopback):
// padding, encryption, upload, message, download, verification,
// decryption.
func BenchmarkFileRoundTrip(b *testing.B) {
	ctx := context.Background()
	dir := b.TempDir()
	srv := apptest.Start(b, func(c *app.AllInOneConfig) { c.Relay.Media.QuotaBytes = 1 << 40 })
	join := func(name string) *party {
		p := openParty(b, testConfig(b, filepath.Join(dir, name)), name)
		if err := p.Register(ctx, srv.URL(), name); err != nil {
			b.Fatal(err)
		}
		p.waitConnected()
		return p
	}
	alice, bob := join("alice"), join("bob")
	const size = 16 << 20
	src := filepath.Join(dir, "f.bin")
	if err := os.WriteFile(src, bytes.Repeat([]byte("0123456789abcdef"), size/16), 0o600); err != nil {
		b.Fatal(err)
	}
	b.SetBytes(size)
	b.ResetTimer()
	for b.Loop() {
		id, err := alice.SendFile(ctx, "bob", src)
		if err != nil {
			b.Fatal(err)
		}
		bob.waitFor("file", 1, attachmentFrom2("alice", id))
		out := filepath.Join(dir, "out")
		if _, err := bob.SaveAttachment(ctx, MessageRef{ID: id}, out, SaveOptions{Overwrite: true}); err != nil {
			b.Fatal(err)
		}
	}
}
