// Package media is the relay's half of hush's encrypted attachments: it
// hands out upload slots and download URLs, and never touches file bytes
// on the chat connection.
//
// # Design
//
// A client encrypts a file with the crypto package's attachment cipher
// (AES-256-CBC + HMAC-SHA256, Signal's format) before anything leaves the
// device, so every byte the server stores is ciphertext; the key and the
// digest travel only inside the end-to-end message. The relay's job is
// therefore narrow:
//
//   - POST /v1/media/slots (Bearer token, encrypted size) checks the
//     per-file limit, the account's request rate and its byte quota, picks
//     a fresh object key (160 random bits: unguessable, and meaningless to
//     the storage) and answers a presigned upload URL bound to exactly that
//     key and size, valid for a few minutes and usable once;
//   - GET /v1/media/{key} (Bearer token) answers a short-lived download URL.
//     Any account may resolve any key: holding the key already means
//     holding the message that carries the file's decryption key, and the
//     blob alone is useless.
//
// The bytes go straight between the client and a Store. The Store is the
// seam between backends: the disk backend (server/media/disk, the default
// for hush-server) has the relay itself serve PUT and GET on HMAC-signed,
// expiring URLs; the S3 backend (server/media/s3) presigns URLs for an
// S3-compatible bucket, so the relay never carries the bytes at all. Both
// pass the same conformance suite (server/media/mediatest).
//
// Binding a slot to its account: the upload URL is signed over the object
// key and the size, so it cannot be pointed at another key (another
// account's object) or stretched to more bytes, and an upload never
// replaces an existing object, so even the slot's own URL cannot overwrite
// a finished upload. Limits are charged when a slot is issued, the only
// moment the relay sees an upload on every backend; an abandoned slot
// still counts.
//
// Objects are kept for a retention period (30 days by default) and then
// removed by Service.Run's sweeper (and, on S3, optionally by a bucket
// lifecycle rule as well).
package media

import (
	"context"
	"crypto/rand"
	"encoding/base32"
	"errors"
	"fmt"
	"net/http"
	"time"

	"github.com/hushchat/hush/server/media/mediaapi"
)

// Request is a presigned HTTP request: the client sends Method to URL with
// every header in Header (and, for uploads, a Content-Length equal to the
// slot's size). Header never holds Host or Content-Length: HTTP clients
// set those themselves.
//
// URL is absolute for backends that serve their own URLs (S3). A backend
// whose URLs the relay serves (disk) returns a path beginning with "/",
// which the Service resolves against the relay's public URL.
type Request struct {
	Method string
	URL    string
	Header http.Header
}

// Info describes a stored object.
type Info struct {
	// Size is the object's size in bytes.
	Size int64
	// Created is when the upload completed (the backend's clock); the
	// sweeper compares it with the retention period.
	Created time.Time
}

// Store keeps encrypted blobs by object key.
//
// Guarantees every implementation gives (mediatest checks each):
//
//   - An upload URL from PresignUpload accepts exactly one PUT of exactly
//     size bytes (size ≥ 1: an encrypted attachment is never empty, and
//     SigV4 cannot bind a zero length) to exactly key, until ttl has
//     passed. A body of another
//     length, an altered URL (another key, size or signature), an expired
//     URL, or a PUT to a key that already holds an object is refused, and
//     leaves nothing behind.
//   - An object is visible (Stat, downloads) only once its upload has
//     completed: a broken or truncated upload never shows a half object.
//   - A download URL from PresignDownload serves the object's bytes until
//     ttl has passed, with HTTP Range support; an altered or expired URL is
//     refused.
//   - Stat returns ErrNotFound (wrapped) for a key without a completed
//     object; Delete of such a key succeeds.
//   - Sweep removes every object created before olderThan and reports how
//     many it removed; newer objects are untouched.
//   - All methods are safe for concurrent use; ctx bounds the calls that
//     reach remote storage.
//
// Keys are always mediaapi.ValidObjectKey strings; the Service never
// passes anything else.
type Store interface {
	PresignUpload(ctx context.Context, key string, size int64, ttl time.Duration) (Request, error)
	PresignDownload(ctx context.Context, key string, ttl time.Duration) (Request, error)
	Stat(ctx context.Context, key string) (Info, error)
	Delete(ctx context.Context, key string) error
	Sweep(ctx context.Context, olderThan time.Time) (int, error)
	// Handler serves the backend's own presigned URLs under
	// mediaapi.BlobPrefix, or is nil when the URLs point elsewhere.
	Handler() http.Handler
}

// ErrNotFound is wrapped by Stat for a key that holds no completed object.
var ErrNotFound = errors.New("media object not found")

var keyEncoding = base32.NewEncoding("abcdefghijklmnopqrstuvwxyz234567").WithPadding(base32.NoPadding)

// NewObjectKey returns a fresh random object key (mediaapi.ObjectKeyLen
// characters, 160 bits of entropy).
func NewObjectKey() (string, error) {
	var b [20]byte
	if _, err := rand.Read(b[:]); err != nil {
		return "", fmt.Errorf("object key: %w", err)
	}
	k := keyEncoding.EncodeToString(b[:])
	if !mediaapi.ValidObjectKey(k) {
		return "", fmt.Errorf("object key: generated %d characters, want %d", len(k), mediaapi.ObjectKeyLen)
	}
	return k, nil
}
