package ksclient

import (
	"context"
	"errors"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/hushchat/hush/keyserver/ksapi"
	"github.com/hushchat/hush/protocol"
)

func TestNewValidates(t *testing.T) {
	for _, u := range []string{"", "127.0.0.1:8081", "ftp://x", "http://", "://"} {
		if _, err := New(u); err == nil {
			t.Errorf("New(%q) accepted", u)
		}
	}
	c, err := New("http://127.0.0.1:8081/prefix/")
	if err != nil || c.base.Path != "/prefix" {
		t.Fatalf("New with a path prefix: %v, %v", c, err)
	}
}

func serve(t *testing.T, h http.HandlerFunc) *Client {
	t.Helper()
	s := httptest.NewServer(h)
	t.Cleanup(s.Close)
	c, err := New(s.URL)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func TestErrors(t *testing.T) {
	c := serve(t, func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/v1/server-key":
			w.Header().Set("Retry-After", "7")
			w.WriteHeader(502)
			w.Write([]byte("<html>bad gateway</html>"))
		case "/v1/keys/status":
			if r.Header.Get("Authorization") != "Bearer tok" {
				t.Errorf("Authorization = %q", r.Header.Get("Authorization"))
			}
			w.Header().Set("Retry-After", "12")
			w.WriteHeader(429)
			w.Write([]byte(`{"code":"rate_limited","message":"slow down","retry_after_seconds":12}`))
		case "/v1/devices":
			w.Write([]byte(strings.Repeat(" ", ksapi.MaxResponseSize+1)))
		case "/v1/auth/challenge":
			w.Write([]byte(`{"nonsense": true}`))
		default:
			w.Write([]byte(`{"account": 5}`))
		}
	})
	ctx := context.Background()
	_, err := c.ServerKey(ctx)
	var e *Error
	if !errors.As(err, &e) || e.Status != 502 || e.Code != "" || !strings.Contains(e.Message, "bad gateway") || e.RetryAfter != 7*time.Second {
		t.Fatalf("proxy error: %#v", err)
	}
	_, err = c.KeyStatus(ctx, "tok")
	if !errors.As(err, &e) || e.Status != 429 || e.Code != ksapi.CodeRateLimited || e.Message != "slow down" || e.RetryAfter != 12*time.Second {
		t.Fatalf("rate limit: %#v", err)
	}
	if _, err := c.Devices(ctx, "tok"); err == nil || !strings.Contains(err.Error(), "larger than") {
		t.Fatalf("oversized response: %v", err)
	}
	// Unknown response fields are ignored (newer servers may add some), but
	// the answer must still make sense.
	if _, err := c.Challenge(ctx); err == nil || !strings.Contains(err.Error(), "malformed nonce") {
		t.Fatalf("challenge without a nonce: %v", err)
	}
	if _, err := c.Identity(ctx, "tok", "alice"); err == nil || !strings.Contains(err.Error(), "decode") {
		t.Fatalf("wrongly typed response: %v", err)
	}
}

func FuzzResponseError(f *testing.F) {
	f.Add(429, []byte(`{"code":"rate_limited","message":"m","retry_after_seconds":3}`), "3")
	f.Add(502, []byte("<html>"), "")
	f.Add(400, []byte(`{"code":5}`), "x")
	f.Fuzz(func(t *testing.T, status int, body []byte, retry string) {
		if len(body) > ksapi.MaxResponseSize {
			return
		}
		resp := &http.Response{StatusCode: status, Header: http.Header{"Retry-After": {retry}}}
		e := responseError(resp, body)
		if e.Status != status || e.Message == "" && status >= 100 && status < 600 && http.StatusText(status) != "" {
			t.Fatalf("error %#v for status %d", e, status)
		}
		if e.RetryAfter < 0 {
			t.Fatalf("negative RetryAfter %v", e.RetryAfter)
		}
		_ = e.Error()
	})
}

func FuzzBundleResponse(f *testing.F) {
	b, _ := ksapi.Marshal(&protocol.BundleResponse{Account: "alice", Bundles: []*protocol.PreKeyBundle{{
		DeviceId: 1, RegistrationId: 2, IdentityKey: make([]byte, 33),
		SignedPrekey: &protocol.SignedPreKey{KeyId: 1, PublicKey: make([]byte, 33), Signature: make([]byte, 64)},
		Prekey:       &protocol.PreKey{KeyId: 9, PublicKey: make([]byte, 33)},
	}}})
	f.Add(b)
	f.Add([]byte(`{"bundles":[null]}`))
	f.Fuzz(func(t *testing.T, body []byte) {
		var m protocol.BundleResponse
		_ = ksapi.UnmarshalResponse(body, &m)
		for _, b := range m.GetBundles() {
			_ = b.GetSignedPrekey().GetSignature()
			_ = b.GetPrekey().GetPublicKey()
		}
	})
}
