package media_test

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"

	"github.com/hushchat/hush/keyserver/authtoken"
	"github.com/hushchat/hush/keyserver/ratelimit"
	"github.com/hushchat/hush/server/directory"
	"github.com/hushchat/hush/server/media"
	"github.com/hushchat/hush/server/media/disk"
	"github.com/hushchat/hush/server/media/mediaapi"
	"github.com/hushchat/hush/server/media/mediaclient"
	"github.com/hushchat/hush/server/media/mediatest"
)

// fixture is a Service on the disk backend with a controlled clock.
type fixture struct {
	t     *testing.T
	clock *mediatest.Clock
	store *disk.Store
	svc   *media.Service
	srv   *httptest.Server
	priv  ed25519.PrivateKey
	reg   *prometheus.Registry
	logs  *syncBuffer
}

type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

func newFixture(t *testing.T, mod func(*media.Config)) *fixture {
	t.Helper()
	f := &fixture{t: t, clock: mediatest.NewClock(time.Now().Truncate(time.Second)), reg: prometheus.NewRegistry(), logs: &syncBuffer{}}
	log := slog.New(slog.NewJSONHandler(f.logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	var err error
	f.store, err = disk.Open(t.TempDir(), disk.Options{Clock: f.clock.Now, Registerer: f.reg, Logger: log})
	if err != nil {
		t.Fatal(err)
	}
	pub, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	f.priv = priv
	cfg := media.Config{Store: f.store, TokenKey: pub, Clock: f.clock.Now, Registerer: f.reg, Logger: log}
	if mod != nil {
		mod(&cfg)
	}
	if f.svc, err = media.New(cfg); err != nil {
		t.Fatalf("media.New: %v", err)
	}
	f.srv = httptest.NewServer(f.svc.Handler())
	t.Cleanup(f.srv.Close)
	return f
}

func (f *fixture) token(account string, device uint32, ttl time.Duration) string {
	now := f.clock.Now()
	tok, err := authtoken.Issue(f.priv, authtoken.Claims{Account: account, Device: device, IssuedAt: now.Add(-time.Minute), Expiry: now.Add(ttl)})
	if err != nil {
		f.t.Fatal(err)
	}
	return tok
}

// call sends a request to the service and decodes an error body if any.
func (f *fixture) call(method, path, auth string, body string, hdr map[string]string) (*http.Response, []byte, mediaapi.Error) {
	f.t.Helper()
	var rd io.Reader
	if body != "" {
		rd = strings.NewReader(body)
	}
	req, err := http.NewRequest(method, f.srv.URL+path, rd)
	if err != nil {
		f.t.Fatal(err)
	}
	if auth != "" {
		req.Header.Set("Authorization", auth)
	}
	for k, v := range hdr {
		req.Header.Set(k, v)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		f.t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		f.t.Fatal(err)
	}
	e, _ := mediaapi.DecodeError(b)
	return resp, b, e
}

func (f *fixture) slot(account string, size int64) (*http.Response, mediaapi.Slot, mediaapi.Error) {
	f.t.Helper()
	resp, b, e := f.call(http.MethodPost, mediaapi.PathSlots, "Bearer "+f.token(account, 1, time.Hour), `{"size":`+strconv.FormatInt(size, 10)+`}`, nil)
	var s mediaapi.Slot
	if resp.StatusCode == http.StatusOK {
		var err error
		if s, err = mediaapi.DecodeSlot(b); err != nil {
			f.t.Fatalf("decode slot: %v", err)
		}
	}
	return resp, s, e
}

func (f *fixture) client(account string) *mediaclient.Client {
	c, err := mediaclient.New(f.srv.URL, mediaclient.StaticToken(f.token(account, 1, 365*24*time.Hour)), mediaclient.Options{})
	if err != nil {
		f.t.Fatal(err)
	}
	return c
}

func counter(t *testing.T, reg *prometheus.Registry, name string, labels map[string]string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
	next:
		for _, m := range mf.GetMetric() {
			for _, lp := range m.GetLabel() {
				if v, ok := labels[lp.GetName()]; ok && v != lp.GetValue() {
					continue next
				}
			}
			return metricValue(m)
		}
	}
	return 0
}

func metricValue(m *dto.Metric) float64 {
	if c := m.GetCounter(); c != nil {
		return c.GetValue()
	}
	return 0
}

func TestConfig(t *testing.T) {
	s, err := disk.Open(t.TempDir(), disk.Options{})
	if err != nil {
		t.Fatal(err)
	}
	pub, _, _ := ed25519.GenerateKey(rand.Reader)
	for name, cfg := range map[string]media.Config{
		"no store":          {TokenKey: pub},
		"no token key":      {Store: s},
		"short token key":   {Store: s, TokenKey: pub[:31]},
		"relative URL":      {Store: s, TokenKey: pub, PublicURL: "chat.example.org"},
		"quota below limit": {Store: s, TokenKey: pub, MaxUpload: 100, QuotaBytes: 99},
		"long upload URL":   {Store: s, TokenKey: pub, UploadTTL: 8 * 24 * time.Hour},
		"short download":    {Store: s, TokenKey: pub, DownloadTTL: time.Millisecond},
		"bad rate":          {Store: s, TokenKey: pub, SlotRate: ratelimit.Rate{Burst: 0, Per: time.Second}},
	} {
		if _, err := media.New(cfg); err == nil {
			t.Errorf("%s: New succeeded", name)
		}
	}
	svc, err := media.New(media.Config{Store: s, TokenKey: pub})
	if err != nil {
		t.Fatal(err)
	}
	if svc.MaxUpload() != 100<<20 {
		t.Fatalf("default MaxUpload %d", svc.MaxUpload())
	}
}

func TestAuthentication(t *testing.T) {
	dir := directory.Static{"alice": {1, 2}}
	var failDir bool
	f := newFixture(t, func(c *media.Config) {
		c.Directory = directory.Func(func(ctx context.Context, account string) ([]uint32, error) {
			if failDir {
				return nil, errors.New("key server down")
			}
			return dir.Devices(ctx, account)
		})
	})
	_, otherPriv, _ := ed25519.GenerateKey(rand.Reader)
	now := f.clock.Now()
	forged, _ := authtoken.Issue(otherPriv, authtoken.Claims{Account: "alice", Device: 1, IssuedAt: now, Expiry: now.Add(time.Hour)})
	body := `{"size":100}`
	for _, tc := range []struct {
		name, auth, code string
	}{
		{"none", "", mediaapi.CodeAuthRequired},
		{"basic", "Basic YWxpY2U6eA==", mediaapi.CodeInvalidToken},
		{"garbage", "Bearer not-a-token", mediaapi.CodeInvalidToken},
		{"forged", "Bearer " + forged, mediaapi.CodeInvalidToken},
		{"expired", "Bearer " + f.token("alice", 1, time.Second), mediaapi.CodeTokenExpired},
		{"removed device", "Bearer " + f.token("alice", 3, time.Hour), mediaapi.CodeDeviceRevoked},
		{"deleted account", "Bearer " + f.token("mallory", 1, time.Hour), mediaapi.CodeDeviceRevoked},
	} {
		if tc.name == "expired" {
			f.clock.Advance(2 * time.Second)
		}
		for _, r := range []struct{ method, path, body string }{
			{http.MethodPost, mediaapi.PathSlots, body},
			{http.MethodGet, mediaapi.PathPrefix + "abcdefghijklmnopqrstuvwxyz234567", ""},
		} {
			resp, _, e := f.call(r.method, r.path, tc.auth, r.body, nil)
			if resp.StatusCode != http.StatusUnauthorized || e.Code != tc.code {
				t.Errorf("%s %s: %d %+v, want 401 %s", tc.name, r.path, resp.StatusCode, e, tc.code)
			}
			if resp.Header.Get("WWW-Authenticate") == "" {
				t.Errorf("%s: no WWW-Authenticate", tc.name)
			}
		}
	}
	if resp, _, e := f.slot("alice", 100); resp.StatusCode != http.StatusOK {
		t.Fatalf("valid token: %d %+v", resp.StatusCode, e)
	}
	failDir = true
	resp, _, e := f.slot("alice", 100)
	if resp.StatusCode != http.StatusServiceUnavailable || e.Code != mediaapi.CodeUnavailable || resp.Header.Get("Retry-After") == "" {
		t.Fatalf("directory failure: %d %+v, want 503 %s with Retry-After", resp.StatusCode, e, mediaapi.CodeUnavailable)
	}
	if got := counter(t, f.reg, "hush_media_refused_total", map[string]string{"reason": "unauthenticated"}); got != 14 {
		t.Fatalf("refused_total{reason=unauthenticated} = %v, want 14", got)
	}
}

func TestSlotRequestShape(t *testing.T) {
	f := newFixture(t, nil)
	auth := "Bearer " + f.token("alice", 1, time.Hour)
	for _, tc := range []struct {
		name, body, ct string
		status         int
		code           string
	}{
		{"not JSON", `size=5`, "", 400, mediaapi.CodeMalformedJSON},
		{"empty", ``, "", 400, mediaapi.CodeMalformedJSON},
		{"missing size", `{}`, "", 400, mediaapi.CodeMalformedJSON},
		{"unknown field", `{"size":5,"name":"cat.jpg"}`, "", 400, mediaapi.CodeMalformedJSON},
		{"string size", `{"size":"5"}`, "", 400, mediaapi.CodeMalformedJSON},
		{"fraction", `{"size":5.5}`, "", 400, mediaapi.CodeMalformedJSON},
		{"exponent", `{"size":5e3}`, "", 400, mediaapi.CodeMalformedJSON},
		{"negative", `{"size":-5}`, "", 400, mediaapi.CodeMalformedJSON},
		{"trailing", `{"size":5}{}`, "", 400, mediaapi.CodeMalformedJSON},
		{"zero", `{"size":0}`, "", 400, mediaapi.CodeInvalidSize},
		{"wrong type", `{"size":5}`, "text/plain", 415, mediaapi.CodeMalformedJSON},
		{"huge body", `{"size":5,"pad":"` + strings.Repeat("x", 2000) + `"}`, "", 413, mediaapi.CodeBodyTooLarge},
		{"too large", `{"size":104857601}`, "application/json; charset=utf-8", 413, mediaapi.CodeTooLarge},
	} {
		resp, _, e := f.call(http.MethodPost, mediaapi.PathSlots, auth, tc.body, map[string]string{"Content-Type": tc.ct})
		if resp.StatusCode != tc.status || e.Code != tc.code {
			t.Errorf("%s: %d %+v, want %d %s", tc.name, resp.StatusCode, e, tc.status, tc.code)
		}
		if tc.code == mediaapi.CodeTooLarge {
			if e.Limit != 100<<20 || !strings.Contains(e.Message, "104857600") || !strings.Contains(e.Message, "100 MiB") {
				t.Errorf("too large: the error does not name the limit: %+v", e)
			}
		}
	}
	// Exactly the limit is fine.
	if resp, _, e := f.slot("alice", 100<<20); resp.StatusCode != http.StatusOK {
		t.Fatalf("slot at the limit: %d %+v", resp.StatusCode, e)
	}
	if got := counter(t, f.reg, "hush_media_refused_total", map[string]string{"reason": "too_large"}); got != 1 {
		t.Fatalf("refused_total{reason=too_large} = %v", got)
	}
}

func TestSlotAnswer(t *testing.T) {
	f := newFixture(t, func(c *media.Config) { c.UploadTTL = 10 * time.Minute })
	resp, s, e := f.slot("alice", 1234)
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("slot: %d %+v", resp.StatusCode, e)
	}
	if !mediaapi.ValidObjectKey(s.ObjectKey) || s.Method != http.MethodPut || s.Size != 1234 {
		t.Fatalf("slot %+v", s)
	}
	if !strings.HasPrefix(s.UploadURL, f.srv.URL+mediaapi.BlobPrefix+s.ObjectKey+"?") {
		t.Fatalf("upload URL %q is not on this relay", s.UploadURL)
	}
	if want := f.clock.Now().Add(10 * time.Minute).UTC(); !s.ExpiresAt.Equal(want) {
		t.Fatalf("expires_at %v, want %v", s.ExpiresAt, want)
	}
	if resp.Header.Get("Cache-Control") != "no-store" {
		t.Fatalf("Cache-Control %q", resp.Header.Get("Cache-Control"))
	}
	// Keys are fresh each time.
	_, s2, _ := f.slot("alice", 1234)
	if s2.ObjectKey == s.ObjectKey {
		t.Fatal("two slots got the same key")
	}

	// Behind a proxy, the public URL is used.
	g := newFixture(t, func(c *media.Config) { c.PublicURL = "https://chat.example.org/hush/" })
	_, s3, _ := g.slot("alice", 10)
	if !strings.HasPrefix(s3.UploadURL, "https://chat.example.org/hush"+mediaapi.BlobPrefix+s3.ObjectKey+"?op=put&size=10&") {
		t.Fatalf("upload URL behind a proxy: %q", s3.UploadURL)
	}
}

func TestRateLimit(t *testing.T) {
	f := newFixture(t, func(c *media.Config) {
		c.SlotRate = ratelimit.Rate{Burst: 2, Per: time.Minute}
		c.ResolveRate = ratelimit.Rate{Burst: 1, Per: time.Minute}
	})
	for i := range 2 {
		if resp, _, e := f.slot("alice", 10); resp.StatusCode != http.StatusOK {
			t.Fatalf("slot %d: %d %+v", i, resp.StatusCode, e)
		}
	}
	resp, _, e := f.slot("alice", 10)
	if resp.StatusCode != http.StatusTooManyRequests || e.Code != mediaapi.CodeRateLimited {
		t.Fatalf("third slot: %d %+v, want 429 %s", resp.StatusCode, e, mediaapi.CodeRateLimited)
	}
	if resp.Header.Get("Retry-After") != "30" || e.RetryAfterSeconds != 30 {
		t.Fatalf("Retry-After %q / %d, want 30", resp.Header.Get("Retry-After"), e.RetryAfterSeconds)
	}
	// Another account has its own bucket.
	if resp, _, e := f.slot("bob", 10); resp.StatusCode != http.StatusOK {
		t.Fatalf("bob: %d %+v", resp.StatusCode, e)
	}
	f.clock.Advance(30 * time.Second)
	if resp, _, e := f.slot("alice", 10); resp.StatusCode != http.StatusOK {
		t.Fatalf("after Retry-After: %d %+v", resp.StatusCode, e)
	}
	// The client surfaces the code and the wait.
	_, err := f.client("alice").RequestSlot(context.Background(), 10)
	var me *mediaclient.Error
	if !errors.As(err, &me) || me.Code != mediaapi.CodeRateLimited || me.RetryAfter != 30*time.Second {
		t.Fatalf("client: %v", err)
	}

	// Download URLs have their own limit.
	key, _ := media.NewObjectKey()
	auth := "Bearer " + f.token("carol", 1, time.Hour)
	f.call(http.MethodGet, mediaapi.PathPrefix+key, auth, "", nil)
	resp, _, e = f.call(http.MethodGet, mediaapi.PathPrefix+key, auth, "", nil)
	if resp.StatusCode != http.StatusTooManyRequests || e.Code != mediaapi.CodeRateLimited || resp.Header.Get("Retry-After") != "60" {
		t.Fatalf("second resolve: %d %+v", resp.StatusCode, e)
	}
	if got := counter(t, f.reg, "hush_media_refused_total", map[string]string{"reason": "rate_limited"}); got != 3 {
		t.Fatalf("refused_total{reason=rate_limited} = %v, want 3", got)
	}
}

func TestByteQuota(t *testing.T) {
	f := newFixture(t, func(c *media.Config) {
		c.MaxUpload = 600
		c.QuotaBytes = 1000
		c.QuotaWindow = time.Hour
	})
	if resp, _, e := f.slot("alice", 600); resp.StatusCode != http.StatusOK {
		t.Fatalf("first slot: %d %+v", resp.StatusCode, e)
	}
	resp, _, e := f.slot("alice", 600)
	if resp.StatusCode != http.StatusTooManyRequests || e.Code != mediaapi.CodeQuotaExceeded || e.Limit != 1000 {
		t.Fatalf("over quota: %d %+v, want 429 %s with limit 1000", resp.StatusCode, e, mediaapi.CodeQuotaExceeded)
	}
	// 200 bytes missing, refilled at 1000 per hour: 720 s.
	if resp.Header.Get("Retry-After") != "720" || e.RetryAfterSeconds != 720 {
		t.Fatalf("Retry-After %q, want 720", resp.Header.Get("Retry-After"))
	}
	if !strings.Contains(e.Message, "1000 bytes") {
		t.Fatalf("message does not name the quota: %q", e.Message)
	}
	// A smaller file still fits; another account is unaffected.
	if resp, _, e := f.slot("alice", 400); resp.StatusCode != http.StatusOK {
		t.Fatalf("400 bytes: %d %+v", resp.StatusCode, e)
	}
	if resp, _, e := f.slot("bob", 600); resp.StatusCode != http.StatusOK {
		t.Fatalf("bob: %d %+v", resp.StatusCode, e)
	}
	f.clock.Advance(36 * time.Minute)
	if resp, _, e := f.slot("alice", 600); resp.StatusCode != http.StatusOK {
		t.Fatalf("after refill: %d %+v", resp.StatusCode, e)
	}
	if got := counter(t, f.reg, "hush_media_slot_bytes_total", nil); got != 2200 {
		t.Fatalf("slot_bytes_total = %v, want 2200", got)
	}
	if got := counter(t, f.reg, "hush_media_slots_issued_total", nil); got != 4 {
		t.Fatalf("slots_issued_total = %v, want 4", got)
	}
}

func TestByteBucket(t *testing.T) {
	clock := mediatest.NewClock(time.Unix(1000, 0))
	q, err := media.NewByteBucket(100, 100*time.Second, clock.Now)
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	if ok, _, _ := q.Take(ctx, "a", 100); !ok {
		t.Fatal("a full bucket refused its whole size")
	}
	if ok, wait, _ := q.Take(ctx, "a", 10); ok || wait != 10*time.Second {
		t.Fatalf("empty bucket: ok=%v wait=%v, want a 10s wait", ok, wait)
	}
	if ok, wait, _ := q.Take(ctx, "a", 101); ok || wait != 100*time.Second {
		t.Fatalf("more than the limit: ok=%v wait=%v, want the window", ok, wait)
	}
	clock.Advance(10 * time.Second)
	if ok, _, _ := q.Take(ctx, "a", 10); !ok {
		t.Fatal("refilled bytes refused")
	}
	// Full buckets are forgotten.
	clock.Advance(time.Hour)
	for i := range 1100 {
		q.Take(ctx, strconv.Itoa(i), 1)
	}
	if q.Len() > 1100 {
		t.Fatalf("%d buckets kept", q.Len())
	}
	clock.Advance(time.Hour)
	q.Take(ctx, "x1", 1)
	for i := range 1100 {
		q.Take(ctx, "y"+strconv.Itoa(i), 1)
	}
	if q.Len() > 1200 {
		t.Fatalf("%d buckets kept after the old ones refilled", q.Len())
	}
	if _, err := media.NewByteBucket(0, time.Hour, nil); err == nil {
		t.Fatal("a zero quota was accepted")
	}
}

func TestResolveRoutes(t *testing.T) {
	f := newFixture(t, nil)
	auth := "Bearer " + f.token("alice", 1, time.Hour)
	missing, _ := media.NewObjectKey()
	for _, tc := range []struct {
		method, path string
		status       int
		code         string
	}{
		{http.MethodGet, mediaapi.PathPrefix + missing, 404, mediaapi.CodeNotFound},
		{http.MethodGet, mediaapi.PathPrefix + "NOT-A-KEY", 400, mediaapi.CodeInvalidKey},
		{http.MethodGet, mediaapi.PathPrefix + strings.ToUpper(missing), 400, mediaapi.CodeInvalidKey},
		{http.MethodGet, mediaapi.PathSlots, 405, mediaapi.CodeMethodNotAllowed},
		{http.MethodDelete, mediaapi.PathPrefix + missing, 405, mediaapi.CodeMethodNotAllowed},
		{http.MethodGet, "/v1/media/a/b/c", 404, mediaapi.CodeNotFound},
	} {
		resp, _, e := f.call(tc.method, tc.path, auth, "", nil)
		if resp.StatusCode != tc.status || e.Code != tc.code {
			t.Errorf("%s %s: %d %+v, want %d %s", tc.method, tc.path, resp.StatusCode, e, tc.status, tc.code)
		}
	}
	// An uploaded object resolves to a URL on this relay with its size.
	c := f.client("alice")
	data := bytes.Repeat([]byte{42}, 777)
	s, err := c.Upload(context.Background(), int64(len(data)), bytes.NewReader(data), nil)
	if err != nil {
		t.Fatal(err)
	}
	d, err := f.client("bob").Resolve(context.Background(), s.ObjectKey)
	if err != nil {
		t.Fatal(err)
	}
	if d.Size != 777 || d.Method != http.MethodGet || !strings.HasPrefix(d.DownloadURL, f.srv.URL+mediaapi.BlobPrefix+s.ObjectKey+"?op=get&") {
		t.Fatalf("download %+v", d)
	}
	if want := f.clock.Now().Add(media.DefaultDownloadTTL).UTC(); !d.ExpiresAt.Equal(want) {
		t.Fatalf("expires_at %v, want %v", d.ExpiresAt, want)
	}
}

// failingStore fails Stat, presigning and sweeping while fail is set, to
// check storage failures.
type failingStore struct {
	media.Store
	fail *atomic.Bool
}

var errStorage = errors.New("storage unreachable")

func (s failingStore) Stat(ctx context.Context, key string) (media.Info, error) {
	if s.fail.Load() {
		return media.Info{}, errStorage
	}
	return s.Store.Stat(ctx, key)
}

func (s failingStore) PresignUpload(ctx context.Context, key string, size int64, ttl time.Duration) (media.Request, error) {
	if s.fail.Load() {
		return media.Request{}, errStorage
	}
	return s.Store.PresignUpload(ctx, key, size, ttl)
}

func (s failingStore) Sweep(ctx context.Context, before time.Time) (int, error) {
	if s.fail.Load() {
		return 0, errStorage
	}
	return s.Store.Sweep(ctx, before)
}

func TestStorageFailure(t *testing.T) {
	var fail atomic.Bool
	fail.Store(true)
	f := newFixture(t, func(c *media.Config) {
		c.Store = failingStore{Store: c.Store, fail: &fail}
		c.QuotaBytes = 200
		c.MaxUpload = 100
	})
	key, _ := media.NewObjectKey()
	auth := "Bearer " + f.token("alice", 1, time.Hour)
	resp, _, e := f.call(http.MethodGet, mediaapi.PathPrefix+key, auth, "", nil)
	if resp.StatusCode != http.StatusServiceUnavailable || e.Code != mediaapi.CodeUnavailable || resp.Header.Get("Retry-After") == "" {
		t.Fatalf("resolve with storage down: %d %+v", resp.StatusCode, e)
	}
	for range 3 {
		resp, _, e = f.slot("alice", 100)
		if resp.StatusCode != http.StatusServiceUnavailable || e.Code != mediaapi.CodeUnavailable {
			t.Fatalf("slot with storage down: %d %+v", resp.StatusCode, e)
		}
	}
	if _, err := f.svc.SweepOnce(context.Background()); !errors.Is(err, errStorage) {
		t.Fatalf("SweepOnce: %v", err)
	}
	if got := counter(t, f.reg, "hush_media_sweep_errors_total", nil); got != 1 {
		t.Fatalf("sweep_errors_total = %v", got)
	}
	if !strings.Contains(f.logs.String(), "storage unreachable") {
		t.Fatalf("the failure was not logged: %s", f.logs.String())
	}
	// The failed slots charged no quota: all 200 bytes are still there.
	fail.Store(false)
	for i := range 2 {
		if resp, _, e := f.slot("alice", 100); resp.StatusCode != http.StatusOK {
			t.Fatalf("slot %d after recovery: %d %+v", i, resp.StatusCode, e)
		}
	}
}

func TestRetentionSweep(t *testing.T) {
	f := newFixture(t, func(c *media.Config) { c.Retention = 48 * time.Hour; c.SweepInterval = time.Hour })
	c := f.client("alice")
	ctx := context.Background()
	s, err := c.Upload(ctx, 3, strings.NewReader("abc"), nil)
	if err != nil {
		t.Fatal(err)
	}
	if n, err := f.svc.SweepOnce(ctx); err != nil || n != 0 {
		t.Fatalf("sweep of a new object: %d, %v", n, err)
	}
	f.clock.Advance(49 * time.Hour)
	if n, err := f.svc.SweepOnce(ctx); err != nil || n != 1 {
		t.Fatalf("sweep after the retention period: %d, %v; want 1", n, err)
	}
	if _, err := os.Stat(f.store.ObjectPath(s.ObjectKey)); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("object kept: %v", err)
	}
	if _, err := f.client("bob").Resolve(ctx, s.ObjectKey); err == nil || !strings.Contains(err.Error(), "expired") {
		t.Fatalf("resolve of a swept object: %v", err)
	}
	if got := counter(t, f.reg, "hush_media_swept_objects_total", nil); got != 1 {
		t.Fatalf("swept_objects_total = %v", got)
	}
	// Run sweeps at once and returns when cancelled.
	s, err = c.Upload(ctx, 3, strings.NewReader("xyz"), nil)
	if err != nil {
		t.Fatal(err)
	}
	f.clock.Advance(49 * time.Hour)
	rctx, cancel := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- f.svc.Run(rctx) }()
	for deadline := time.Now().Add(time.Minute); counter(t, f.reg, "hush_media_swept_objects_total", nil) < 2; time.Sleep(10 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("Run did not sweep within a minute")
		}
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatalf("Run: %v", err)
	}
	if _, err := os.Stat(f.store.ObjectPath(s.ObjectKey)); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("Run did not sweep: %v", err)
	}
}

// TestNoSecretsInLogs runs uploads, downloads and refusals with debug
// logging on and checks that no token, URL signature, HMAC key or object
// key reaches the log.
func TestNoSecretsInLogs(t *testing.T) {
	f := newFixture(t, func(c *media.Config) { c.SlotRate = ratelimit.Rate{Burst: 3, Per: time.Hour} })
	tok := f.token("alice", 1, time.Hour)
	c, _ := mediaclient.New(f.srv.URL, mediaclient.StaticToken(tok), mediaclient.Options{})
	ctx := context.Background()
	s, err := c.Upload(ctx, 5, strings.NewReader("hello"), nil)
	if err != nil {
		t.Fatal(err)
	}
	d, err := c.Resolve(ctx, s.ObjectKey)
	if err != nil {
		t.Fatal(err)
	}
	var out bytes.Buffer
	if _, err := c.Download(ctx, s.ObjectKey, &out, 0, nil); err != nil || out.String() != "hello" {
		t.Fatalf("download: %q, %v", out.String(), err)
	}
	c.Put(ctx, s, strings.NewReader("again"), nil) // refused: exists
	c.RequestSlot(ctx, 1<<40)                      // refused: too large
	c.Upload(ctx, 5, strings.NewReader("hello"), nil)
	c.Upload(ctx, 5, strings.NewReader("hello"), nil) // refused: rate
	f.call(http.MethodPost, mediaapi.PathSlots, "Bearer "+tok[:len(tok)-2]+"xx", `{"size":5}`, nil)

	hk, err := os.ReadFile(filepath.Join(f.store.Dir(), "media.key"))
	if err != nil {
		t.Fatal(err)
	}
	logs := f.logs.String()
	if !strings.Contains(logs, "slot issued") {
		t.Fatalf("debug log is missing: %s", logs)
	}
	secrets := map[string]string{
		"token":            tok,
		"token signature":  tok[strings.LastIndex(tok, ".")+1:],
		"upload signature": s.UploadURL[strings.Index(s.UploadURL, "sig=")+4:],
		"download sig":     d.DownloadURL[strings.Index(d.DownloadURL, "sig=")+4:],
		"HMAC key (hex)":   hex.EncodeToString(hk),
		"HMAC key (b64)":   base64.StdEncoding.EncodeToString(hk),
		"object key":       s.ObjectKey,
	}
	for what, v := range secrets {
		if strings.Contains(logs, v) {
			t.Errorf("the log contains the %s", what)
		}
	}
}

func TestMetricsRegistered(t *testing.T) {
	f := newFixture(t, nil)
	f.slot("alice", 10)
	f.call(http.MethodGet, mediaapi.PathPrefix+"x", "", "", nil)
	mfs, err := f.reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	names := map[string]bool{}
	for _, mf := range mfs {
		names[mf.GetName()] = true
		if !strings.HasPrefix(mf.GetName(), "hush_media_") {
			t.Errorf("metric %s outside hush_media_", mf.GetName())
		}
	}
	for _, n := range []string{"hush_media_requests_total", "hush_media_request_duration_seconds", "hush_media_slots_issued_total",
		"hush_media_refused_total", "hush_media_transfer_bytes_total", "hush_media_uploads_total", "hush_media_swept_objects_total"} {
		if !names[n] {
			t.Errorf("metric %s missing", n)
		}
	}
	if got := counter(t, f.reg, "hush_media_requests_total", map[string]string{"route": "slots", "status": "200"}); got != 1 {
		t.Errorf("requests_total{route=slots,status=200} = %v", got)
	}
	if got := counter(t, f.reg, "hush_media_requests_total", map[string]string{"route": "object", "status": "401"}); got != 1 {
		t.Errorf("requests_total{route=object,status=401} = %v", got)
	}
	// A second service on the same registry is refused (names collide).
	pub := f.priv.Public().(ed25519.PublicKey)
	if _, err := media.New(media.Config{Store: f.store, TokenKey: pub, Registerer: f.reg}); err == nil {
		t.Fatal("two services registered the same metrics")
	}
}

func TestObjectKeys(t *testing.T) {
	seen := map[string]bool{}
	for range 1000 {
		k, err := media.NewObjectKey()
		if err != nil {
			t.Fatal(err)
		}
		if !mediaapi.ValidObjectKey(k) || seen[k] {
			t.Fatalf("key %q: valid=%v repeated=%v", k, mediaapi.ValidObjectKey(k), seen[k])
		}
		seen[k] = true
	}
	for _, bad := range []string{"", "slots", "../../../../../../../etc/passwd", strings.Repeat("a", 31), strings.Repeat("a", 33), strings.Repeat("A", 32), strings.Repeat("1", 32), strings.Repeat("a", 31) + "/"} {
		if mediaapi.ValidObjectKey(bad) {
			t.Errorf("%q accepted as an object key", bad)
		}
	}
}

// TestSlotJSON pins the wire shape clients rely on.
func TestSlotJSON(t *testing.T) {
	f := newFixture(t, nil)
	resp, b, _ := f.call(http.MethodPost, mediaapi.PathSlots, "Bearer "+f.token("alice", 1, time.Hour), `{"size":9}`, nil)
	if resp.StatusCode != http.StatusOK || resp.Header.Get("Content-Type") != "application/json" {
		t.Fatalf("%d %s", resp.StatusCode, resp.Header.Get("Content-Type"))
	}
	var m map[string]any
	if err := json.Unmarshal(b, &m); err != nil {
		t.Fatal(err)
	}
	for _, k := range []string{"object_key", "upload_url", "method", "headers", "size", "expires_at"} {
		if _, ok := m[k]; !ok {
			t.Errorf("slot answer lacks %q: %s", k, b)
		}
	}
	if _, err := time.Parse(time.RFC3339, m["expires_at"].(string)); err != nil {
		t.Errorf("expires_at is not RFC 3339: %v", err)
	}
}

// BenchmarkSlot measures the relay's cost of one slot request (token
// verification, presigning, JSON), without the network.
func BenchmarkSlot(b *testing.B) {
	store, err := disk.Open(b.TempDir(), disk.Options{})
	if err != nil {
		b.Fatal(err)
	}
	pub, priv, _ := ed25519.GenerateKey(rand.Reader)
	svc, err := media.New(media.Config{Store: store, TokenKey: pub,
		SlotRate:   ratelimit.Rate{Burst: 1 << 30, Per: time.Second},
		QuotaBytes: 1 << 62, Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		b.Fatal(err)
	}
	now := time.Now()
	tok, _ := authtoken.Issue(priv, authtoken.Claims{Account: "alice", Device: 1, IssuedAt: now, Expiry: now.Add(time.Hour)})
	h := svc.Handler()
	for b.Loop() {
		req := httptest.NewRequest(http.MethodPost, mediaapi.PathSlots, strings.NewReader(`{"size":1048576}`))
		req.Header.Set("Authorization", "Bearer "+tok)
		w := httptest.NewRecorder()
		h.ServeHTTP(w, req)
		if w.Code != http.StatusOK {
			b.Fatalf("%d %s", w.Code, w.Body)
		}
	}
}
