package mediaapi

import (
	"encoding/json"
	"errors"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"testing"
	"time"
)

func TestDecodeSlotRequest(t *testing.T) {
	for in, want := range map[string]int64{
		`{"size":1}`:                1,
		`{"size":0}`:                0,
		` { "size" : 104857600 } `:  104857600,
		`{"size":9007199254740991}`: maxJSONInt,
		"{\"size\":5}\n":            5,
	} {
		got, err := DecodeSlotRequest([]byte(in))
		if err != nil || got.Size != want {
			t.Errorf("%q: %+v, %v; want %d", in, got, err, want)
		}
	}
	for _, in := range []string{
		``, `null`, `[]`, `{}`, `{"size":null}`, `{"size":"5"}`, `{"size":-1}`, `{"size":1.0}`, `{"size":1e3}`,
		`{"size":01}`, `{"size":9007199254740992}`, `{"size":99999999999999999999}`, `{"size":5,"x":1}`,
		`{"size":5} 7`, `{"size":5}{}`, `{"siZe":100}`, `{"size":1,"size":2}`, `{"SIZE":1}`, `{"Size":5,"size":5,"name":""}`, `{"size":true}`,
		`{"size":5,` + strings.Repeat(" ", MaxRequestBody) + `}`,
	} {
		if got, err := DecodeSlotRequest([]byte(in)); !errors.Is(err, ErrMalformed) {
			t.Errorf("%q: %+v, %v; want ErrMalformed", in, got, err)
		}
	}
}

func FuzzDecodeSlotRequest(f *testing.F) {
	for _, s := range []string{`{"size":1}`, `{"size":104857600}`, `{"size":0}`, `{"size":-1}`, `{"size":"1"}`, `{}`, `{"size":1,"a":2}`} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		r, err := DecodeSlotRequest(b)
		if err != nil {
			if !errors.Is(err, ErrMalformed) {
				t.Fatalf("error does not wrap ErrMalformed: %v", err)
			}
			return
		}
		if len(b) > MaxRequestBody {
			t.Fatalf("accepted %d bytes", len(b))
		}
		if r.Size < 0 || r.Size > maxJSONInt {
			t.Fatalf("size %d out of range", r.Size)
		}
		// Whatever is accepted means what encoding/json says it means.
		var v map[string]json.Number
		if err := json.Unmarshal(b, &v); err != nil {
			t.Fatalf("accepted what encoding/json refuses: %v", err)
		}
		if n, err := v["size"].Int64(); err != nil || n != r.Size {
			t.Fatalf("decoded %d, encoding/json reads %q", r.Size, v["size"])
		}
		again, err := DecodeSlotRequest([]byte(`{"size":` + strconv.FormatInt(r.Size, 10) + `}`))
		if err != nil || again != r {
			t.Fatalf("canonical form of %+v: %+v, %v", r, again, err)
		}
	})
}

func TestDecodeAnswers(t *testing.T) {
	key := "abcdefghijklmnopqrstuvwxyz234567"
	s, err := DecodeSlot([]byte(`{"object_key":"` + key + `","upload_url":"http://x/y","method":"PUT","headers":{},"size":5,"expires_at":"2030-01-01T00:00:00Z"}`))
	if err != nil || s.Size != 5 || s.ExpiresAt.Year() != 2030 {
		t.Fatalf("DecodeSlot: %+v, %v", s, err)
	}
	for _, bad := range []string{`{}`, `{"object_key":"../x","upload_url":"u","method":"PUT"}`, `{"object_key":"` + key + `","method":"PUT"}`,
		`{"object_key":"` + key + `","upload_url":"u","method":"PUT","size":-1}`, `nope`, `{"object_key":"` + key + `","upload_url":"u","method":"PUT","pad":"` + strings.Repeat("x", MaxResponseBody) + `"}`} {
		if _, err := DecodeSlot([]byte(bad)); !errors.Is(err, ErrMalformed) {
			t.Errorf("DecodeSlot(%.60q): %v", bad, err)
		}
		if _, err := DecodeDownload([]byte(strings.Replace(bad, "upload_url", "download_url", 1))); !errors.Is(err, ErrMalformed) {
			t.Errorf("DecodeDownload(%.60q): %v", bad, err)
		}
	}
	if _, ok := DecodeError([]byte(`<Error/>`)); ok {
		t.Fatal("XML decoded as an error body")
	}
	if e, ok := DecodeError([]byte(`{"code":"too_large","message":"m","limit":7}`)); !ok || e.Limit != 7 {
		t.Fatalf("DecodeError: %+v %v", e, ok)
	}
}

func TestWriteError(t *testing.T) {
	w := httptest.NewRecorder()
	WriteError(w, http.StatusTooManyRequests, Error{Code: CodeRateLimited, Message: "slow down", RetryAfterSeconds: 12})
	if w.Code != 429 || w.Header().Get("Retry-After") != "12" || w.Header().Get("Content-Type") != "application/json" {
		t.Fatalf("%d %v", w.Code, w.Header())
	}
	e, ok := DecodeError(w.Body.Bytes())
	if !ok || e.Code != CodeRateLimited || e.RetryAfterSeconds != 12 {
		t.Fatalf("%+v", e)
	}
	if got := RetryAfter(w.Header()); got != 12*time.Second {
		t.Fatalf("RetryAfter = %v", got)
	}
	if RetrySeconds(10*time.Millisecond) != 1 || RetrySeconds(1500*time.Millisecond) != 2 {
		t.Fatal("RetrySeconds does not round up")
	}
	h := http.Header{}
	h.Set("Retry-After", time.Now().Add(time.Hour).UTC().Format(http.TimeFormat))
	if got := RetryAfter(h); got < 59*time.Minute || got > time.Hour {
		t.Fatalf("RetryAfter(date) = %v", got)
	}
}
