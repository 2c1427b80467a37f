package push

import (
	"context"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"

	"github.com/hushchat/hush/server/queue"
)

func TestValidateEndpoint(t *testing.T) {
	good := []string{
		"https://push.example.org/up/abc123",
		"http://ntfy.example.com:8080/upXYZ?up=1",
		"https://[2606:4700::1111]/x",
	}
	for _, u := range good {
		if _, err := ValidateEndpoint(u, false); err != nil {
			t.Errorf("ValidateEndpoint(%q) = %v, want ok", u, err)
		}
	}
	bad := []string{
		"", "ftp://push.example.org/x", "file:///etc/passwd", "https://", "/relative",
		"https://user:pw@push.example.org/x",
		"http://localhost:8080/x", "http://LOCALHOST./x", "http://a.localhost/x",
		"http://127.0.0.1/x", "http://127.1.2.3/x", "http://10.0.0.1/x", "http://172.16.5.4/x",
		"http://192.168.1.1/x", "http://169.254.169.254/latest/meta-data", "http://[::1]/x",
		"http://[::ffff:127.0.0.1]/x", "http://[fd00::1]/x", "http://[fe80::1]/x", "http://0.0.0.0/x",
		"http://100.64.1.1/x", "http://[64:ff9b::a00:1]/x", "http://224.0.0.1/x",
		"https://push.example.org/" + strings.Repeat("a", 2100),
	}
	for _, u := range bad {
		if _, err := ValidateEndpoint(u, false); err == nil {
			t.Errorf("ValidateEndpoint(%q) accepted", u)
		}
	}
	if _, err := ValidateEndpoint("http://127.0.0.1:9/x", true); err != nil {
		t.Errorf("AllowPrivate refused loopback: %v", err)
	}
	if _, err := ValidateEndpoint("ftp://127.0.0.1:9/x", true); err == nil {
		t.Error("AllowPrivate accepted ftp")
	}
}

// The dial-time guard refuses internal addresses whatever name resolved to
// them (DNS rebinding), without a connection being made.
func TestDialGuard(t *testing.T) {
	var accepted atomic.Int32
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			accepted.Add(1)
			c.Close()
		}
	}()
	d := net.Dialer{Control: dialGuard(false)}
	if c, err := d.Dial("tcp", ln.Addr().String()); err == nil {
		c.Close()
		t.Fatal("guarded dialer connected to loopback")
	}
	guard := dialGuard(false)
	for _, a := range []string{"[::1]:443", "10.1.2.3:80", "169.254.169.254:80"} {
		if guard("tcp", a, nil) == nil {
			t.Errorf("guard allowed %s", a)
		}
	}
	if err := guard("tcp", "93.184.216.34:443", nil); err != nil {
		t.Errorf("guard refused a public address: %v", err)
	}
	if dialGuard(true)("tcp", "127.0.0.1:80", nil) != nil {
		t.Error("AllowPrivate guard refused loopback")
	}
	time.Sleep(10 * time.Millisecond)
	if n := accepted.Load(); n != 0 {
		t.Fatalf("%d connections reached the loopback listener", n)
	}
	if !Internal(netip.MustParseAddr("::ffff:10.0.0.1")) {
		t.Error("mapped private address not internal")
	}
}

type hook struct {
	srv    *httptest.Server
	mu     sync.Mutex
	bodies []string
	status []int // answers in order; 200 after the list is used up
	hits   atomic.Int32
	got    chan struct{}
}

func newHook(t *testing.T, status ...int) *hook {
	h := &hook{status: status, got: make(chan struct{}, 100)}
	h.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		h.mu.Lock()
		h.bodies = append(h.bodies, r.Method+" "+string(b))
		code := 200
		if len(h.status) > 0 {
			code, h.status = h.status[0], h.status[1:]
		}
		h.mu.Unlock()
		h.hits.Add(1)
		w.WriteHeader(code)
		h.got <- struct{}{}
	}))
	t.Cleanup(h.srv.Close)
	return h
}

func (h *hook) wait(t *testing.T, n int) {
	t.Helper()
	for range n {
		select {
		case <-h.got:
		case <-time.After(10 * time.Second):
			t.Fatalf("push never arrived (got %d)", h.hits.Load())
		}
	}
}

var bob = queue.Device{Account: "bob", ID: 1}

func TestWebhookOncePerOfflinePeriod(t *testing.T) {
	h := newHook(t)
	eps := NewMemoryEndpoints()
	reg := prometheus.NewRegistry()
	w := NewWebhook(eps, WebhookOptions{AllowPrivate: true, Registerer: reg})
	defer w.Close()
	ctx := context.Background()
	if err := w.Register(ctx, bob, h.srv.URL+"/up/bob"); err != nil {
		t.Fatal(err)
	}
	for range 5 {
		w.Notify(bob)
	}
	h.wait(t, 1)
	for range 5 {
		w.Notify(bob)
	}
	time.Sleep(50 * time.Millisecond)
	if n := h.hits.Load(); n != 1 {
		t.Fatalf("%d pushes for one offline period, want 1", n)
	}
	if h.bodies[0] != "POST "+Body {
		t.Fatalf("push request %q carries more than the constant body", h.bodies[0])
	}
	w.Reset(bob) // bob connected, then went offline again
	w.Notify(bob)
	h.wait(t, 1)
	for deadline := time.Now().Add(5 * time.Second); counterValue(t, w.total.WithLabelValues("sent")) != 2; {
		if time.Now().After(deadline) {
			t.Fatalf("hush_push_total{sent} = %v, want 2", counterValue(t, w.total.WithLabelValues("sent")))
		}
		time.Sleep(5 * time.Millisecond)
	}
	// A device without an endpoint gets nothing, and costs one lookup.
	w.Notify(queue.Device{Account: "carol", ID: 1})
	time.Sleep(20 * time.Millisecond)
	if n := h.hits.Load(); n != 2 {
		t.Fatalf("device without endpoint was pushed (%d hits)", n)
	}
}

func TestWebhookRetriesWithBackoff(t *testing.T) {
	h := newHook(t, 503, 500)
	eps := NewMemoryEndpoints()
	w := NewWebhook(eps, WebhookOptions{AllowPrivate: true, Backoff: 10 * time.Millisecond})
	defer w.Close()
	w.Register(context.Background(), bob, h.srv.URL)
	w.Notify(bob)
	h.wait(t, 3)
	time.Sleep(50 * time.Millisecond)
	if n := h.hits.Load(); n != 3 {
		t.Fatalf("%d attempts, want 3 (two failures, one success)", n)
	}
}

func TestWebhookGivesUp(t *testing.T) {
	h := newHook(t, 503, 503, 503, 503)
	w := NewWebhook(NewMemoryEndpoints(), WebhookOptions{AllowPrivate: true, Backoff: 5 * time.Millisecond, MaxAttempts: 2, MaxBackoff: time.Hour})
	defer w.Close()
	w.Register(context.Background(), bob, h.srv.URL)
	w.Notify(bob)
	h.wait(t, 2)
	w.Notify(bob)
	time.Sleep(50 * time.Millisecond)
	if n := h.hits.Load(); n != 2 {
		t.Fatalf("%d attempts, want MaxAttempts=2 and quiet after", n)
	}
}

func TestWebhookGoneDeletesEndpoint(t *testing.T) {
	h := newHook(t, 410)
	eps := NewMemoryEndpoints()
	w := NewWebhook(eps, WebhookOptions{AllowPrivate: true})
	defer w.Close()
	ctx := context.Background()
	w.Register(ctx, bob, h.srv.URL)
	w.Notify(bob)
	h.wait(t, 1)
	deadline := time.Now().Add(5 * time.Second)
	for {
		ep, _ := eps.Get(ctx, bob)
		if ep == "" {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("gone endpoint not deleted")
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func TestWebhookRefusesInternalEndpoint(t *testing.T) {
	h := newHook(t)
	eps := NewMemoryEndpoints()
	w := NewWebhook(eps, WebhookOptions{})
	defer w.Close()
	ctx := context.Background()
	if err := w.Register(ctx, bob, h.srv.URL); err == nil {
		t.Fatal("loopback endpoint registered without AllowPrivate")
	}
	// Even a stored internal endpoint (e.g. registered under an older,
	// laxer configuration) is never called.
	eps.Set(ctx, bob, h.srv.URL)
	w.Notify(bob)
	time.Sleep(50 * time.Millisecond)
	if n := h.hits.Load(); n != 0 {
		t.Fatalf("internal endpoint was called %d times", n)
	}
}

func TestSQLiteEndpoints(t *testing.T) {
	path := filepath.Join(t.TempDir(), "push.db")
	ctx := context.Background()
	s, err := OpenSQLiteEndpoints(path)
	if err != nil {
		t.Fatal(err)
	}
	if ep, err := s.Get(ctx, bob); err != nil || ep != "" {
		t.Fatalf("Get before Set = %q, %v", ep, err)
	}
	s.Set(ctx, bob, "https://a.example/1")
	s.Set(ctx, bob, "https://a.example/2")
	s.Close()
	if fi, _ := os.Stat(path); fi.Mode().Perm() != 0o600 {
		t.Fatalf("push.db mode %v, want 0600", fi.Mode().Perm())
	}
	s, err = OpenSQLiteEndpoints(path)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if ep, _ := s.Get(ctx, bob); ep != "https://a.example/2" {
		t.Fatalf("after reopen Get = %q", ep)
	}
	s.Set(ctx, bob, "")
	if ep, _ := s.Get(ctx, bob); ep != "" {
		t.Fatalf("after delete Get = %q", ep)
	}
}

// FuzzValidateEndpoint: whatever a client registers, an accepted endpoint
// is http(s) with a host and never an internal IP literal.
func FuzzValidateEndpoint(f *testing.F) {
	f.Add("https://push.example.org/up/abc")
	f.Add("http://127.0.0.1:80/x")
	f.Add("http://[::ffff:10.0.0.1]/")
	f.Fuzz(func(t *testing.T, raw string) {
		u, err := ValidateEndpoint(raw, false)
		if err != nil {
			return
		}
		if u.Scheme != "http" && u.Scheme != "https" || u.Hostname() == "" {
			t.Fatalf("accepted %q", raw)
		}
		if ip, err := netip.ParseAddr(u.Hostname()); err == nil && Internal(ip) {
			t.Fatalf("accepted internal %q", raw)
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
