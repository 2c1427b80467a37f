// Package mediaapi is the contract between the relay's media endpoints
// (server/media) and the clients that use them (server/media/mediaclient):
// routes, the JSON shapes, error codes, the object-key format and the
// bounded decoders both sides use. It imports only the standard library, so
// a client can depend on it without pulling in the server.
//
// The flow is two-step so that file bytes never pass through the chat
// connection or the relay's API handlers:
//
//  1. POST PathSlots with {"size": N} (N = the encrypted size, Bearer
//     token) answers a Slot: where to PUT exactly N bytes, which headers to
//     send, the opaque object key and when the URL expires.
//  2. The client PUTs the already-encrypted blob to Slot.UploadURL, then
//     sends the object key (with the file's key and digest) inside an
//     end-to-end message. A recipient asks GET /v1/media/{object_key}
//     (Bearer token) for a short-lived Download URL and fetches the blob
//     from it, with Range to resume.
package mediaapi

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"net/http"
	"strconv"
	"time"
)

// Routes. PathObject takes an object key in its last segment; PathBlob is
// where the relay itself serves signed PUT/GET when the disk backend is in
// use (S3 URLs point at the bucket instead).
const (
	PathPrefix = "/v1/media/"
	PathSlots  = "/v1/media/slots"
	PathObject = "/v1/media/{key}"
	PathBlob   = "/v1/media/blob/{key}"
	// BlobPrefix is PathBlob without its key segment.
	BlobPrefix = "/v1/media/blob/"
)

// Limits of the JSON endpoints.
const (
	// MaxRequestBody bounds a slot request body.
	MaxRequestBody = 1 << 10
	// MaxResponseBody bounds a JSON answer (slot, download or error) a
	// client reads.
	MaxResponseBody = 64 << 10
	// DefaultMaxUpload is the default largest encrypted file, in bytes.
	DefaultMaxUpload = 100 << 20
	// MinUpload is the smallest upload: an encrypted attachment is never
	// empty (crypto's format makes it at least 64 bytes).
	MinUpload = 1
)

// SlotRequest asks for an upload slot. Size is the exact size of the
// encrypted blob the client will upload (crypto.EncryptedSize of the
// plaintext length); the server learns nothing else about the file.
type SlotRequest struct {
	Size int64 `json:"size"`
}

// Slot is an upload slot: PUT exactly Size bytes to UploadURL with Method,
// every header in Headers verbatim and a Content-Length of Size, before
// ExpiresAt. The URL is usable once: a second upload to the same object is
// refused (412). ObjectKey names the object from then on.
type Slot struct {
	ObjectKey string            `json:"object_key"`
	UploadURL string            `json:"upload_url"`
	Method    string            `json:"method"`
	Headers   map[string]string `json:"headers"`
	Size      int64             `json:"size"`
	ExpiresAt time.Time         `json:"expires_at"`
}

// Download says where to fetch an object: GET DownloadURL (with Headers,
// and Range to resume) before ExpiresAt; ask again for a fresh URL after.
// Size is the stored size of the blob.
type Download struct {
	ObjectKey   string            `json:"object_key"`
	DownloadURL string            `json:"download_url"`
	Method      string            `json:"method"`
	Headers     map[string]string `json:"headers,omitempty"`
	Size        int64             `json:"size"`
	ExpiresAt   time.Time         `json:"expires_at"`
}

// Error is the body of every error answer of the relay's media endpoints
// (the slot and download routes, and the disk backend's blob routes).
// Code is stable and machine-readable; Message is for humans. Limit is set
// with CodeTooLarge (the largest allowed size, bytes) and CodeQuotaExceeded
// (the quota, bytes per QuotaWindow); RetryAfterSeconds with 429 answers,
// which also carry a Retry-After header.
type Error struct {
	Code              string `json:"code"`
	Message           string `json:"message"`
	Limit             int64  `json:"limit,omitempty"`
	RetryAfterSeconds int64  `json:"retry_after_seconds,omitempty"`
}

// Error codes.
const (
	// Request shape (400 unless noted).
	CodeMalformedJSON    = "malformed_json"     // the body is not one JSON object of the documented shape
	CodeInvalidSize      = "invalid_size"       // size is below MinUpload
	CodeBodyTooLarge     = "body_too_large"     // 413: the JSON body itself exceeds MaxRequestBody
	CodeInvalidKey       = "invalid_object_key" // the object key is not a key this server issues
	CodeNotFound         = "not_found"          // 404: no such object (never uploaded, or expired) or route
	CodeMethodNotAllowed = "method_not_allowed" // 405

	// Authentication (401).
	CodeAuthRequired  = "auth_required"  // no Bearer token
	CodeInvalidToken  = "invalid_token"  // malformed or not signed by the key server
	CodeTokenExpired  = "token_expired"  // log in again
	CodeDeviceRevoked = "device_revoked" // the token's device was removed

	// Limits.
	CodeTooLarge      = "too_large"      // 413: the file exceeds the per-file limit (Limit)
	CodeRateLimited   = "rate_limited"   // 429: too many requests; Retry-After
	CodeQuotaExceeded = "quota_exceeded" // 429: the account's byte quota is used up; Retry-After

	// Signed blob URLs (disk backend).
	CodeBadSignature   = "bad_signature"   // 403: the URL was altered or signed by another server
	CodeURLExpired     = "url_expired"     // 403: ask for a new slot or download URL
	CodeLengthRequired = "length_required" // 411: the upload has no Content-Length
	CodeSizeMismatch   = "size_mismatch"   // 400: Content-Length differs from the slot's size, or the body ended early
	CodeExists         = "exists"          // 412: the object was already uploaded
	CodeUnavailable    = "unavailable"     // 503: storage failed; retry later
	CodeInternal       = "internal"        // 500
)

// ObjectKeyLen is the length of an object key: 20 random bytes (160 bits)
// in lower-case base32 without padding.
const ObjectKeyLen = 32

// ValidObjectKey reports whether s has the form of an object key: exactly
// ObjectKeyLen characters of [a-z2-7]. Anything else (path separators,
// dots, upper case) is refused before it reaches a file system or bucket.
func ValidObjectKey(s string) bool {
	if len(s) != ObjectKeyLen {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if (c < 'a' || c > 'z') && (c < '2' || c > '7') {
			return false
		}
	}
	return true
}

// ErrMalformed is wrapped by the decoders for input that is not the
// documented shape.
var ErrMalformed = errors.New("malformed media API message")

// DecodeSlotRequest decodes a slot request body: exactly one JSON object
// with the single field "size", an integer from 0 to 2^53-1 written as a
// plain JSON number. Unknown fields, trailing data, strings, fractions,
// exponents and leading zeros are refused; b is bounded by
// MaxRequestBody. Range checks against the server's limit are the
// caller's.
func DecodeSlotRequest(b []byte) (SlotRequest, error) {
	if len(b) > MaxRequestBody {
		return SlotRequest{}, fmt.Errorf("slot request: %w: %d bytes exceeds %d", ErrMalformed, len(b), MaxRequestBody)
	}
	n, err := decodeSizeObject(b)
	if err != nil {
		return SlotRequest{}, fmt.Errorf("slot request: %w: %v", ErrMalformed, err)
	}
	return SlotRequest{Size: n}, nil
}

// decodeSizeObject reads exactly {"size": <integer>} token by token:
// encoding/json alone would accept "Size" or "SIZE" for "size" and take
// the last of duplicate keys, and one request should have one reading.
func decodeSizeObject(b []byte) (int64, error) {
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.UseNumber()
	expect := func(what string, ok func(json.Token) bool) (json.Token, error) {
		tok, err := dec.Token()
		if err != nil {
			return nil, fmt.Errorf("expected %s: %v", what, err)
		}
		if !ok(tok) {
			return nil, fmt.Errorf("expected %s", what)
		}
		return tok, nil
	}
	if _, err := expect("{", func(t json.Token) bool { return t == json.Delim('{') }); err != nil {
		return 0, err
	}
	if _, err := expect(`the single field "size"`, func(t json.Token) bool { return t == "size" }); err != nil {
		return 0, err
	}
	tok, err := expect("an integer size", func(t json.Token) bool { _, ok := t.(json.Number); return ok })
	if err != nil {
		return 0, err
	}
	n, err := parseSize(string(tok.(json.Number)))
	if err != nil {
		return 0, fmt.Errorf("size %v", err)
	}
	if _, err := expect(`"}" after the size (no other fields)`, func(t json.Token) bool { return t == json.Delim('}') }); err != nil {
		return 0, err
	}
	if _, err := dec.Token(); err != io.EOF {
		return 0, errors.New("data after the JSON object")
	}
	return n, nil
}

// maxJSONInt is the largest integer every JSON implementation holds exactly.
const maxJSONInt = 1<<53 - 1

// parseSize accepts a canonical non-negative decimal integer (no sign, no
// leading zeros, no fraction or exponent) up to maxJSONInt.
func parseSize(s string) (int64, error) {
	if s == "" || len(s) > 16 {
		return 0, fmt.Errorf("%q is not an integer from 0 to %d", s, int64(maxJSONInt))
	}
	if len(s) > 1 && s[0] == '0' {
		return 0, fmt.Errorf("%q has a leading zero", s)
	}
	var n int64
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c < '0' || c > '9' {
			return 0, fmt.Errorf("%q is not an integer from 0 to %d", s, int64(maxJSONInt))
		}
		n = n*10 + int64(c-'0')
	}
	if n > maxJSONInt {
		return 0, fmt.Errorf("%d exceeds %d", n, int64(maxJSONInt))
	}
	return n, nil
}

// DecodeSlot decodes and checks a slot answer (client side).
func DecodeSlot(b []byte) (Slot, error) {
	var s Slot
	if err := decodeBounded(b, &s); err != nil {
		return Slot{}, fmt.Errorf("slot: %w", err)
	}
	switch {
	case !ValidObjectKey(s.ObjectKey):
		return Slot{}, fmt.Errorf("slot: %w: bad object key", ErrMalformed)
	case s.UploadURL == "" || s.Method == "":
		return Slot{}, fmt.Errorf("slot: %w: missing upload URL or method", ErrMalformed)
	case s.Size < 0:
		return Slot{}, fmt.Errorf("slot: %w: negative size", ErrMalformed)
	}
	return s, nil
}

// DecodeDownload decodes and checks a download answer (client side).
func DecodeDownload(b []byte) (Download, error) {
	var d Download
	if err := decodeBounded(b, &d); err != nil {
		return Download{}, fmt.Errorf("download: %w", err)
	}
	switch {
	case !ValidObjectKey(d.ObjectKey):
		return Download{}, fmt.Errorf("download: %w: bad object key", ErrMalformed)
	case d.DownloadURL == "" || d.Method == "":
		return Download{}, fmt.Errorf("download: %w: missing download URL or method", ErrMalformed)
	case d.Size < 0:
		return Download{}, fmt.Errorf("download: %w: negative size", ErrMalformed)
	}
	return d, nil
}

// DecodeError decodes an error body; ok is false when b is not one.
func DecodeError(b []byte) (Error, bool) {
	var e Error
	if decodeBounded(b, &e) != nil || e.Code == "" {
		return Error{}, false
	}
	return e, true
}

func decodeBounded(b []byte, v any) error {
	if len(b) > MaxResponseBody {
		return fmt.Errorf("%w: %d bytes exceeds %d", ErrMalformed, len(b), MaxResponseBody)
	}
	if err := json.Unmarshal(b, v); err != nil {
		return fmt.Errorf("%w: %v", ErrMalformed, err)
	}
	return nil
}

// RetryAfter returns the Retry-After of a 429/503 answer, or 0.
func RetryAfter(h http.Header) time.Duration {
	v := h.Get("Retry-After")
	if v == "" {
		return 0
	}
	var secs int64
	for i := 0; i < len(v) && i < 10; i++ {
		c := v[i]
		if c < '0' || c > '9' {
			if t, err := http.ParseTime(v); err == nil {
				return time.Until(t)
			}
			return 0
		}
		secs = secs*10 + int64(c-'0')
	}
	return time.Duration(secs) * time.Second
}

// WriteJSON writes v as a complete JSON answer with status (server side).
// The body is encoded before anything is written, so an answer is either
// whole or a 500.
func WriteJSON(w http.ResponseWriter, status int, v any) {
	b, err := json.Marshal(v)
	if err != nil {
		status = http.StatusInternalServerError
		b = []byte(`{"code":"internal","message":"internal error"}`)
	}
	h := w.Header()
	h.Set("Content-Type", "application/json")
	h.Set("Cache-Control", "no-store")
	h.Set("X-Content-Type-Options", "nosniff")
	h.Set("Content-Length", strconv.Itoa(len(b)))
	w.WriteHeader(status)
	w.Write(b)
}

// WriteError writes e with status, and a Retry-After header when
// e.RetryAfterSeconds is set.
func WriteError(w http.ResponseWriter, status int, e Error) {
	if e.RetryAfterSeconds > 0 {
		w.Header().Set("Retry-After", strconv.FormatInt(e.RetryAfterSeconds, 10))
	}
	WriteJSON(w, status, e)
}

// RetrySeconds rounds d up to whole seconds, at least 1, for Retry-After.
func RetrySeconds(d time.Duration) int64 {
	s := int64(math.Ceil(d.Seconds()))
	if s < 1 {
		s = 1
	}
	return s
}
