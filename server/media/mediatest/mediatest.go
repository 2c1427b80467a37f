// Package mediatest is the conformance suite every media.Store backend
// runs, so the disk and the S3 backend keep exactly the same promises
// (see media.Store): exact-size single-use uploads, atomic visibility,
// expiring and tamper-proof URLs, Range downloads, stat/delete/sweep.
//
// Besides the store-level checks it runs the whole path a client takes —
// media.Service over HTTP, mediaclient, and the crypto package's
// attachment cipher — so that what is stored is real ciphertext: round
// trips of 0 B, 1 B, 5 MiB and 200 MiB compared by SHA-256 with the
// client's heap growth bounded, a scan of the stored object for a
// plaintext marker, tampered and truncated objects refused by decryption,
// and interrupted downloads resumed with Range.
//
// A backend runs it from its own tests:
//
//	func TestStore(t *testing.T) {
//		t.Run("disk", func(t *testing.T) { mediatest.Run(t, openDisk) })
//	}
package mediatest

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/hushchat/hush/crypto"
	"github.com/hushchat/hush/keyserver/authtoken"
	"github.com/hushchat/hush/server/media"
	"github.com/hushchat/hush/server/media/mediaapi"
	"github.com/hushchat/hush/server/media/mediaclient"
)

// Harness is one backend on fresh, empty storage.
type Harness struct {
	// Store is the backend under test.
	Store media.Store
	// Clock is the clock Store signs URLs with; the suite's Service uses
	// it too.
	Clock func() time.Time
	// Wait lets d pass as far as URL expiry is concerned: a backend with
	// a fake clock advances it, one signing with real time sleeps.
	Wait func(d time.Duration)
	// Raw opens the stored bytes of key directly, bypassing URLs.
	Raw func(ctx context.Context, key string) (io.ReadCloser, error)
	// Replace overwrites the stored bytes of key directly, as a hostile or
	// broken storage would.
	Replace func(ctx context.Context, key string, data []byte) error
}

// Opener returns a Harness on fresh storage for t; it registers its own
// cleanup.
type Opener func(t testing.TB) Harness

// Limits of the suite's Service: room for the 200 MiB round trip.
const (
	suiteMaxUpload = 256 << 20
	suiteQuota     = 4 << 30
)

// Run runs the suite. Subtests run one after another: the 200 MiB test
// measures heap growth, which parallel subtests would disturb.
func Run(t *testing.T, open Opener) {
	tests := []struct {
		name string
		fn   func(t *testing.T, e *env)
	}{
		{"RawRoundTrip", testRawRoundTrip},
		{"RoundTrip/0B", roundTrip(0)},
		{"RoundTrip/1B", roundTrip(1)},
		{"RoundTrip/5MiB", roundTrip(5 << 20)},
		{"RoundTrip/200MiB", roundTrip(200 << 20)},
		{"GroupAttachment", testGroupAttachment},
		{"Tampered", testTampered},
		{"TruncatedUpload", testTruncatedUpload},
		{"WrongBodyLength", testWrongBodyLength},
		{"Oversize", testOversize},
		{"ExpiredURL", testExpiredURL},
		{"WrongSignature", testWrongSignature},
		{"OtherAccountsSlot", testOtherAccountsSlot},
		{"NoOverwrite", testNoOverwrite},
		{"RangeResume", testRangeResume},
		{"StatDeleteSweep", testStatDeleteSweep},
		{"ConcurrentUploads", testConcurrentUploads},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			tc.fn(t, newEnv(t, open))
		})
	}
}

// env is one subtest's backend, relay and clients.
type env struct {
	t      testing.TB
	h      Harness
	ctx    context.Context
	srv    *httptest.Server
	svc    *media.Service
	priv   ed25519.PrivateKey
	client map[string]*mediaclient.Client
	tokens map[string]string
}

var accounts = []string{"alice", "bob", "carol"}

func newEnv(t testing.TB, open Opener) *env {
	t.Helper()
	h := open(t)
	pub, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	svc, err := media.New(media.Config{
		Store:      h.Store,
		TokenKey:   pub,
		MaxUpload:  suiteMaxUpload,
		QuotaBytes: suiteQuota,
		Clock:      h.Clock,
		Registerer: prometheus.NewRegistry(),
	})
	if err != nil {
		t.Fatalf("media.New: %v", err)
	}
	srv := httptest.NewServer(svc.Handler())
	t.Cleanup(srv.Close)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	t.Cleanup(cancel)
	e := &env{t: t, h: h, ctx: ctx, srv: srv, svc: svc, priv: priv,
		client: map[string]*mediaclient.Client{}, tokens: map[string]string{}}
	for _, a := range accounts {
		e.tokens[a] = e.token(a)
		c, err := mediaclient.New(srv.URL, mediaclient.StaticToken(e.tokens[a]), mediaclient.Options{})
		if err != nil {
			t.Fatal(err)
		}
		e.client[a] = c
	}
	return e
}

func (e *env) token(account string) string {
	now := e.h.Clock()
	tok, err := authtoken.Issue(e.priv, authtoken.Claims{Account: account, Device: 1, IssuedAt: now, Expiry: now.Add(24 * time.Hour)})
	if err != nil {
		e.t.Fatal(err)
	}
	return tok
}

// encrypted is an attachment encrypted and uploaded by the suite.
type encrypted struct {
	key, digest []byte
	objectKey   string
	plainSize   int64
	blobSize    int64
	plainSum    []byte
	blobSum     []byte
}

// upload encrypts a generated plaintext of size bytes and uploads it as
// account, streaming; progress may be nil.
func (e *env) upload(account string, seed uint64, size int64, progress mediaclient.Progress) encrypted {
	e.t.Helper()
	key, err := crypto.NewAttachmentKey()
	if err != nil {
		e.t.Fatal(err)
	}
	src := newPlain(seed, size)
	enc, err := crypto.EncryptAttachment(src, key)
	if err != nil {
		e.t.Fatal(err)
	}
	blobSize := crypto.EncryptedSize(size)
	blobSum := sha256.New()
	slot, err := e.client[account].Upload(e.ctx, blobSize, io.TeeReader(enc, blobSum), progress)
	if err != nil {
		e.t.Fatalf("upload %d bytes as %s: %v", size, account, err)
	}
	digest, err := enc.Digest()
	if err != nil {
		e.t.Fatalf("digest after upload: %v", err)
	}
	return encrypted{key: key, digest: digest, objectKey: slot.ObjectKey, plainSize: size, blobSize: blobSize,
		plainSum: src.Sum(), blobSum: blobSum.Sum(nil)}
}

// download fetches a.objectKey as account into a file and returns its
// path.
func (e *env) download(account string, a encrypted, progress mediaclient.Progress) string {
	e.t.Helper()
	path := filepath.Join(e.t.TempDir(), "blob.part")
	n, err := e.client[account].DownloadFile(e.ctx, a.objectKey, path, progress)
	if err != nil {
		e.t.Fatalf("download as %s: %v", account, err)
	}
	if n != a.blobSize {
		e.t.Fatalf("downloaded %d bytes, uploaded %d", n, a.blobSize)
	}
	return path
}

// decrypt verifies and decrypts the blob at path, returning the
// plaintext's SHA-256 and length.
func decrypt(path string, a encrypted) ([]byte, int64, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, 0, err
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return nil, 0, err
	}
	sum := sha256.New()
	n, err := crypto.DecryptAttachment(sum, f, fi.Size(), a.key, a.digest)
	return sum.Sum(nil), n, err
}

func fileSum(t testing.TB, path string) []byte {
	t.Helper()
	f, err := os.Open(path)
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

// scanStored reads the stored object and reports its SHA-256 and whether
// it contains Marker.
func (e *env) scanStored(key string) (sum []byte, size int64, found bool) {
	e.t.Helper()
	rc, err := e.h.Raw(e.ctx, key)
	if err != nil {
		e.t.Fatalf("read stored object: %v", err)
	}
	defer rc.Close()
	s := newScanner()
	if _, err := io.Copy(s, rc); err != nil {
		e.t.Fatalf("read stored object: %v", err)
	}
	return s.sum.Sum(nil), s.n, s.found
}

// heapWatch samples the heap from progress callbacks.
type heapWatch struct {
	mu       sync.Mutex
	base     uint64
	peak     uint64
	next     int64
	every    int64
	samples  int
	progress int64
}

func newHeapWatch(every int64) *heapWatch {
	runtime.GC()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	return &heapWatch{base: ms.HeapAlloc, peak: ms.HeapAlloc, every: every, next: every}
}

func (w *heapWatch) observe(done, _ int64) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.progress = done
	if done < w.next {
		return
	}
	w.next = done + w.every
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	w.samples++
	if ms.HeapAlloc > w.peak {
		w.peak = ms.HeapAlloc
	}
}

func (w *heapWatch) growth() uint64 {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.peak < w.base {
		return 0
	}
	return w.peak - w.base
}

// maxHeapGrowth bounds the heap growth of a streaming round trip: a few
// MiB of buffers, against the 200 MiB a buffering implementation needs.
const maxHeapGrowth = 32 << 20

func roundTrip(size int64) func(t *testing.T, e *env) {
	return func(t *testing.T, e *env) {
		up := newHeapWatch(8 << 20)
		a := e.upload("alice", uint64(size)+1, size, up.observe)
		if a.blobSize != crypto.EncryptedSize(size) {
			t.Fatalf("blob size %d", a.blobSize)
		}

		// What the server holds is the ciphertext, byte for byte, with no
		// plaintext in it.
		storedSum, storedSize, found := e.scanStored(a.objectKey)
		if storedSize != a.blobSize || !bytes.Equal(storedSum, a.blobSum) {
			t.Fatalf("stored object: %d bytes sha256 %x; uploaded %d bytes sha256 %x", storedSize, storedSum, a.blobSize, a.blobSum)
		}
		if size >= int64(len(Marker)) && found {
			t.Fatal("the stored object contains the plaintext marker")
		}
		info, err := e.h.Store.Stat(e.ctx, a.objectKey)
		if err != nil || info.Size != a.blobSize {
			t.Fatalf("Stat = %+v, %v; want size %d", info, err, a.blobSize)
		}

		down := newHeapWatch(8 << 20)
		path := e.download("bob", a, down.observe)
		if got := fileSum(t, path); !bytes.Equal(got, a.blobSum) {
			t.Fatalf("downloaded blob sha256 %x, uploaded %x", got, a.blobSum)
		}
		sum, n, err := decrypt(path, a)
		if err != nil {
			t.Fatalf("decrypt: %v", err)
		}
		if n != size || !bytes.Equal(sum, a.plainSum) {
			t.Fatalf("decrypted %d bytes sha256 %x; sent %d bytes sha256 %x", n, sum, size, a.plainSum)
		}
		if size >= 64<<20 {
			if up.samples == 0 || down.samples == 0 {
				t.Fatalf("progress reported no samples (upload %d, download %d)", up.samples, down.samples)
			}
			if g := up.growth(); g > maxHeapGrowth {
				t.Errorf("heap grew by %d MiB during a %d MiB upload: not streaming", g>>20, size>>20)
			}
			if g := down.growth(); g > maxHeapGrowth {
				t.Errorf("heap grew by %d MiB during a %d MiB download: not streaming", g>>20, size>>20)
			}
			t.Logf("heap growth: upload %.1f MiB, download %.1f MiB", float64(up.growth())/(1<<20), float64(down.growth())/(1<<20))
		}
	}
}

// rawDo sends one request to a presigned URL and returns the status and
// the start of the body.
func (e *env) rawDo(method, u string, hdr http.Header, body []byte, contentLength int64) (int, string) {
	e.t.Helper()
	var rd io.Reader
	if body != nil {
		rd = bytes.NewReader(body)
	}
	req, err := http.NewRequestWithContext(e.ctx, method, u, rd)
	if err != nil {
		e.t.Fatal(err)
	}
	for k, vs := range hdr {
		req.Header[k] = vs
	}
	if body != nil {
		req.ContentLength = contentLength
		if contentLength == 0 {
			req.Body = http.NoBody
		}
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return 0, err.Error()
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
	return resp.StatusCode, string(b)
}

func (e *env) abs(r media.Request) string {
	if strings.HasPrefix(r.URL, "/") {
		return e.srv.URL + r.URL
	}
	return r.URL
}

func (e *env) presignPut(key string, size int64, ttl time.Duration) (string, http.Header) {
	e.t.Helper()
	r, err := e.h.Store.PresignUpload(e.ctx, key, size, ttl)
	if err != nil {
		e.t.Fatalf("PresignUpload: %v", err)
	}
	if r.Method != http.MethodPut {
		e.t.Fatalf("upload method %q", r.Method)
	}
	return e.abs(r), r.Header
}

func (e *env) presignGet(key string, ttl time.Duration) (string, http.Header) {
	e.t.Helper()
	r, err := e.h.Store.PresignDownload(e.ctx, key, ttl)
	if err != nil {
		e.t.Fatalf("PresignDownload: %v", err)
	}
	return e.abs(r), r.Header
}

func newKey(t testing.TB) string {
	k, err := media.NewObjectKey()
	if err != nil {
		t.Fatal(err)
	}
	return k
}

func randBytes(t testing.TB, n int) []byte {
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	return b
}

// putRaw uploads data under a fresh key through the store's URL.
func (e *env) putRaw(data []byte) string {
	e.t.Helper()
	key := newKey(e.t)
	u, h := e.presignPut(key, int64(len(data)), time.Minute)
	if st, body := e.rawDo(http.MethodPut, u, h, data, int64(len(data))); st/100 != 2 {
		e.t.Fatalf("PUT %d bytes: %d %s", len(data), st, body)
	}
	return key
}

func (e *env) getRaw(key string, rangeHdr string) (int, []byte, http.Header) {
	e.t.Helper()
	u, h := e.presignGet(key, time.Minute)
	req, err := http.NewRequestWithContext(e.ctx, http.MethodGet, u, nil)
	if err != nil {
		e.t.Fatal(err)
	}
	for k, vs := range h {
		req.Header[k] = vs
	}
	if rangeHdr != "" {
		req.Header.Set("Range", rangeHdr)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		e.t.Fatalf("GET: %v", err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		e.t.Fatalf("GET body: %v", err)
	}
	return resp.StatusCode, b, resp.Header
}

// assertAbsent checks that key holds no object.
func (e *env) assertAbsent(key, why string) {
	e.t.Helper()
	if info, err := e.h.Store.Stat(e.ctx, key); !errors.Is(err, media.ErrNotFound) {
		e.t.Fatalf("%s: Stat = %+v, %v; want ErrNotFound", why, info, err)
	}
}

func testRawRoundTrip(t *testing.T, e *env) {
	for _, n := range []int{1, 2, 64<<10 + 3} {
		data := randBytes(t, n)
		key := e.putRaw(data)
		info, err := e.h.Store.Stat(e.ctx, key)
		if err != nil || info.Size != int64(n) {
			t.Fatalf("%d bytes: Stat = %+v, %v", n, info, err)
		}
		if info.Created.IsZero() {
			t.Fatalf("%d bytes: Stat reports no creation time", n)
		}
		st, got, _ := e.getRaw(key, "")
		if st != http.StatusOK || !bytes.Equal(got, data) {
			t.Fatalf("%d bytes: GET = %d with %d bytes (sha256 %x), want 200 with sha256 %x", n, st, len(got), sha256.Sum256(got), sha256.Sum256(data))
		}
	}
	e.assertAbsent(newKey(t), "fresh key")
}

func testGroupAttachment(t *testing.T, e *env) {
	a := e.upload("alice", 7, 300<<10, nil)
	for _, member := range []string{"alice", "bob", "carol"} {
		path := e.download(member, a, nil)
		sum, n, err := decrypt(path, a)
		if err != nil || n != a.plainSize || !bytes.Equal(sum, a.plainSum) {
			t.Fatalf("%s: decrypt = %d bytes sha256 %x, %v; want %d bytes sha256 %x", member, n, sum, err, a.plainSize, a.plainSum)
		}
	}
	// One upload served all three: the store holds one object.
	if _, err := e.h.Store.Stat(e.ctx, a.objectKey); err != nil {
		t.Fatal(err)
	}
}

func testTampered(t *testing.T, e *env) {
	a := e.upload("alice", 11, 100<<10, nil)
	rc, err := e.h.Raw(e.ctx, a.objectKey)
	if err != nil {
		t.Fatal(err)
	}
	orig, err := io.ReadAll(rc)
	rc.Close()
	if err != nil {
		t.Fatal(err)
	}
	cases := []struct {
		name string
		data []byte
		want []error
	}{
		{"flipped byte", func() []byte {
			b := bytes.Clone(orig)
			b[len(b)/2] ^= 0x01
			return b
		}(), []error{crypto.ErrBadMAC}},
		{"truncated", orig[:len(orig)/2], []error{crypto.ErrTruncated, crypto.ErrBadMAC}},
		{"swapped for another blob", func() []byte {
			other := e.upload("bob", 12, 100<<10, nil)
			rc, err := e.h.Raw(e.ctx, other.objectKey)
			if err != nil {
				t.Fatal(err)
			}
			defer rc.Close()
			b, err := io.ReadAll(rc)
			if err != nil {
				t.Fatal(err)
			}
			return b
		}(), []error{crypto.ErrBadMAC, crypto.ErrBadDigest}},
	}
	for _, tc := range cases {
		if err := e.h.Replace(e.ctx, a.objectKey, tc.data); err != nil {
			t.Fatalf("%s: replace: %v", tc.name, err)
		}
		path := filepath.Join(t.TempDir(), "blob.part")
		if _, err := e.client["bob"].DownloadFile(e.ctx, a.objectKey, path, nil); err != nil {
			t.Fatalf("%s: download: %v", tc.name, err)
		}
		var plain bytes.Buffer
		f, err := os.Open(path)
		if err != nil {
			t.Fatal(err)
		}
		fi, _ := f.Stat()
		n, err := crypto.DecryptAttachment(&plain, f, fi.Size(), a.key, a.digest)
		f.Close()
		ok := false
		for _, w := range tc.want {
			ok = ok || errors.Is(err, w)
		}
		if !ok {
			t.Fatalf("%s: decrypt error = %v, want one of %v", tc.name, err, tc.want)
		}
		if n != 0 || plain.Len() != 0 {
			t.Fatalf("%s: %d bytes of plaintext released from a bad blob", tc.name, plain.Len())
		}
	}
}

// testTruncatedUpload cuts the connection halfway through an upload: the
// object must not appear.
func testTruncatedUpload(t *testing.T, e *env) {
	const size = 256 << 10
	key := newKey(t)
	u, h := e.presignPut(key, size, time.Minute)
	pu, err := url.Parse(u)
	if err != nil {
		t.Fatal(err)
	}
	conn, err := net.Dial("tcp", pu.Host)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	var hb strings.Builder
	fmt.Fprintf(&hb, "PUT %s HTTP/1.1\r\nHost: %s\r\nContent-Length: %d\r\n", pu.RequestURI(), pu.Host, size)
	for k, vs := range h {
		for _, v := range vs {
			fmt.Fprintf(&hb, "%s: %s\r\n", k, v)
		}
	}
	hb.WriteString("\r\n")
	if _, err := io.WriteString(conn, hb.String()); err != nil {
		t.Fatal(err)
	}
	if _, err := conn.Write(randBytes(t, size/2)); err != nil {
		t.Fatal(err)
	}
	// Half-close and wait until the server gives up on the request.
	conn.(*net.TCPConn).CloseWrite()
	conn.SetReadDeadline(time.Now().Add(time.Minute))
	io.Copy(io.Discard, conn)
	e.assertAbsent(key, "after a truncated upload")
	if _, err := e.client["alice"].Resolve(e.ctx, key); !isCode(err, mediaapi.CodeNotFound) {
		t.Fatalf("resolve after a truncated upload: %v, want %s", err, mediaapi.CodeNotFound)
	}
	// A retry with a new slot succeeds. (Whether the broken upload's own
	// URL may be reused is the backend's business.)
	data := randBytes(t, size)
	if _, err := e.client["alice"].Upload(e.ctx, size, bytes.NewReader(data), nil); err != nil {
		t.Fatalf("upload after a truncated one: %v", err)
	}
}

// testWrongBodyLength gives the client a body that does not match the
// slot: the upload fails before completing, and nothing is stored.
func testWrongBodyLength(t *testing.T, e *env) {
	for _, tc := range []struct {
		name     string
		slot, n  int64
		want     error
		minBytes int64
	}{
		{"short", 200 << 10, 100 << 10, mediaclient.ErrBodyTooShort, 0},
		{"long", 100 << 10, 200 << 10, mediaclient.ErrBodyTooLong, 0},
		{"long by one byte", 100 << 10, 100<<10 + 1, mediaclient.ErrBodyTooLong, 0},
	} {
		slot, err := e.client["alice"].RequestSlot(e.ctx, tc.slot)
		if err != nil {
			t.Fatal(err)
		}
		err = e.client["alice"].Put(e.ctx, slot, bytes.NewReader(randBytes(t, int(tc.n))), nil)
		if !errors.Is(err, tc.want) {
			t.Fatalf("%s: Put = %v, want %v", tc.name, err, tc.want)
		}
		e.assertAbsent(slot.ObjectKey, tc.name)
	}
}

func testOversize(t *testing.T, e *env) {
	// The relay refuses a slot above the limit, naming the limit.
	_, err := e.client["alice"].RequestSlot(e.ctx, suiteMaxUpload+1)
	var me *mediaclient.Error
	if !errors.As(err, &me) || me.Status != http.StatusRequestEntityTooLarge || me.Code != mediaapi.CodeTooLarge || me.Limit != suiteMaxUpload {
		t.Fatalf("slot above the limit: %v, want 413 %s with limit %d", err, mediaapi.CodeTooLarge, suiteMaxUpload)
	}
	if !strings.Contains(me.Message, strconv.Itoa(suiteMaxUpload)) {
		t.Fatalf("the error does not name the limit: %q", me.Message)
	}
	// The store refuses more bytes than the URL was signed for.
	const size = 64 << 10
	key := newKey(t)
	u, h := e.presignPut(key, size, time.Minute)
	st, body := e.rawDo(http.MethodPut, u, h, randBytes(t, size+1), size+1)
	if st/100 != 4 {
		t.Fatalf("PUT of %d bytes to a %d-byte URL: %d %s, want a 4xx refusal", size+1, size, st, body)
	}
	e.assertAbsent(key, "after an oversize upload")
	st, body = e.rawDo(http.MethodPut, u, h, randBytes(t, size-1), size-1)
	if st/100 != 4 {
		t.Fatalf("PUT of %d bytes to a %d-byte URL: %d %s, want a 4xx refusal", size-1, size, st, body)
	}
	e.assertAbsent(key, "after an undersize upload")
	// The smallest slot is bounded too.
	key = newKey(t)
	u, h = e.presignPut(key, 1, time.Minute)
	if st, body := e.rawDo(http.MethodPut, u, h, []byte{1, 2}, 2); st/100 != 4 {
		t.Fatalf("PUT of 2 bytes to a 1-byte URL: %d %s, want a 4xx refusal", st, body)
	}
	e.assertAbsent(key, "after a 2-byte upload to a 1-byte URL")
	// Empty uploads do not exist: an encrypted attachment never is empty.
	if _, err := e.h.Store.PresignUpload(e.ctx, newKey(t), 0, time.Minute); err == nil {
		t.Fatal("PresignUpload of 0 bytes succeeded")
	}
	if _, err := e.client["alice"].RequestSlot(e.ctx, 0); !isCode(err, mediaapi.CodeInvalidSize) {
		t.Fatalf("slot of 0 bytes: %v, want %s", err, mediaapi.CodeInvalidSize)
	}
}

func testExpiredURL(t *testing.T, e *env) {
	const ttl = time.Second
	data := randBytes(t, 1000)
	stored := e.putRaw(data)
	key := newKey(t)
	putURL, putHdr := e.presignPut(key, int64(len(data)), ttl)
	getURL, getHdr := e.presignGet(stored, ttl)
	e.h.Wait(ttl + 1500*time.Millisecond)

	st, body := e.rawDo(http.MethodPut, putURL, putHdr, data, int64(len(data)))
	if st != http.StatusForbidden {
		t.Fatalf("PUT on an expired URL: %d %s, want 403", st, body)
	}
	e.assertAbsent(key, "after a PUT on an expired URL")
	st, body = e.rawDo(http.MethodGet, getURL, getHdr, nil, 0)
	if st != http.StatusForbidden {
		t.Fatalf("GET on an expired URL: %d %s, want 403", st, body)
	}
	// The client reports it as url_expired (mapped from S3's answer too).
	c := e.client["alice"]
	err := c.Put(e.ctx, mediaapi.Slot{ObjectKey: key, UploadURL: putURL, Method: http.MethodPut, Headers: flat(putHdr), Size: int64(len(data))},
		bytes.NewReader(data), nil)
	if !isCode(err, mediaapi.CodeURLExpired) {
		t.Fatalf("client Put on an expired URL: %v, want %s", err, mediaapi.CodeURLExpired)
	}
}

func flat(h http.Header) map[string]string {
	m := map[string]string{}
	for k, vs := range h {
		m[k] = vs[0]
	}
	return m
}

func isCode(err error, code string) bool {
	var me *mediaclient.Error
	return errors.As(err, &me) && me.Code == code
}

// mutateSignature flips one character of every signature parameter of u.
func mutateSignature(t testing.TB, u string) string {
	t.Helper()
	pu, err := url.Parse(u)
	if err != nil {
		t.Fatal(err)
	}
	q := pu.Query()
	changed := false
	for k, vs := range q {
		lk := strings.ToLower(k)
		if !strings.Contains(lk, "sig") || strings.Contains(lk, "signedheaders") {
			continue
		}
		v := []byte(vs[0])
		if v[0] == 'a' {
			v[0] = 'b'
		} else {
			v[0] = 'a'
		}
		q.Set(k, string(v))
		changed = true
	}
	if !changed {
		t.Fatalf("no signature parameter in the URL's query")
	}
	pu.RawQuery = q.Encode()
	return pu.String()
}

func testWrongSignature(t *testing.T, e *env) {
	data := randBytes(t, 4096)
	key := newKey(t)
	u, h := e.presignPut(key, int64(len(data)), time.Minute)
	st, body := e.rawDo(http.MethodPut, mutateSignature(t, u), h, data, int64(len(data)))
	if st != http.StatusForbidden {
		t.Fatalf("PUT with a wrong signature: %d %s, want 403", st, body)
	}
	e.assertAbsent(key, "after a PUT with a wrong signature")

	stored := e.putRaw(data)
	gu, gh := e.presignGet(stored, time.Minute)
	st, body = e.rawDo(http.MethodGet, mutateSignature(t, gu), gh, nil, 0)
	if st != http.StatusForbidden {
		t.Fatalf("GET with a wrong signature: %d %s, want 403", st, body)
	}
	// A download URL is not an upload URL.
	st, body = e.rawDo(http.MethodPut, gu, gh, data, int64(len(data)))
	if st/100 != 4 {
		t.Fatalf("PUT on a download URL: %d %s, want a 4xx refusal", st, body)
	}
	if st, got, _ := e.getRaw(stored, ""); st != http.StatusOK || !bytes.Equal(got, data) {
		t.Fatalf("object changed after refused requests: %d, %d bytes", st, len(got))
	}
}

// testOtherAccountsSlot: bob cannot use his slot's URL to write alice's
// object, before or after she uploads.
func testOtherAccountsSlot(t *testing.T, e *env) {
	data := randBytes(t, 8192)
	slotA, err := e.client["alice"].RequestSlot(e.ctx, int64(len(data)))
	if err != nil {
		t.Fatal(err)
	}
	slotB, err := e.client["bob"].RequestSlot(e.ctx, int64(len(data)))
	if err != nil {
		t.Fatal(err)
	}
	if slotA.ObjectKey == slotB.ObjectKey || !strings.Contains(slotB.UploadURL, slotB.ObjectKey) {
		t.Fatalf("slots: %q and %q", slotA.ObjectKey, slotB.ObjectKey)
	}
	// Bob's URL, re-pointed at Alice's key.
	hijack := slotB
	hijack.ObjectKey = slotA.ObjectKey
	hijack.UploadURL = strings.Replace(slotB.UploadURL, slotB.ObjectKey, slotA.ObjectKey, 1)
	evil := randBytes(t, len(data))
	err = e.client["bob"].Put(e.ctx, hijack, bytes.NewReader(evil), nil)
	if !isCode(err, mediaapi.CodeBadSignature) {
		t.Fatalf("bob's URL pointed at alice's key: %v, want %s", err, mediaapi.CodeBadSignature)
	}
	e.assertAbsent(slotA.ObjectKey, "after bob's attempt")

	if err := e.client["alice"].Put(e.ctx, slotA, bytes.NewReader(data), nil); err != nil {
		t.Fatalf("alice's upload: %v", err)
	}
	err = e.client["bob"].Put(e.ctx, hijack, bytes.NewReader(evil), nil)
	if !isCode(err, mediaapi.CodeBadSignature) {
		t.Fatalf("bob's URL pointed at alice's uploaded key: %v, want %s", err, mediaapi.CodeBadSignature)
	}
	if st, got, _ := e.getRaw(slotA.ObjectKey, ""); st != http.StatusOK || !bytes.Equal(got, data) {
		t.Fatalf("alice's object changed: %d, %d bytes", st, len(got))
	}
	// Bob's own slot still works for his own key.
	if err := e.client["bob"].Put(e.ctx, slotB, bytes.NewReader(evil), nil); err != nil {
		t.Fatalf("bob's own upload: %v", err)
	}
}

// testNoOverwrite: a slot's URL uploads once; replaying it cannot replace
// the object.
func testNoOverwrite(t *testing.T, e *env) {
	data := randBytes(t, 10_000)
	slot, err := e.client["alice"].RequestSlot(e.ctx, int64(len(data)))
	if err != nil {
		t.Fatal(err)
	}
	if err := e.client["alice"].Put(e.ctx, slot, bytes.NewReader(data), nil); err != nil {
		t.Fatal(err)
	}
	err = e.client["alice"].Put(e.ctx, slot, bytes.NewReader(randBytes(t, len(data))), nil)
	var me *mediaclient.Error
	if !errors.As(err, &me) || me.Status != http.StatusPreconditionFailed || me.Code != mediaapi.CodeExists {
		t.Fatalf("second upload on the same URL: %v, want 412 %s", err, mediaapi.CodeExists)
	}
	if st, got, _ := e.getRaw(slot.ObjectKey, ""); st != http.StatusOK || !bytes.Equal(got, data) {
		t.Fatalf("object changed by a replayed URL: %d, %d bytes", st, len(got))
	}
}

// failingWriter fails after limit bytes, like a download cut short.
type failingWriter struct {
	w     io.Writer
	limit int64
	n     int64
}

var errCut = errors.New("cut")

func (f *failingWriter) Write(p []byte) (int, error) {
	if f.n+int64(len(p)) > f.limit {
		k := f.limit - f.n
		n, _ := f.w.Write(p[:k])
		f.n += int64(n)
		return n, errCut
	}
	n, err := f.w.Write(p)
	f.n += int64(n)
	return n, err
}

func testRangeResume(t *testing.T, e *env) {
	a := e.upload("alice", 21, 3<<20, nil)
	// Store level: a Range request answers 206 with the tail.
	st, tail, hdr := e.getRaw(a.objectKey, "bytes=1000-")
	if st != http.StatusPartialContent || int64(len(tail)) != a.blobSize-1000 {
		t.Fatalf("Range bytes=1000-: %d with %d bytes, want 206 with %d", st, len(tail), a.blobSize-1000)
	}
	if cr := hdr.Get("Content-Range"); cr != fmt.Sprintf("bytes 1000-%d/%d", a.blobSize-1, a.blobSize) {
		t.Fatalf("Content-Range %q", cr)
	}

	// Client level: a download that stops after 1 MiB resumes from there.
	path := filepath.Join(t.TempDir(), "blob.part")
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	const cut = 1 << 20
	n, err := e.client["bob"].Download(e.ctx, a.objectKey, &failingWriter{w: f, limit: cut}, 0, nil)
	f.Close()
	if !errors.Is(err, errCut) || n != cut {
		t.Fatalf("first download: %d bytes, %v; want %d bytes and the writer's error", n, err, cut)
	}
	var first, last int64 = -1, 0
	total, err := e.client["bob"].DownloadFile(e.ctx, a.objectKey, path, func(done, _ int64) {
		if first < 0 {
			first = done
		}
		last = done
	})
	if err != nil {
		t.Fatalf("resumed download: %v", err)
	}
	if total != a.blobSize || last != a.blobSize {
		t.Fatalf("resumed download: total %d, last progress %d; want %d", total, last, a.blobSize)
	}
	// The first chunk of the resumed transfer starts past the cut: the
	// first MiB was not fetched again.
	if first <= cut || first > cut+256<<10 {
		t.Fatalf("resumed download's first progress report is %d; the transfer did not start at byte %d", first, cut)
	}
	if got := fileSum(t, path); !bytes.Equal(got, a.blobSum) {
		t.Fatalf("resumed blob sha256 %x, want %x", got, a.blobSum)
	}
	if sum, n, err := decrypt(path, a); err != nil || n != a.plainSize || !bytes.Equal(sum, a.plainSum) {
		t.Fatalf("decrypt resumed blob: %d bytes, %v", n, err)
	}
	// Resuming a complete file fetches nothing.
	total, err = e.client["bob"].DownloadFile(e.ctx, a.objectKey, path, func(int64, int64) { t.Error("progress on a complete file") })
	if err != nil || total != a.blobSize {
		t.Fatalf("resume of a complete file: %d, %v", total, err)
	}
}

func testStatDeleteSweep(t *testing.T, e *env) {
	e.assertAbsent(newKey(t), "a key never uploaded")
	if err := e.h.Store.Delete(e.ctx, newKey(t)); err != nil {
		t.Fatalf("Delete of a missing key: %v", err)
	}
	before := time.Now().Add(-time.Hour)
	k1 := e.putRaw(randBytes(t, 100))
	k2 := e.putRaw(randBytes(t, 200))
	info, err := e.h.Store.Stat(e.ctx, k2)
	if err != nil || info.Size != 200 {
		t.Fatalf("Stat = %+v, %v", info, err)
	}
	if err := e.h.Store.Delete(e.ctx, k2); err != nil {
		t.Fatal(err)
	}
	e.assertAbsent(k2, "after Delete")
	if _, err := e.client["alice"].Resolve(e.ctx, k2); !isCode(err, mediaapi.CodeNotFound) {
		t.Fatalf("resolve a deleted object: %v, want %s", err, mediaapi.CodeNotFound)
	}

	n, err := e.h.Store.Sweep(e.ctx, before)
	if err != nil || n != 0 {
		t.Fatalf("Sweep(an hour ago) = %d, %v; want 0 removed", n, err)
	}
	if _, err := e.h.Store.Stat(e.ctx, k1); err != nil {
		t.Fatalf("a new object was swept: %v", err)
	}
	n, err = e.h.Store.Sweep(e.ctx, time.Now().Add(time.Hour))
	if err != nil || n != 1 {
		t.Fatalf("Sweep(in an hour) = %d, %v; want 1 removed", n, err)
	}
	e.assertAbsent(k1, "after Sweep")
}

func testConcurrentUploads(t *testing.T, e *env) {
	const n = 6
	var wg sync.WaitGroup
	res := make([]encrypted, n)
	errs := make(chan error, n)
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			key, err := crypto.NewAttachmentKey()
			if err != nil {
				errs <- err
				return
			}
			src := newPlain(uint64(100+i), int64(50<<10*(i+1)))
			enc, err := crypto.EncryptAttachment(src, key)
			if err != nil {
				errs <- err
				return
			}
			slot, err := e.client[accounts[i%len(accounts)]].Upload(e.ctx, crypto.EncryptedSize(src.size), enc, nil)
			if err != nil {
				errs <- err
				return
			}
			d, _ := enc.Digest()
			res[i] = encrypted{key: key, digest: d, objectKey: slot.ObjectKey, plainSize: src.size,
				blobSize: crypto.EncryptedSize(src.size), plainSum: src.Sum()}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatalf("concurrent upload: %v", err)
	}
	for i, a := range res {
		path := e.download("carol", a, nil)
		if sum, m, err := decrypt(path, a); err != nil || m != a.plainSize || !bytes.Equal(sum, a.plainSum) {
			t.Fatalf("upload %d: decrypt %d bytes, %v", i, m, err)
		}
	}
}
