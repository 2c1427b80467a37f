package directory

import (
	"context"
	"crypto/ed25519"
	"errors"
	"net/http"
	"net/http/httptest"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hushchat/hush/keyserver/ksapi"
	"github.com/hushchat/hush/protocol"
)

type countingDir struct {
	mu      sync.Mutex
	devices map[string][]uint32
	calls   atomic.Int32
	gate    chan struct{} // when non-nil, each lookup waits for it
}

func (d *countingDir) Devices(ctx context.Context, account string) ([]uint32, error) {
	d.calls.Add(1)
	if d.gate != nil {
		<-d.gate
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	ids, ok := d.devices[account]
	if !ok {
		return nil, &UnknownAccountError{Account: account}
	}
	return slices.Clone(ids), nil
}

func (d *countingDir) set(account string, ids ...uint32) {
	d.mu.Lock()
	d.devices[account] = ids
	d.mu.Unlock()
}

func TestCacheHitsAndExpiry(t *testing.T) {
	now := time.Unix(1000, 0)
	clock := func() time.Time { return now }
	src := &countingDir{devices: map[string][]uint32{"alice": {3, 1}}}
	c := NewCache(src, CacheOptions{TTL: time.Minute, NegativeTTL: time.Second, Now: clock})
	ctx := context.Background()
	for range 3 {
		got, err := c.Devices(ctx, "alice")
		if err != nil || !slices.Equal(got, []uint32{1, 3}) {
			t.Fatalf("Devices = %v, %v; want [1 3] sorted", got, err)
		}
	}
	if n := src.calls.Load(); n != 1 {
		t.Fatalf("source asked %d times, want 1", n)
	}
	src.set("alice", 1, 2, 3)
	now = now.Add(2 * time.Minute)
	got, _ := c.Devices(ctx, "alice")
	if !slices.Equal(got, []uint32{1, 2, 3}) {
		t.Fatalf("after TTL Devices = %v, want the new list", got)
	}

	// Negative answers are cached for NegativeTTL only.
	if _, err := c.Devices(ctx, "bob"); !errors.Is(err, ErrUnknownAccount) {
		t.Fatalf("unknown account: err = %v", err)
	}
	src.set("bob", 1)
	if _, err := c.Devices(ctx, "bob"); !errors.Is(err, ErrUnknownAccount) {
		t.Fatalf("negative answer not cached: err = %v", err)
	}
	now = now.Add(2 * time.Second)
	if got, err := c.Devices(ctx, "bob"); err != nil || !slices.Equal(got, []uint32{1}) {
		t.Fatalf("after NegativeTTL: %v, %v", got, err)
	}
}

func TestCacheInvalidate(t *testing.T) {
	src := &countingDir{devices: map[string][]uint32{"alice": {1, 2}}}
	c := NewCache(src, CacheOptions{TTL: time.Hour})
	ctx := context.Background()
	c.Devices(ctx, "alice")
	src.set("alice", 1)
	c.Invalidate("alice")
	got, _ := c.Devices(ctx, "alice")
	if !slices.Equal(got, []uint32{1}) {
		t.Fatalf("after Invalidate Devices = %v, want [1]", got)
	}
}

// A lookup that was in flight when the account was invalidated must not put
// its stale answer into the cache.
func TestCacheInvalidateInFlight(t *testing.T) {
	src := &countingDir{devices: map[string][]uint32{"alice": {1, 2}}, gate: make(chan struct{})}
	c := NewCache(src, CacheOptions{TTL: time.Hour})
	ctx := context.Background()
	done := make(chan []uint32)
	go func() { d, _ := c.Devices(ctx, "alice"); done <- d }()
	for src.calls.Load() == 0 {
		time.Sleep(time.Millisecond)
	}
	c.Invalidate("alice")
	src.gate <- struct{}{} // the stale lookup answers [1 2]
	if d := <-done; !slices.Equal(d, []uint32{1, 2}) {
		t.Fatalf("waiter got %v", d)
	}
	src.set("alice", 2)
	go func() { src.gate <- struct{}{} }()
	got, _ := c.Devices(ctx, "alice")
	if !slices.Equal(got, []uint32{2}) {
		t.Fatalf("stale answer was cached: %v", got)
	}
}

func TestCacheSharesConcurrentMisses(t *testing.T) {
	src := &countingDir{devices: map[string][]uint32{"alice": {1}}, gate: make(chan struct{})}
	c := NewCache(src, CacheOptions{})
	var wg sync.WaitGroup
	for range 20 {
		wg.Add(1)
		go func() { defer wg.Done(); c.Devices(context.Background(), "alice") }()
	}
	for src.calls.Load() == 0 {
		time.Sleep(time.Millisecond)
	}
	time.Sleep(20 * time.Millisecond)
	close(src.gate)
	wg.Wait()
	if n := src.calls.Load(); n != 1 {
		t.Fatalf("20 concurrent misses made %d lookups, want 1", n)
	}
}

func TestCacheBounded(t *testing.T) {
	src := &countingDir{devices: map[string][]uint32{}}
	for i := range 100 {
		src.set(string(rune('a'+i%26))+string(rune('a'+i/26))+"x", 1)
	}
	c := NewCache(src, CacheOptions{MaxEntries: 10})
	for a := range src.devices {
		c.Devices(context.Background(), a)
	}
	if n := c.Len(); n > 10 {
		t.Fatalf("cache holds %d entries, cap 10", n)
	}
}

func TestCacheCallerContext(t *testing.T) {
	src := &countingDir{devices: map[string][]uint32{"alice": {1}}, gate: make(chan struct{})}
	defer close(src.gate)
	c := NewCache(src, CacheOptions{})
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Millisecond)
	defer cancel()
	if _, err := c.Devices(ctx, "alice"); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("err = %v, want deadline exceeded", err)
	}
}

func keyServerStub(t *testing.T, secret string, pub ed25519.PublicKey) *httptest.Server {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /v1/internal/accounts/{name}/devices", func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get(ksapi.InternalSecretHeader) != secret {
			w.WriteHeader(http.StatusForbidden)
			b, _ := ksapi.Marshal(&protocol.KeyServerError{Code: ksapi.CodeInternalAuth})
			w.Write(b)
			return
		}
		switch r.PathValue("name") {
		case "alice":
			b, _ := ksapi.Marshal(&protocol.DeviceList{Account: "alice", Devices: []*protocol.DeviceEntry{{DeviceId: 1}, {DeviceId: 4}}})
			w.Write(b)
		case "broken":
			w.Write([]byte(`{"account":"broken","devices":[{"device_id":999}]}`))
		default:
			w.WriteHeader(http.StatusNotFound)
			b, _ := ksapi.Marshal(&protocol.KeyServerError{Code: ksapi.CodeAccountNotFound})
			w.Write(b)
		}
	})
	mux.HandleFunc("GET /v1/server-key", func(w http.ResponseWriter, r *http.Request) {
		b, _ := ksapi.Marshal(&protocol.KeyServerKey{Algorithm: "ed25519", PublicKey: pub})
		w.Write(b)
	})
	s := httptest.NewServer(mux)
	t.Cleanup(s.Close)
	return s
}

func TestHTTP(t *testing.T) {
	pub, _, _ := ed25519.GenerateKey(nil)
	s := keyServerStub(t, "s3cret", pub)
	ctx := context.Background()
	h, err := NewHTTP(s.URL, "s3cret", nil)
	if err != nil {
		t.Fatal(err)
	}
	got, err := h.Devices(ctx, "alice")
	if err != nil || !slices.Equal(got, []uint32{1, 4}) {
		t.Fatalf("Devices(alice) = %v, %v", got, err)
	}
	if _, err := h.Devices(ctx, "nobody"); !errors.Is(err, ErrUnknownAccount) {
		t.Fatalf("Devices(nobody) err = %v, want ErrUnknownAccount", err)
	}
	if _, err := h.Devices(ctx, "Not A Name/../x"); !errors.Is(err, ErrUnknownAccount) {
		t.Fatalf("invalid name err = %v", err)
	}
	if _, err := h.Devices(ctx, "broken"); err == nil || errors.Is(err, ErrUnknownAccount) {
		t.Fatalf("device id 999 accepted: %v", err)
	}
	wrong, _ := NewHTTP(s.URL, "wrong", nil)
	if _, err := wrong.Devices(ctx, "alice"); err == nil || errors.Is(err, ErrUnknownAccount) {
		t.Fatalf("wrong secret: err = %v, want a source failure", err)
	}
	if _, err := NewHTTP("ftp://x", "s", nil); err == nil {
		t.Fatal("ftp URL accepted")
	}
	if _, err := NewHTTP(s.URL, "", nil); err == nil {
		t.Fatal("empty secret accepted")
	}

	k, err := FetchServerKey(ctx, s.URL, nil)
	if err != nil || !k.Equal(pub) {
		t.Fatalf("FetchServerKey = %x, %v", k, err)
	}
}
