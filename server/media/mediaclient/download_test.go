package mediaclient_test

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"errors"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hushchat/hush/keyserver/authtoken"
	"github.com/hushchat/hush/server/media"
	"github.com/hushchat/hush/server/media/disk"
	"github.com/hushchat/hush/server/media/mediaapi"
	"github.com/hushchat/hush/server/media/mediaclient"
	"github.com/hushchat/hush/server/media/mediatest"
)

// faults sits in front of a real relay (disk backend) and breaks blob
// downloads on purpose.
type faults struct {
	mu       sync.Mutex
	next     http.Handler
	plan     []string // one fault per blob GET: "cut", "503", "" (none)
	gets     []string // Range header of each blob GET
	resolves int      // requests for a download URL
	authSeen bool
	expire   func() // the "expire" fault: make outstanding URLs expire
}

func (f *faults) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if !strings.HasPrefix(r.URL.Path, mediaapi.BlobPrefix) {
		if r.Method == http.MethodGet {
			f.mu.Lock()
			f.resolves++
			f.mu.Unlock()
		}
		f.next.ServeHTTP(w, r)
		return
	}
	f.mu.Lock()
	if r.Header.Get("Authorization") != "" {
		f.authSeen = true
	}
	fault := ""
	if r.Method == http.MethodGet {
		f.gets = append(f.gets, r.Header.Get("Range"))
		if len(f.plan) > 0 {
			fault, f.plan = f.plan[0], f.plan[1:]
		}
	}
	f.mu.Unlock()
	switch fault {
	case "expire":
		f.expire()
		f.next.ServeHTTP(w, r)
	case "503":
		mediaapi.WriteError(w, http.StatusServiceUnavailable, mediaapi.Error{Code: mediaapi.CodeUnavailable, Message: "injected", RetryAfterSeconds: 0})
	case "cut":
		// Send the headers and part of the body, then drop the connection.
		f.next.ServeHTTP(&cutWriter{ResponseWriter: w, left: 100 << 10}, r)
		panic(http.ErrAbortHandler)
	default:
		f.next.ServeHTTP(w, r)
	}
}

type cutWriter struct {
	http.ResponseWriter
	left int
}

func (c *cutWriter) Write(p []byte) (int, error) {
	if c.left <= 0 {
		return 0, errors.New("cut")
	}
	if len(p) > c.left {
		p = p[:c.left]
	}
	n, err := c.ResponseWriter.Write(p)
	c.left -= n
	if c.left <= 0 {
		c.ResponseWriter.(http.Flusher).Flush()
	}
	return n, err
}

type relay struct {
	clock  *mediatest.Clock
	faults *faults
	client *mediaclient.Client
}

func newRelay(t *testing.T) *relay {
	clock := mediatest.NewClock(time.Now())
	store, err := disk.Open(t.TempDir(), disk.Options{Clock: clock.Now})
	if err != nil {
		t.Fatal(err)
	}
	pub, priv, _ := ed25519.GenerateKey(rand.Reader)
	svc, err := media.New(media.Config{Store: store, TokenKey: pub, Clock: clock.Now, DownloadTTL: time.Minute})
	if err != nil {
		t.Fatal(err)
	}
	f := &faults{next: svc.Handler(), expire: func() { clock.Advance(2 * time.Minute) }}
	srv := httptest.NewServer(f)
	t.Cleanup(srv.Close)
	tok, err := authtoken.Issue(priv, authtoken.Claims{Account: "alice", Device: 1, IssuedAt: clock.Now(), Expiry: clock.Now().Add(48 * time.Hour)})
	if err != nil {
		t.Fatal(err)
	}
	c, err := mediaclient.New(srv.URL, mediaclient.StaticToken(tok), mediaclient.Options{MaxAttempts: 3})
	if err != nil {
		t.Fatal(err)
	}
	return &relay{clock: clock, faults: f, client: c}
}

func TestDownloadRetries(t *testing.T) {
	r := newRelay(t)
	ctx := context.Background()
	data := make([]byte, 1<<20)
	rand.Read(data)
	s, err := r.client.Upload(ctx, int64(len(data)), bytes.NewReader(data), nil)
	if err != nil {
		t.Fatal(err)
	}

	// A connection cut mid-body, then a 503: the download resumes where
	// the cut left it.
	r.faults.plan = []string{"cut", "503"}
	var out bytes.Buffer
	n, err := r.client.Download(ctx, s.ObjectKey, &out, 0, nil)
	if err != nil || n != int64(len(data)) || !bytes.Equal(out.Bytes(), data) {
		t.Fatalf("download through faults: %d bytes, %v", n, err)
	}
	want := []string{"", "bytes=102400-", "bytes=102400-"}
	if strings.Join(r.faults.gets, ",") != strings.Join(want, ",") {
		t.Fatalf("blob GETs with Range %q, want %q", r.faults.gets, want)
	}
	if r.faults.authSeen {
		t.Fatal("the Bearer token was sent to a blob URL")
	}

	// Too many faults: the error says how many attempts.
	r.faults.plan = []string{"503", "503", "503"}
	out.Reset()
	if _, err := r.client.Download(ctx, s.ObjectKey, &out, 0, nil); err == nil || !strings.Contains(err.Error(), "3 attempts") {
		t.Fatalf("download through 3 faults: %v", err)
	}
}

func TestDownloadReresolvesExpiredURL(t *testing.T) {
	r := newRelay(t)
	ctx := context.Background()
	s, err := r.client.Upload(ctx, 5, strings.NewReader("hello"), nil)
	if err != nil {
		t.Fatal(err)
	}
	// The first blob GET arrives after its URL expired: the client asks
	// the relay for a fresh URL and carries on.
	r.faults.plan = []string{"expire"}
	var out bytes.Buffer
	n, err := r.client.Download(ctx, s.ObjectKey, &out, 0, nil)
	if err != nil || n != 5 || out.String() != "hello" {
		t.Fatalf("download: %d, %q, %v", n, out.String(), err)
	}
	if len(r.faults.gets) != 2 || r.faults.resolves != 2 {
		t.Fatalf("%d blob GETs and %d resolves, want 2 and 2", len(r.faults.gets), r.faults.resolves)
	}
}

type writerFunc func([]byte) (int, error)

func (f writerFunc) Write(p []byte) (int, error) { return f(p) }

func TestDownloadPermanentErrors(t *testing.T) {
	r := newRelay(t)
	ctx := context.Background()
	key, _ := media.NewObjectKey()
	_, err := r.client.Download(ctx, key, &bytes.Buffer{}, 0, nil)
	var me *mediaclient.Error
	if !errors.As(err, &me) || me.Code != mediaapi.CodeNotFound || me.Status != 404 {
		t.Fatalf("missing object: %v", err)
	}
	if r.faults.resolves != 1 {
		t.Fatalf("a 404 was retried: %d resolves", r.faults.resolves)
	}
	s, err := r.client.Upload(ctx, 5, strings.NewReader("hello"), nil)
	if err != nil {
		t.Fatal(err)
	}
	boom := errors.New("disk full")
	_, err = r.client.Download(ctx, s.ObjectKey, writerFunc(func([]byte) (int, error) { return 0, boom }), 0, nil)
	if !errors.Is(err, boom) {
		t.Fatalf("writer failure: %v", err)
	}
	if len(r.faults.gets) != 1 {
		t.Fatalf("a writer failure was retried: %d GETs", len(r.faults.gets))
	}
	if _, err := r.client.Download(ctx, s.ObjectKey, &bytes.Buffer{}, 6, nil); err == nil || !strings.Contains(err.Error(), "past the object's end") {
		t.Fatalf("offset past the end: %v", err)
	}
	if _, err := r.client.Resolve(ctx, "not-a-key"); err == nil {
		t.Fatal("Resolve of a non-key succeeded")
	}
	cctx, cancel := context.WithCancel(ctx)
	cancel()
	if _, err := r.client.Download(cctx, s.ObjectKey, &bytes.Buffer{}, 0, nil); !errors.Is(err, context.Canceled) {
		t.Fatalf("cancelled download: %v", err)
	}
}
