package mediaclient

import (
	"bytes"
	"errors"
	"io"
	"net/http"
	"net/url"
	"strings"
	"testing"
	"testing/iotest"
	"time"

	"github.com/hushchat/hush/server/media/mediaapi"
)

func TestExactReader(t *testing.T) {
	data := bytes.Repeat([]byte("0123456789"), 10_000) // 100,000 bytes
	var last int64
	calls := 0
	er := &exactReader{r: iotest.HalfReader(bytes.NewReader(data)), remaining: int64(len(data)), total: int64(len(data)),
		progress: func(done, total int64) {
			if done <= last || total != int64(len(data)) {
				t.Fatalf("progress %d/%d after %d", done, total, last)
			}
			last = done
			calls++
		}}
	got, err := io.ReadAll(er)
	if err != nil || !bytes.Equal(got, data) || last != int64(len(data)) || calls == 0 {
		t.Fatalf("exact body: %d bytes, %v, last progress %d", len(got), err, last)
	}

	// Too long: the last chunk is withheld, so the server never receives
	// a complete body.
	er = &exactReader{r: bytes.NewReader(append(bytes.Clone(data), 'x')), remaining: int64(len(data)), total: int64(len(data))}
	got, err = io.ReadAll(er)
	if !errors.Is(err, ErrBodyTooLong) || len(got) >= len(data) {
		t.Fatalf("long body: released %d bytes, %v", len(got), err)
	}
	// Too short.
	er = &exactReader{r: bytes.NewReader(data[:500]), remaining: 1000, total: 1000}
	if _, err = io.ReadAll(er); !errors.Is(err, ErrBodyTooShort) || !strings.Contains(err.Error(), "500 of 1000") {
		t.Fatalf("short body: %v", err)
	}
	// A failing source.
	boom := errors.New("disk on fire")
	er = &exactReader{r: iotest.ErrReader(boom), remaining: 10, total: 10}
	if _, err = io.ReadAll(er); !errors.Is(err, boom) {
		t.Fatalf("failing source: %v", err)
	}
	// The error sticks.
	if n, err2 := er.Read(make([]byte, 4)); n != 0 || !errors.Is(err2, boom) {
		t.Fatalf("after failure: %d, %v", n, err2)
	}
}

func resp(status int, hdr map[string]string) *http.Response {
	r := &http.Response{StatusCode: status, Status: http.StatusText(status), Header: http.Header{}}
	for k, v := range hdr {
		r.Header.Set(k, v)
	}
	return r
}

func TestResponseError(t *testing.T) {
	for _, tc := range []struct {
		status int
		hdr    map[string]string
		body   string
		code   string
		retry  time.Duration
		limit  int64
	}{
		{413, nil, `{"code":"too_large","message":"limit is 100 MiB","limit":104857600}`, mediaapi.CodeTooLarge, 0, 104857600},
		{429, map[string]string{"Retry-After": "7"}, `{"code":"rate_limited","message":"slow","retry_after_seconds":7}`, mediaapi.CodeRateLimited, 7 * time.Second, 0},
		{503, nil, `{"code":"unavailable","message":"later","retry_after_seconds":5}`, mediaapi.CodeUnavailable, 5 * time.Second, 0},
		{403, nil, `<?xml version="1.0"?><Error><Code>SignatureDoesNotMatch</Code><Message>The request signature we calculated does not match</Message><StringToSign>AWS4…</StringToSign></Error>`, mediaapi.CodeBadSignature, 0, 0},
		{403, nil, `<Error><Code>AccessDenied</Code><Message>Request has expired.</Message></Error>`, mediaapi.CodeURLExpired, 0, 0},
		{403, nil, `<Error><Code>AccessDenied</Code><Message>Access Denied</Message></Error>`, mediaapi.CodeBadSignature, 0, 0},
		{412, nil, `<Error><Code>PreconditionFailed</Code><Message>At least one of the pre-conditions you specified did not hold.</Message></Error>`, mediaapi.CodeExists, 0, 0},
		{404, nil, `<Error><Code>NoSuchKey</Code><Message>gone</Message></Error>`, mediaapi.CodeNotFound, 0, 0},
		{400, nil, `<Error><Code>IncompleteBody</Code><Message>short</Message></Error>`, mediaapi.CodeSizeMismatch, 0, 0},
		{502, nil, `Bad Gateway`, "bad_gateway", 0, 0},
	} {
		err := responseError("upload", resp(tc.status, tc.hdr), []byte(tc.body))
		var e *Error
		if !errors.As(err, &e) || e.Status != tc.status || e.Code != tc.code || e.RetryAfter != tc.retry || e.Limit != tc.limit {
			t.Errorf("%d %.40q: %+v, want code %s retry %v limit %d", tc.status, tc.body, e, tc.code, tc.retry, tc.limit)
			continue
		}
		if strings.Contains(e.Error(), "StringToSign") || strings.Contains(e.Error(), "AWS4") {
			t.Errorf("error carries the store's signing details: %s", e)
		}
	}
}

func TestRedactURL(t *testing.T) {
	err := redactURL(&url.Error{Op: "Put", URL: "http://127.0.0.1:1/v1/media/blob/k?op=put&size=1&exp=2&sig=SECRET", Err: io.ErrUnexpectedEOF})
	if strings.Contains(err.Error(), "SECRET") || !strings.Contains(err.Error(), "/v1/media/blob/k") || !errors.Is(err, io.ErrUnexpectedEOF) {
		t.Fatalf("redacted: %v", err)
	}
	err = redactURL(&url.Error{Op: "Get", URL: "https://bucket.s3.amazonaws.com/media/k?X-Amz-Signature=SECRET", Err: io.EOF})
	if strings.Contains(err.Error(), "SECRET") {
		t.Fatalf("redacted: %v", err)
	}
}

func TestParseContentRange(t *testing.T) {
	start, total, err := parseContentRange("bytes 100-199/200")
	if err != nil || start != 100 || total != 200 {
		t.Fatalf("%d %d %v", start, total, err)
	}
	for _, bad := range []string{"", "bytes */200", "items 1-2/3", "bytes 1-2", "bytes x-2/3", "bytes 1-2/y"} {
		if _, _, err := parseContentRange(bad); err == nil {
			t.Errorf("%q parsed", bad)
		}
	}
}

func TestNew(t *testing.T) {
	for _, u := range []string{"", "example.org", "ftp://example.org", "http://"} {
		if _, err := New(u, StaticToken("t"), Options{}); err == nil {
			t.Errorf("base URL %q accepted", u)
		}
	}
	if _, err := New("http://example.org", nil, Options{}); err == nil {
		t.Error("nil token accepted")
	}
	c, err := New("https://example.org/hush/", StaticToken("t"), Options{})
	if err != nil {
		t.Fatal(err)
	}
	if got := c.endpoint(mediaapi.PathSlots); got != "https://example.org/hush/v1/media/slots" {
		t.Fatalf("endpoint %q", got)
	}
}
