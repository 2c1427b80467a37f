package disk

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"

	"github.com/hushchat/hush/server/media"
	"github.com/hushchat/hush/server/media/mediaapi"
	"github.com/hushchat/hush/server/media/mediatest"
)

func openDisk(t testing.TB) mediatest.Harness {
	t.Helper()
	clock := mediatest.NewClock(time.Now())
	s, err := Open(t.TempDir(), Options{Clock: clock.Now})
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	return mediatest.Harness{
		Store: s,
		Clock: clock.Now,
		Wait:  clock.Advance,
		Raw: func(_ context.Context, key string) (io.ReadCloser, error) {
			return os.Open(s.ObjectPath(key))
		},
		Replace: func(_ context.Context, key string, data []byte) error {
			return os.WriteFile(s.ObjectPath(key), data, 0o600)
		},
	}
}

func TestStore(t *testing.T) {
	t.Run("disk", func(t *testing.T) { mediatest.Run(t, openDisk) })
}

func BenchmarkStore(b *testing.B) {
	b.Run("disk", func(b *testing.B) { mediatest.Bench(b, openDisk) })
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

// serve starts the store's handler and returns a function making its
// relative URLs absolute.
func serve(t *testing.T, s *Store) func(string) string {
	srv := httptest.NewServer(s.Handler())
	t.Cleanup(srv.Close)
	return func(p string) string { return srv.URL + p }
}

func put(t *testing.T, u string, body []byte) (int, mediaapi.Error) {
	t.Helper()
	req, err := http.NewRequest(http.MethodPut, u, bytes.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	// Refusals come before the body is sent, as real clients ask.
	req.Header.Set("Expect", "100-continue")
	return do(t, req)
}

func do(t *testing.T, req *http.Request) (int, mediaapi.Error) {
	t.Helper()
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	e, _ := mediaapi.DecodeError(b)
	return resp.StatusCode, e
}

func TestKeyFile(t *testing.T) {
	dir := t.TempDir()
	s1, err := Open(dir, Options{})
	if err != nil {
		t.Fatal(err)
	}
	fi, err := os.Stat(filepath.Join(dir, keyFile))
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o600 || fi.Size() != hmacSize {
		t.Fatalf("key file: mode %v, %d bytes; want 0600, %d bytes", fi.Mode().Perm(), fi.Size(), hmacSize)
	}
	for _, d := range []string{objectsDir, tmpDir} {
		fi, err := os.Stat(filepath.Join(dir, d))
		if err != nil || fi.Mode().Perm() != 0o700 {
			t.Fatalf("%s: %v, %v; want mode 0700", d, fi.Mode().Perm(), err)
		}
	}
	// A URL signed before a restart still verifies after it.
	key := newKey(t)
	r, err := s1.PresignUpload(context.Background(), key, 3, time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	s2, err := Open(dir, Options{})
	if err != nil {
		t.Fatal(err)
	}
	abs := serve(t, s2)
	if st, e := put(t, abs(r.URL), []byte("abc")); st != http.StatusCreated {
		t.Fatalf("PUT after reopen: %d %+v", st, e)
	}
	// Another directory has another key: its URLs do not verify here.
	s3, err := Open(t.TempDir(), Options{})
	if err != nil {
		t.Fatal(err)
	}
	r, err = s3.PresignUpload(context.Background(), newKey(t), 3, time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	if st, e := put(t, abs(r.URL), []byte("abc")); st != http.StatusForbidden || e.Code != mediaapi.CodeBadSignature {
		t.Fatalf("PUT with another store's URL: %d %+v, want 403 %s", st, e, mediaapi.CodeBadSignature)
	}

	// A key file others can read is refused, and so is a damaged one.
	if err := os.Chmod(filepath.Join(dir, keyFile), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := Open(dir, Options{}); err == nil || !strings.Contains(err.Error(), "chmod 600") {
		t.Fatalf("Open with a 0644 key file: %v", err)
	}
	if err := os.WriteFile(filepath.Join(dir, keyFile), []byte("short"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(filepath.Join(dir, keyFile), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := Open(dir, Options{}); err == nil || !strings.Contains(err.Error(), "32-byte key") {
		t.Fatalf("Open with a short key file: %v", err)
	}
}

func TestObjectFiles(t *testing.T) {
	s, err := Open(t.TempDir(), Options{})
	if err != nil {
		t.Fatal(err)
	}
	abs := serve(t, s)
	key := newKey(t)
	r, _ := s.PresignUpload(context.Background(), key, 5, time.Minute)
	if st, e := put(t, abs(r.URL), []byte("hello")); st != http.StatusCreated {
		t.Fatalf("PUT: %d %+v", st, e)
	}
	fi, err := os.Stat(s.ObjectPath(key))
	if err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("object: %v, %v; want mode 0600", fi.Mode().Perm(), err)
	}
	fi, err = os.Stat(filepath.Dir(s.ObjectPath(key)))
	if err != nil || fi.Mode().Perm() != 0o700 {
		t.Fatalf("shard directory: %v, %v; want mode 0700", fi.Mode().Perm(), err)
	}
	if !strings.HasPrefix(s.ObjectPath(key), filepath.Join(s.Dir(), objectsDir, key[:2])) {
		t.Fatalf("object path %s", s.ObjectPath(key))
	}
	// HEAD answers the size without a body.
	g, _ := s.PresignDownload(context.Background(), key, time.Minute)
	resp, err := http.Head(abs(g.URL))
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK || resp.ContentLength != 5 || resp.Header.Get("Accept-Ranges") != "bytes" {
		t.Fatalf("HEAD: %s, length %d, Accept-Ranges %q", resp.Status, resp.ContentLength, resp.Header.Get("Accept-Ranges"))
	}
	// If-Range with the ETag keeps the range; a stale validator gets all.
	req, _ := http.NewRequest(http.MethodGet, abs(g.URL), nil)
	req.Header.Set("Range", "bytes=1-")
	req.Header.Set("If-Range", resp.Header.Get("ETag"))
	if resp, err := http.DefaultClient.Do(req); err != nil || resp.StatusCode != http.StatusPartialContent {
		t.Fatalf("If-Range with the ETag: %v %v", resp.Status, err)
	} else {
		resp.Body.Close()
	}
	req.Header.Set("If-Range", `"other"`)
	if resp, err := http.DefaultClient.Do(req); err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("If-Range with another ETag: %v %v", resp.Status, err)
	} else {
		resp.Body.Close()
	}
}

// TestBrokenUploadsLeaveNothing covers what the suite cannot see from
// outside: no temporary file survives a refused or broken upload.
func TestBrokenUploadsLeaveNothing(t *testing.T) {
	reg := prometheus.NewRegistry()
	s, err := Open(t.TempDir(), Options{Registerer: reg})
	if err != nil {
		t.Fatal(err)
	}
	abs := serve(t, s)
	const size = 1 << 20
	key := newKey(t)
	r, _ := s.PresignUpload(context.Background(), key, size, time.Minute)

	// Chunked: no Content-Length.
	req, _ := http.NewRequest(http.MethodPut, abs(r.URL), io.MultiReader(bytes.NewReader(randBytes(t, size))))
	req.ContentLength = -1
	if st, e := do(t, req); st != http.StatusLengthRequired || e.Code != mediaapi.CodeLengthRequired {
		t.Fatalf("chunked PUT: %d %+v, want 411 %s", st, e, mediaapi.CodeLengthRequired)
	}
	// Too long: refused with the limit.
	if st, e := put(t, abs(r.URL), randBytes(t, size+1)); st != http.StatusRequestEntityTooLarge || e.Code != mediaapi.CodeTooLarge || e.Limit != size {
		t.Fatalf("oversize PUT: %d %+v", st, e)
	}
	// Connection cut halfway.
	u, _ := url.Parse(abs(r.URL))
	conn, err := net.Dial("tcp", u.Host)
	if err != nil {
		t.Fatal(err)
	}
	fmt.Fprintf(conn, "PUT %s HTTP/1.1\r\nHost: %s\r\nContent-Length: %d\r\n\r\n", u.RequestURI(), u.Host, size)
	conn.Write(randBytes(t, size/2))
	conn.(*net.TCPConn).CloseWrite()
	answer, _ := io.ReadAll(conn)
	conn.Close()
	if !bytes.Contains(answer, []byte(mediaapi.CodeSizeMismatch)) {
		t.Fatalf("truncated PUT answered %q, want %s", answer, mediaapi.CodeSizeMismatch)
	}
	if _, err := os.Stat(s.ObjectPath(key)); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("object after a truncated upload: %v", err)
	}
	left, err := os.ReadDir(filepath.Join(s.Dir(), tmpDir))
	if err != nil || len(left) != 0 {
		t.Fatalf("temporary files left: %v, %v", left, err)
	}
	if got := counterValue(t, s.uploads.WithLabelValues("aborted")); got != 1 {
		t.Fatalf("uploads_total{result=aborted} = %v, want 1", got)
	}
	if got := counterValue(t, s.uploads.WithLabelValues("refused")); got != 2 {
		t.Fatalf("uploads_total{result=refused} = %v, want 2", got)
	}
	// Then a good upload, counted in bytes.
	if st, e := put(t, abs(r.URL), randBytes(t, size)); st != http.StatusCreated {
		t.Fatalf("PUT: %d %+v", st, e)
	}
	if got := counterValue(t, s.bytes.WithLabelValues("upload")); got < size {
		t.Fatalf("transfer_bytes_total{direction=upload} = %v, want at least %d", got, size)
	}
}

func TestSweepStaleTemporaryFiles(t *testing.T) {
	s, err := Open(t.TempDir(), Options{})
	if err != nil {
		t.Fatal(err)
	}
	old := filepath.Join(s.Dir(), tmpDir, "crashed.1.part")
	fresh := filepath.Join(s.Dir(), tmpDir, "inflight.2.part")
	for _, p := range []string{old, fresh} {
		if err := os.WriteFile(p, []byte("x"), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	past := time.Now().Add(-2 * staleTmp)
	if err := os.Chtimes(old, past, past); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Sweep(context.Background(), time.Now().Add(-time.Hour)); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(old); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("stale temporary file kept: %v", err)
	}
	if _, err := os.Stat(fresh); err != nil {
		t.Fatalf("in-flight temporary file removed: %v", err)
	}
}

func TestMethods(t *testing.T) {
	s, err := Open(t.TempDir(), Options{})
	if err != nil {
		t.Fatal(err)
	}
	abs := serve(t, s)
	r, _ := s.PresignUpload(context.Background(), newKey(t), 1, time.Minute)
	req, _ := http.NewRequest(http.MethodDelete, abs(r.URL), nil)
	if st, e := do(t, req); st != http.StatusMethodNotAllowed || e.Code != mediaapi.CodeMethodNotAllowed {
		t.Fatalf("DELETE: %d %+v", st, e)
	}
	// An upload URL does not download.
	resp, err := http.Get(abs(r.URL))
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusForbidden {
		t.Fatalf("GET on an upload URL: %s", resp.Status)
	}
	// Not a key.
	resp, err = http.Get(abs(mediaapi.BlobPrefix + "../../media.key"))
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusForbidden {
		t.Fatalf("GET of a path that is not a key: %s", resp.Status)
	}
}

func TestSignedURLForm(t *testing.T) {
	hk := bytes.Repeat([]byte{7}, hmacSize)
	key := "abcdefghijklmnopqrstuvwxyz234567"
	exp := time.Unix(1_900_000_000, 0)
	putURL := sign(hk, opPut, key, 1234, exp)
	getURL := sign(hk, opGet, key, -1, exp)
	for _, u := range []string{putURL, getURL} {
		path, q, _ := strings.Cut(u, "?")
		p, err := parseSignedURL(path, q)
		if err != nil {
			t.Fatalf("parse %s: %v", u, err)
		}
		if err := p.verify(hk, exp.Add(-time.Second)); err != nil {
			t.Fatalf("verify %s: %v", u, err)
		}
		if err := p.verify(hk, exp); !errors.Is(err, errURLExpired) {
			t.Fatalf("verify at expiry: %v", err)
		}
		if err := p.verify(bytes.Repeat([]byte{8}, hmacSize), exp.Add(-time.Second)); !errors.Is(err, errBadSignature) {
			t.Fatalf("verify under another key: %v", err)
		}
		if p.path() != u {
			t.Fatalf("re-encoded %s as %s", u, p.path())
		}
	}
	path, q, _ := strings.Cut(putURL, "?")
	sig := q[strings.Index(q, "&sig=")+5:]
	bad := []string{
		"op=put&size=01234&exp=1900000000&sig=" + sig,             // leading zero
		"op=put&exp=1900000000&size=1234&sig=" + sig,              // order
		"op=put&size=1234&exp=1900000000&sig=" + sig + "&x=1",     // extra
		"op=put&size=1234&exp=1900000000&sig=" + sig + "=",        // padding
		"op=put&size=1234&exp=1900000000&sig=" + sig[:len(sig)-1], // short
		"op=put&size=-1&exp=1900000000&sig=" + sig,                // sign
		"op=put&size=+1234&exp=1900000000&sig=" + sig,             // sign
		"op=del&exp=1900000000&sig=" + sig,                        // op
		"op=put&size=1234&exp=1900000000",                         // no sig
		"",
	}
	for _, b := range bad {
		if _, err := parseSignedURL(path, b); !errors.Is(err, errMalformedURL) {
			t.Errorf("parse %q: %v, want errMalformedURL", b, err)
		}
	}
	for _, p := range []string{"/v1/media/blob/ABCDEFGHIJKLMNOPQRSTUVWXYZ234567", "/v1/media/blob/" + key + "/x", "/v1/media/" + key} {
		if _, err := parseSignedURL(p, q); !errors.Is(err, errMalformedURL) {
			t.Errorf("parse path %q: %v, want errMalformedURL", p, err)
		}
	}
	// Each signed field matters.
	for _, mut := range []func(*signedURL){
		func(u *signedURL) { u.size++ },
		func(u *signedURL) { u.exp++ },
		func(u *signedURL) { u.key = "bbcdefghijklmnopqrstuvwxyz234567" },
		func(u *signedURL) { u.op = opGet; u.size = -1 },
	} {
		p, _ := parseSignedURL(path, q)
		mut(&p)
		if err := p.verify(hk, exp.Add(-time.Hour)); !errors.Is(err, errBadSignature) {
			t.Errorf("altered URL verified: %+v: %v", p, err)
		}
	}
}

func FuzzParseSignedURL(f *testing.F) {
	hk := bytes.Repeat([]byte{7}, hmacSize)
	key := "abcdefghijklmnopqrstuvwxyz234567"
	for _, u := range []string{
		sign(hk, opPut, key, 1234, time.Unix(1_900_000_000, 0)),
		sign(hk, opGet, key, -1, time.Unix(1_900_000_000, 0)),
		sign(hk, opPut, key, 0, time.Unix(0, 0)),
	} {
		path, q, _ := strings.Cut(u, "?")
		f.Add(path, q)
	}
	f.Add("/v1/media/blob/x", "op=get&exp=1&sig=")
	f.Fuzz(func(t *testing.T, path, q string) {
		u, err := parseSignedURL(path, q)
		if err != nil {
			if !errors.Is(err, errMalformedURL) {
				t.Fatalf("error does not wrap errMalformedURL: %v", err)
			}
			return
		}
		// One string per URL: whatever parses re-encodes to itself.
		if got := u.path(); got != path+"?"+q {
			t.Fatalf("parsed %q?%q but re-encodes as %q", path, q, got)
		}
		if u.verify(hk, time.Unix(0, 0)) == nil && !bytes.Equal(mac(hk, u), u.sig) {
			t.Fatal("verify accepted a wrong MAC")
		}
	})
}

func counterValue(t *testing.T, c prometheus.Counter) float64 {
	t.Helper()
	var m dto.Metric
	if err := c.Write(&m); err != nil {
		t.Fatal(err)
	}
	return m.GetCounter().GetValue()
}
