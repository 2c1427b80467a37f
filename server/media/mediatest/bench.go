package mediatest

import (
	"bytes"
	"context"
	"crypto/rand"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"
)

// BenchSize is the object size of Bench: large enough that per-request
// costs fade and the figure is the backend's streaming rate.
const BenchSize = 32 << 20

// Bench measures raw (already encrypted, no crypto) transfer rates through
// a backend's presigned URLs over loopback HTTP: "upload" PUTs BenchSize
// bytes per iteration, "download" GETs them. Run with a modest -benchtime
// (e.g. 5x): every upload writes BenchSize bytes to storage.
func Bench(b *testing.B, open Opener) {
	h := open(b)
	var srv *httptest.Server
	if hd := h.Store.Handler(); hd != nil {
		srv = httptest.NewServer(hd)
		b.Cleanup(srv.Close)
	}
	abs := func(u string) string {
		if strings.HasPrefix(u, "/") {
			return srv.URL + u
		}
		return u
	}
	data := make([]byte, BenchSize)
	if _, err := rand.Read(data); err != nil {
		b.Fatal(err)
	}
	ctx := context.Background()
	hc := &http.Client{Transport: http.DefaultTransport.(*http.Transport).Clone()}
	put := func(b *testing.B) string {
		key := newKey(b)
		r, err := h.Store.PresignUpload(ctx, key, BenchSize, time.Hour)
		if err != nil {
			b.Fatal(err)
		}
		req, err := http.NewRequestWithContext(ctx, r.Method, abs(r.URL), bytes.NewReader(data))
		if err != nil {
			b.Fatal(err)
		}
		req.Header = r.Header.Clone()
		resp, err := hc.Do(req)
		if err != nil {
			b.Fatal(err)
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		if resp.StatusCode/100 != 2 {
			b.Fatalf("PUT: %s", resp.Status)
		}
		return key
	}
	b.Run("upload", func(b *testing.B) {
		b.SetBytes(BenchSize)
		for b.Loop() {
			key := put(b)
			b.StopTimer()
			if err := h.Store.Delete(ctx, key); err != nil {
				b.Fatal(err)
			}
			b.StartTimer()
		}
	})
	b.Run("download", func(b *testing.B) {
		key := put(b)
		b.SetBytes(BenchSize)
		b.ResetTimer()
		for b.Loop() {
			r, err := h.Store.PresignDownload(ctx, key, time.Hour)
			if err != nil {
				b.Fatal(err)
			}
			req, err := http.NewRequestWithContext(ctx, r.Method, abs(r.URL), nil)
			if err != nil {
				b.Fatal(err)
			}
			req.Header = r.Header.Clone()
			resp, err := hc.Do(req)
			if err != nil {
				b.Fatal(err)
			}
			n, err := io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			if err != nil || n != BenchSize || resp.StatusCode != http.StatusOK {
				b.Fatalf("GET: %s, %d bytes, %v", resp.Status, n, err)
			}
		}
	})
}
