// Package mediaclient is the HTTP half of a hush client's attachments: it
// asks the relay for upload slots and download URLs and moves the bytes to
// and from the URLs it gets, streaming, with progress callbacks and
// resumable downloads.
//
// It does no cryptography and never sees plaintext: callers hand it an
// already-encrypted blob (crypto.EncryptAttachment streams one) and get the
// blob back, typically straight into a crypto.AttachmentDecrypter as
// Download's destination, so it is verified and decrypted as it arrives
// (Download writes in order, resuming where it stopped). The Bearer
// token goes only to the relay's JSON endpoints, never to the presigned
// blob URLs, which may point at a third-party object store.
//
// Uploads read the body once, as the transport sends it, and never hold it
// whole; the body must yield exactly the slot's size: a shorter or longer
// body aborts the upload before its last byte is sent, so the server
// never stores a blob of the wrong length. Downloads write to an io.Writer
// from a given offset with HTTP Range, and retry transient failures
// (network errors, 5xx, an expired URL, which is re-resolved) from where
// they stopped.
package mediaclient

import (
	"bytes"
	"context"
	"encoding/xml"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/hushchat/hush/server/media/mediaapi"
)

// TokenFunc returns the Bearer token for the relay (e.g. from a token
// cache that logs in again when the token nears expiry).
type TokenFunc func(ctx context.Context) (string, error)

// StaticToken returns a TokenFunc that always returns tok.
func StaticToken(tok string) TokenFunc {
	return func(context.Context) (string, error) { return tok, nil }
}

// Progress is told the bytes transferred so far and the total. For
// uploads it is called from the HTTP transport's goroutine; it must be
// quick and safe for that.
type Progress func(done, total int64)

// Options configures a Client.
type Options struct {
	// HTTPClient sends every request (nil: a client of its own, with a
	// clone of http.DefaultTransport and no overall timeout, since a large
	// transfer may take long; contexts bound calls instead).
	HTTPClient *http.Client
	// MaxAttempts bounds the tries of one Download (default 4).
	MaxAttempts int
	// APITimeout bounds each call to the relay's JSON endpoints (default
	// 30s); transfers are bounded by their context only.
	APITimeout time.Duration
}

// Client talks to one relay's media API.
type Client struct {
	base        *url.URL
	token       TokenFunc
	hc          *http.Client
	maxAttempts int
	apiTimeout  time.Duration
}

// Errors for bodies that do not match the slot.
var (
	ErrBodyTooShort = errors.New("upload body is shorter than the slot's size")
	ErrBodyTooLong  = errors.New("upload body is longer than the slot's size")
)

// Error is a refused request. Code is a mediaapi.Code* value when the
// refusal maps to one (S3 error codes are mapped: SignatureDoesNotMatch
// → bad_signature, an expired URL → url_expired, PreconditionFailed →
// exists…), otherwise the store's own code.
type Error struct {
	Op         string // "request slot", "upload", "resolve", "download"
	Status     int
	Code       string
	Message    string
	Limit      int64         // with CodeTooLarge / CodeQuotaExceeded
	RetryAfter time.Duration // with 429 and 503
}

func (e *Error) Error() string {
	s := fmt.Sprintf("media %s: %d %s: %s", e.Op, e.Status, e.Code, e.Message)
	if e.RetryAfter > 0 {
		s += fmt.Sprintf(" (retry after %v)", e.RetryAfter)
	}
	return s
}

// New returns a client for the relay at baseURL (e.g.
// https://chat.example.org).
func New(baseURL string, token TokenFunc, opts Options) (*Client, error) {
	u, err := url.Parse(baseURL)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return nil, fmt.Errorf("media client: base URL %q must be an absolute http(s) URL", baseURL)
	}
	if token == nil {
		return nil, errors.New("media client: token source is nil")
	}
	c := &Client{base: u, token: token, hc: opts.HTTPClient, maxAttempts: opts.MaxAttempts, apiTimeout: opts.APITimeout}
	if c.hc == nil {
		c.hc = &http.Client{Transport: http.DefaultTransport.(*http.Transport).Clone()}
	}
	if c.maxAttempts <= 0 {
		c.maxAttempts = 4
	}
	if c.apiTimeout <= 0 {
		c.apiTimeout = 30 * time.Second
	}
	return c, nil
}

func (c *Client) endpoint(path string) string {
	u := *c.base
	u.Path = strings.TrimSuffix(c.base.Path, "/") + path
	u.RawPath = ""
	u.RawQuery = ""
	return u.String()
}

// api sends an authenticated JSON request to the relay and returns the
// body of a 200 answer.
func (c *Client) api(ctx context.Context, op, method, path string, body []byte) ([]byte, error) {
	ctx, cancel := context.WithTimeout(ctx, c.apiTimeout)
	defer cancel()
	tok, err := c.token(ctx)
	if err != nil {
		return nil, fmt.Errorf("media %s: token: %w", op, err)
	}
	var rd io.Reader
	if body != nil {
		rd = bytes.NewReader(body)
	}
	req, err := http.NewRequestWithContext(ctx, method, c.endpoint(path), rd)
	if err != nil {
		return nil, fmt.Errorf("media %s: %w", op, err)
	}
	req.Header.Set("Authorization", "Bearer "+tok)
	req.Header.Set("Accept", "application/json")
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := c.hc.Do(req)
	if err != nil {
		return nil, fmt.Errorf("media %s: %w", op, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, mediaapi.MaxResponseBody+1))
	if err != nil {
		return nil, fmt.Errorf("media %s: read answer: %w", op, err)
	}
	if resp.StatusCode != http.StatusOK {
		return nil, responseError(op, resp, b)
	}
	return b, nil
}

// RequestSlot asks for a slot to upload size bytes (the encrypted size).
func (c *Client) RequestSlot(ctx context.Context, size int64) (mediaapi.Slot, error) {
	body := []byte(`{"size":` + strconv.FormatInt(size, 10) + `}`)
	b, err := c.api(ctx, "request slot", http.MethodPost, mediaapi.PathSlots, body)
	if err != nil {
		return mediaapi.Slot{}, err
	}
	s, err := mediaapi.DecodeSlot(b)
	if err != nil {
		return mediaapi.Slot{}, fmt.Errorf("media request slot: %w", err)
	}
	if s.Size != size {
		return mediaapi.Slot{}, fmt.Errorf("media request slot: answer is for %d bytes, asked for %d", s.Size, size)
	}
	return s, nil
}

// Upload requests a slot for size bytes and uploads body to it; it
// returns the slot (whose ObjectKey goes into the message).
func (c *Client) Upload(ctx context.Context, size int64, body io.Reader, progress Progress) (mediaapi.Slot, error) {
	s, err := c.RequestSlot(ctx, size)
	if err != nil {
		return mediaapi.Slot{}, err
	}
	if err := c.Put(ctx, s, body, progress); err != nil {
		return mediaapi.Slot{}, err
	}
	return s, nil
}

// expectThreshold is the size from which uploads ask for 100-continue, so
// a refused URL costs no transfer.
const expectThreshold = 1 << 20

// Put uploads body, which must yield exactly slot.Size bytes, to the slot.
// Nothing is retried: a slot's URL is single-use and a failed upload
// leaves nothing behind, so a caller retries with a new slot.
func (c *Client) Put(ctx context.Context, slot mediaapi.Slot, body io.Reader, progress Progress) error {
	if slot.Size < mediaapi.MinUpload {
		return fmt.Errorf("media upload: slot size %d is below %d", slot.Size, mediaapi.MinUpload)
	}
	er := &exactReader{r: body, remaining: slot.Size, total: slot.Size, progress: progress}
	req, err := http.NewRequestWithContext(ctx, slot.Method, slot.UploadURL, er)
	if err != nil {
		return fmt.Errorf("media upload: %w", err)
	}
	req.ContentLength = slot.Size
	for k, v := range slot.Headers {
		req.Header.Set(k, v)
	}
	if slot.Size >= expectThreshold {
		req.Header.Set("Expect", "100-continue")
	}
	resp, err := c.hc.Do(req)
	if er.err != nil {
		if resp != nil {
			resp.Body.Close()
		}
		return fmt.Errorf("media upload: %w", er.err)
	}
	if err != nil {
		return fmt.Errorf("media upload: %w", redactURL(err))
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(io.LimitReader(resp.Body, mediaapi.MaxResponseBody+1))
	if resp.StatusCode/100 != 2 {
		return responseError("upload", resp, b)
	}
	if er.remaining != 0 {
		return fmt.Errorf("media upload: %w: the store answered %s after %d of %d bytes", ErrBodyTooShort, resp.Status, slot.Size-er.remaining, slot.Size)
	}
	return nil
}

// exactReader yields exactly remaining bytes of r and fails if r has
// fewer or more. It looks one byte past the end before releasing the last
// chunk, so a too-long body fails before the upload completes.
type exactReader struct {
	r         io.Reader
	remaining int64
	total     int64
	progress  Progress
	err       error
}

func (e *exactReader) Read(p []byte) (int, error) {
	if e.err != nil {
		return 0, e.err
	}
	if e.remaining == 0 {
		return 0, io.EOF
	}
	if int64(len(p)) > e.remaining {
		p = p[:e.remaining]
	}
	n, err := e.r.Read(p)
	e.remaining -= int64(n)
	if e.remaining == 0 {
		if perr := e.peek(); perr != nil {
			e.err = perr
			return 0, perr
		}
	} else if err == io.EOF {
		e.err = fmt.Errorf("%w: it ended after %d of %d bytes", ErrBodyTooShort, e.total-e.remaining, e.total)
		return 0, e.err
	} else if err != nil {
		e.err = fmt.Errorf("read upload body: %w", err)
		return 0, e.err
	}
	if n > 0 && e.progress != nil {
		e.progress(e.total-e.remaining, e.total)
	}
	return n, nil
}

// peek checks that r is at its end.
func (e *exactReader) peek() error {
	var one [1]byte
	for range 100 {
		n, err := e.r.Read(one[:])
		if n > 0 {
			return fmt.Errorf("%w of %d bytes", ErrBodyTooLong, e.total)
		}
		if err == io.EOF {
			return nil
		}
		if err != nil {
			return fmt.Errorf("read upload body: %w", err)
		}
	}
	return fmt.Errorf("read upload body: %w", io.ErrNoProgress)
}

// Resolve asks the relay for a download URL of key.
func (c *Client) Resolve(ctx context.Context, key string) (mediaapi.Download, error) {
	if !mediaapi.ValidObjectKey(key) {
		return mediaapi.Download{}, fmt.Errorf("media resolve: %q is not an object key", key)
	}
	b, err := c.api(ctx, "resolve", http.MethodGet, mediaapi.PathPrefix+key, nil)
	if err != nil {
		return mediaapi.Download{}, err
	}
	d, err := mediaapi.DecodeDownload(b)
	if err != nil {
		return mediaapi.Download{}, fmt.Errorf("media resolve: %w", err)
	}
	if d.ObjectKey != key {
		return mediaapi.Download{}, errors.New("media resolve: answer names another object")
	}
	return d, nil
}

// Download writes object key's bytes from offset to the end into dst and
// returns how many it wrote; offset is where a previous, interrupted
// download stopped (0 for a fresh one). Transient failures are retried
// from where the transfer stopped, up to Options.MaxAttempts tries; an
// error writing to dst is returned at once.
func (c *Client) Download(ctx context.Context, key string, dst io.Writer, offset int64, progress Progress) (int64, error) {
	if offset < 0 {
		return 0, fmt.Errorf("media download: negative offset %d", offset)
	}
	var written int64
	var lastErr error
	var d mediaapi.Download
	resolved := false
	for attempt := 0; attempt < c.maxAttempts; attempt++ {
		if attempt > 0 {
			if err := sleep(ctx, backoff(attempt, lastErr)); err != nil {
				return written, fmt.Errorf("media download: %w (last error: %v)", err, lastErr)
			}
		}
		if !resolved || !time.Now().Before(d.ExpiresAt.Add(-10*time.Second)) {
			var err error
			if d, err = c.Resolve(ctx, key); err != nil {
				if retryable(err) && ctx.Err() == nil {
					lastErr = err
					continue
				}
				return written, err
			}
			resolved = true
		}
		pos := offset + written
		if pos > d.Size {
			return written, fmt.Errorf("media download: offset %d is past the object's end (%d bytes)", pos, d.Size)
		}
		if pos == d.Size {
			return written, nil
		}
		n, err := c.fetch(ctx, d, pos, dst, progress)
		written += n
		if err == nil {
			return written, nil
		}
		var ae *Error
		if errors.As(err, &ae) && ae.Code == mediaapi.CodeURLExpired {
			resolved = false
		}
		if !retryable(err) || ctx.Err() != nil {
			return written, err
		}
		lastErr = err
	}
	return written, fmt.Errorf("media download: gave up after %d attempts: %w", c.maxAttempts, lastErr)
}

// DownloadFile downloads object key into the file at path (created 0600),
// resuming after whatever the file already holds, and returns the
// object's size. The file is the caller's partial download: it keeps it
// on failure so that a later call resumes, and removes or renames it
// when done.
func (c *Client) DownloadFile(ctx context.Context, key, path string, progress Progress) (int64, error) {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE, 0o600)
	if err != nil {
		return 0, fmt.Errorf("media download: %w", err)
	}
	offset, err := f.Seek(0, io.SeekEnd)
	if err != nil {
		f.Close()
		return 0, fmt.Errorf("media download: %w", err)
	}
	n, err := c.Download(ctx, key, f, offset, progress)
	if serr := f.Sync(); err == nil && serr != nil {
		err = fmt.Errorf("media download: sync %s: %w", path, serr)
	}
	if cerr := f.Close(); err == nil && cerr != nil {
		err = fmt.Errorf("media download: close %s: %w", path, cerr)
	}
	return offset + n, err
}

// errDst marks errors of the destination writer (never retried).
type errDst struct{ err error }

func (e *errDst) Error() string { return "write download: " + e.err.Error() }
func (e *errDst) Unwrap() error { return e.err }

type dstWriter struct {
	w        io.Writer
	n        int64
	pos      int64
	total    int64
	progress Progress
}

func (d *dstWriter) Write(p []byte) (int, error) {
	n, err := d.w.Write(p)
	d.n += int64(n)
	if n > 0 && d.progress != nil {
		d.progress(d.pos+d.n, d.total)
	}
	if err != nil {
		return n, &errDst{err}
	}
	return n, nil
}

// fetch GETs d from pos to the end into dst.
func (c *Client) fetch(ctx context.Context, d mediaapi.Download, pos int64, dst io.Writer, progress Progress) (int64, error) {
	req, err := http.NewRequestWithContext(ctx, d.Method, d.DownloadURL, nil)
	if err != nil {
		return 0, fmt.Errorf("media download: %w", err)
	}
	for k, v := range d.Headers {
		req.Header.Set(k, v)
	}
	if pos > 0 {
		req.Header.Set("Range", "bytes="+strconv.FormatInt(pos, 10)+"-")
	}
	resp, err := c.hc.Do(req)
	if err != nil {
		return 0, fmt.Errorf("media download: %w", redactURL(err))
	}
	defer resp.Body.Close()
	switch {
	case resp.StatusCode == http.StatusOK && pos == 0:
	case resp.StatusCode == http.StatusPartialContent && pos > 0:
		start, total, err := parseContentRange(resp.Header.Get("Content-Range"))
		if err != nil || start != pos || total != d.Size {
			return 0, fmt.Errorf("media download: store answered range %q, asked for bytes %d- of %d", resp.Header.Get("Content-Range"), pos, d.Size)
		}
	case resp.StatusCode/100 == 2:
		return 0, fmt.Errorf("media download: store answered %s to a request for bytes %d-", resp.Status, pos)
	default:
		b, _ := io.ReadAll(io.LimitReader(resp.Body, mediaapi.MaxResponseBody+1))
		return 0, responseError("download", resp, b)
	}
	want := d.Size - pos
	dw := &dstWriter{w: dst, pos: pos, total: d.Size, progress: progress}
	buf := make([]byte, 128<<10)
	n, err := io.CopyBuffer(dw, io.LimitReader(resp.Body, want), buf)
	if err != nil {
		var de *errDst
		if errors.As(err, &de) {
			return n, fmt.Errorf("media download: %w", de)
		}
		return n, fmt.Errorf("media download: after %d of %d bytes: %w", pos+n, d.Size, err)
	}
	if n != want {
		return n, fmt.Errorf("media download: %w: the body ended after %d of %d bytes", io.ErrUnexpectedEOF, pos+n, d.Size)
	}
	return n, nil
}

// parseContentRange parses "bytes start-end/total".
func parseContentRange(v string) (start, total int64, err error) {
	rest, ok := strings.CutPrefix(v, "bytes ")
	if !ok {
		return 0, 0, errors.New("not a byte range")
	}
	rng, tot, ok := strings.Cut(rest, "/")
	if !ok {
		return 0, 0, errors.New("no total")
	}
	s, _, ok := strings.Cut(rng, "-")
	if !ok {
		return 0, 0, errors.New("no range")
	}
	if start, err = strconv.ParseInt(s, 10, 64); err != nil {
		return 0, 0, err
	}
	if total, err = strconv.ParseInt(tot, 10, 64); err != nil {
		return 0, 0, err
	}
	return start, total, nil
}

// retryable reports whether a download error is worth another try.
func retryable(err error) bool {
	if errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) {
		return false
	}
	var de *errDst
	if errors.As(err, &de) {
		return false
	}
	var ae *Error
	if errors.As(err, &ae) {
		return ae.Status >= 500 || ae.Status == http.StatusTooManyRequests || ae.Code == mediaapi.CodeURLExpired
	}
	return true // network and body errors
}

func backoff(attempt int, err error) time.Duration {
	var ae *Error
	if errors.As(err, &ae) && ae.RetryAfter > 0 {
		return min(ae.RetryAfter, time.Minute)
	}
	d := 250 * time.Millisecond << (attempt - 1)
	return min(d, 4*time.Second)
}

func sleep(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}

// redactURL strips the query (signatures) from a *url.Error's URL, so a
// presigned URL never lands in an error message or a log.
func redactURL(err error) error {
	var ue *url.Error
	if errors.As(err, &ue) {
		if u, perr := url.Parse(ue.URL); perr == nil {
			u.RawQuery = ""
			u.Fragment = ""
			return &url.Error{Op: ue.Op, URL: u.String(), Err: ue.Err}
		}
		return &url.Error{Op: ue.Op, URL: "(media URL)", Err: ue.Err}
	}
	return err
}

// s3Error is the XML error body of S3-compatible stores.
type s3Error struct {
	Code    string `xml:"Code"`
	Message string `xml:"Message"`
}

// responseError turns a refused answer (relay JSON or S3 XML) into *Error.
func responseError(op string, resp *http.Response, body []byte) error {
	e := &Error{Op: op, Status: resp.StatusCode, RetryAfter: mediaapi.RetryAfter(resp.Header)}
	if ae, ok := mediaapi.DecodeError(body); ok {
		e.Code, e.Message, e.Limit = ae.Code, ae.Message, ae.Limit
		if e.RetryAfter == 0 && ae.RetryAfterSeconds > 0 {
			e.RetryAfter = time.Duration(ae.RetryAfterSeconds) * time.Second
		}
		return e
	}
	var se s3Error
	if len(body) <= mediaapi.MaxResponseBody && xml.Unmarshal(body, &se) == nil && se.Code != "" {
		e.Code = mapS3Code(se.Code, se.Message)
		e.Message = se.Code + ": " + truncate(se.Message, 200)
		return e
	}
	e.Code = strings.ToLower(strings.ReplaceAll(http.StatusText(resp.StatusCode), " ", "_"))
	e.Message = truncate(strings.TrimSpace(string(body)), 200)
	if e.Message == "" {
		e.Message = resp.Status
	}
	return e
}

func mapS3Code(code, msg string) string {
	switch code {
	case "SignatureDoesNotMatch", "InvalidAccessKeyId", "AuthorizationQueryParametersError", "InvalidRequest":
		return mediaapi.CodeBadSignature
	case "AccessDenied":
		if strings.Contains(strings.ToLower(msg), "expired") {
			return mediaapi.CodeURLExpired
		}
		return mediaapi.CodeBadSignature
	case "ExpiredToken", "RequestExpired":
		return mediaapi.CodeURLExpired
	case "PreconditionFailed":
		return mediaapi.CodeExists
	case "NoSuchKey", "NotFound":
		return mediaapi.CodeNotFound
	case "EntityTooLarge":
		return mediaapi.CodeTooLarge
	case "IncompleteBody", "EntityTooSmall":
		return mediaapi.CodeSizeMismatch
	case "MissingContentLength":
		return mediaapi.CodeLengthRequired
	case "SlowDown", "ServiceUnavailable", "InternalError":
		return mediaapi.CodeUnavailable
	}
	return code
}

func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n] + "…"
}
