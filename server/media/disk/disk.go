// Package disk is the embedded media backend: encrypted blobs live as
// files under a data directory and the relay itself serves their uploads
// and downloads on HMAC-signed, expiring URLs (see signedurl.go for the
// URL format). It is hush-server's default, so a single binary handles
// attachments with no object store.
//
// Layout under the directory (everything 0700/0600, owner only):
//
//	media.key            32-byte HMAC key of the signed URLs, made on first Open
//	objects/ab/abcd…     one file per object, sharded by the key's first two characters
//	tmp/abcd….NNN.part   uploads in flight
//
// An upload streams into a temporary file, is fsynced, and is then
// hard-linked to its final name, which fails if the name exists: an object
// appears whole or not at all, a broken upload leaves nothing visible (its
// temporary file is removed at once, or by the sweeper after a crash), and
// no upload can replace an existing object. Content-Length is required and
// must equal the size the URL was signed for. Downloads go through
// http.ServeContent, so Range, If-Range and HEAD work, and the bytes leave
// by sendfile. Each transfer gets a deadline of a minute plus its size at
// MinRate, replacing the HTTP server's global timeouts, so large files
// move on slow links while a stalled peer cannot hold a connection
// forever.
package disk

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/hushchat/hush/server/media"
	"github.com/hushchat/hush/server/media/mediaapi"
)

const (
	keyFile    = "media.key"
	objectsDir = "objects"
	tmpDir     = "tmp"
	hmacSize   = 32

	// DefaultMinRate is the slowest transfer tolerated, in bytes per second.
	DefaultMinRate = 32 << 10
	// transferGrace is added to every transfer deadline.
	transferGrace = time.Minute
	// staleTmp is how old an upload's temporary file must be before the
	// sweeper removes it: far beyond any transfer deadline.
	staleTmp = 24 * time.Hour
	copyBuf  = 256 << 10
)

// Options configures a Store.
type Options struct {
	// Clock signs and checks URL expiry (nil: time.Now).
	Clock func() time.Time
	// Logger (nil: slog.Default()).
	Logger *slog.Logger
	// Registerer receives hush_media_transfer_bytes_total and
	// hush_media_uploads_total (nil: none).
	Registerer prometheus.Registerer
	// MinRate is the slowest transfer tolerated, bytes per second
	// (DefaultMinRate).
	MinRate int64
}

// Store is the disk backend. It implements media.Store.
type Store struct {
	dir     string
	hmacKey []byte
	now     func() time.Time
	log     *slog.Logger
	minRate int64
	bytes   *prometheus.CounterVec // direction
	uploads *prometheus.CounterVec // result
	handler http.Handler
	bufs    sync.Pool
}

var _ media.Store = (*Store)(nil)

// Open opens (creating if needed) the media directory dir. The HMAC key
// is read from dir/media.key, or created there (0600) on first use; a key
// file readable by group or others is refused.
func Open(dir string, opts Options) (*Store, error) {
	if dir == "" {
		return nil, errors.New("media disk store: directory is empty")
	}
	for _, d := range []string{dir, filepath.Join(dir, objectsDir), filepath.Join(dir, tmpDir)} {
		if err := os.MkdirAll(d, 0o700); err != nil {
			return nil, fmt.Errorf("media disk store: %w", err)
		}
	}
	key, err := loadKey(dir)
	if err != nil {
		return nil, fmt.Errorf("media disk store: %w", err)
	}
	if opts.Clock == nil {
		opts.Clock = time.Now
	}
	if opts.Logger == nil {
		opts.Logger = slog.Default()
	}
	if opts.MinRate <= 0 {
		opts.MinRate = DefaultMinRate
	}
	s := &Store{dir: dir, hmacKey: key, now: opts.Clock, log: opts.Logger, minRate: opts.MinRate}
	s.bufs.New = func() any { b := make([]byte, copyBuf); return &b }
	s.bytes, err = media.Register(opts.Registerer, prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: "hush", Subsystem: "media", Name: "transfer_bytes_total",
		Help: "Blob bytes the relay itself received (upload) and sent (download) for the disk backend.",
	}, []string{"direction"}))
	if err != nil {
		return nil, fmt.Errorf("media disk store: metrics: %w", err)
	}
	s.uploads, err = media.Register(opts.Registerer, prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: "hush", Subsystem: "media", Name: "uploads_total",
		Help: "Blob uploads to the disk backend by result (stored, refused, aborted, exists).",
	}, []string{"result"}))
	if err != nil {
		return nil, fmt.Errorf("media disk store: metrics: %w", err)
	}
	for _, d := range []string{"upload", "download"} {
		s.bytes.WithLabelValues(d)
	}
	for _, r := range []string{"stored", "refused", "aborted", "exists"} {
		s.uploads.WithLabelValues(r)
	}
	s.handler = http.HandlerFunc(s.serve)
	return s, nil
}

// loadKey reads dir/media.key, creating it if absent. Creation writes a
// temporary file and links it into place, so a crash never leaves a short
// key and two processes starting at once agree on one key.
func loadKey(dir string) ([]byte, error) {
	path := filepath.Join(dir, keyFile)
	for range 2 {
		key, err := readKey(path)
		if !errors.Is(err, fs.ErrNotExist) {
			return key, err
		}
		f, err := os.CreateTemp(filepath.Join(dir, tmpDir), "key.*")
		if err != nil {
			return nil, fmt.Errorf("create %s: %w", keyFile, err)
		}
		tmp := f.Name()
		key = make([]byte, hmacSize)
		if _, err := rand.Read(key); err != nil {
			f.Close()
			os.Remove(tmp)
			return nil, fmt.Errorf("create %s: %w", keyFile, err)
		}
		_, err = f.Write(key)
		if err == nil {
			err = f.Sync()
		}
		if cerr := f.Close(); err == nil {
			err = cerr
		}
		if err == nil {
			err = os.Link(tmp, path)
		}
		os.Remove(tmp)
		if err == nil {
			syncDir(dir)
			return key, nil
		}
		if !errors.Is(err, fs.ErrExist) {
			return nil, fmt.Errorf("create %s: %w", keyFile, err)
		}
		// Another process created it first: read theirs.
	}
	return nil, fmt.Errorf("create %s: raced with another process twice", keyFile)
}

func readKey(path string) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	if fi.Mode().Perm()&0o077 != 0 {
		return nil, fmt.Errorf("%s has mode %v: the URL signing key must be readable by its owner only (chmod 600)", path, fi.Mode().Perm())
	}
	key := make([]byte, hmacSize+1)
	n, err := io.ReadFull(f, key)
	if n != hmacSize || err != io.ErrUnexpectedEOF {
		return nil, fmt.Errorf("%s is not a %d-byte key (remove it to make a new one; outstanding URLs will stop working)", path, hmacSize)
	}
	return key[:hmacSize], nil
}

// syncDir makes a new directory entry durable; failure only weakens
// durability, so it is not reported.
func syncDir(dir string) {
	if d, err := os.Open(dir); err == nil {
		d.Sync()
		d.Close()
	}
}

// Dir returns the store's directory.
func (s *Store) Dir() string { return s.dir }

// ObjectPath returns the file holding key's object (it may not exist).
// Tests and operators use it; clients go through signed URLs.
func (s *Store) ObjectPath(key string) string {
	return filepath.Join(s.dir, objectsDir, key[:2], key)
}

func checkKey(key string) error {
	if !mediaapi.ValidObjectKey(key) {
		return fmt.Errorf("media disk store: %q is not an object key", hint(key))
	}
	return nil
}

// hint shortens a key for error messages: enough to correlate, not the
// whole key.
func hint(key string) string {
	if len(key) > 6 {
		return key[:6] + "…"
	}
	return key
}

// PresignUpload implements media.Store.
func (s *Store) PresignUpload(_ context.Context, key string, size int64, ttl time.Duration) (media.Request, error) {
	if err := checkKey(key); err != nil {
		return media.Request{}, err
	}
	if size < 1 {
		return media.Request{}, fmt.Errorf("media disk store: size %d: uploads are at least 1 byte", size)
	}
	return media.Request{
		Method: http.MethodPut,
		URL:    sign(s.hmacKey, opPut, key, size, s.now().Add(ttl)),
		Header: http.Header{},
	}, nil
}

// PresignDownload implements media.Store.
func (s *Store) PresignDownload(_ context.Context, key string, ttl time.Duration) (media.Request, error) {
	if err := checkKey(key); err != nil {
		return media.Request{}, err
	}
	return media.Request{
		Method: http.MethodGet,
		URL:    sign(s.hmacKey, opGet, key, -1, s.now().Add(ttl)),
		Header: http.Header{},
	}, nil
}

// Stat implements media.Store.
func (s *Store) Stat(_ context.Context, key string) (media.Info, error) {
	if err := checkKey(key); err != nil {
		return media.Info{}, err
	}
	fi, err := os.Stat(s.ObjectPath(key))
	if errors.Is(err, fs.ErrNotExist) {
		return media.Info{}, fmt.Errorf("stat %s: %w", hint(key), media.ErrNotFound)
	}
	if err != nil {
		return media.Info{}, fmt.Errorf("media disk store: stat %s: %w", hint(key), err)
	}
	return media.Info{Size: fi.Size(), Created: fi.ModTime()}, nil
}

// Delete implements media.Store.
func (s *Store) Delete(_ context.Context, key string) error {
	if err := checkKey(key); err != nil {
		return err
	}
	if err := os.Remove(s.ObjectPath(key)); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("media disk store: delete %s: %w", hint(key), err)
	}
	return nil
}

// Sweep implements media.Store. It also removes temporary files of uploads
// abandoned by a crash (older than a day).
func (s *Store) Sweep(ctx context.Context, olderThan time.Time) (int, error) {
	root := filepath.Join(s.dir, objectsDir)
	shards, err := os.ReadDir(root)
	if err != nil {
		return 0, fmt.Errorf("media disk store: sweep: %w", err)
	}
	n := 0
	var firstErr error
	for _, sh := range shards {
		if err := ctx.Err(); err != nil {
			return n, err
		}
		if !sh.IsDir() {
			continue
		}
		entries, err := os.ReadDir(filepath.Join(root, sh.Name()))
		if err != nil {
			firstErr = cmpErr(firstErr, err)
			continue
		}
		for _, e := range entries {
			fi, err := e.Info()
			if errors.Is(err, fs.ErrNotExist) {
				continue // deleted meanwhile
			}
			if err != nil {
				firstErr = cmpErr(firstErr, err)
				continue
			}
			if !fi.Mode().IsRegular() || !fi.ModTime().Before(olderThan) {
				continue
			}
			if err := os.Remove(filepath.Join(root, sh.Name(), e.Name())); err != nil && !errors.Is(err, fs.ErrNotExist) {
				firstErr = cmpErr(firstErr, err)
				continue
			}
			n++
		}
	}
	s.sweepTmp()
	if firstErr != nil {
		return n, fmt.Errorf("media disk store: sweep: %w", firstErr)
	}
	return n, nil
}

func cmpErr(first, err error) error {
	if first != nil {
		return first
	}
	return err
}

// sweepTmp removes temporary files older than staleTmp (real time: file
// times are the file system's).
func (s *Store) sweepTmp() {
	dir := filepath.Join(s.dir, tmpDir)
	entries, err := os.ReadDir(dir)
	if err != nil {
		s.log.Warn("media disk store: sweep temporary files", "err", err)
		return
	}
	cutoff := time.Now().Add(-staleTmp)
	for _, e := range entries {
		if fi, err := e.Info(); err == nil && fi.ModTime().Before(cutoff) {
			os.Remove(filepath.Join(dir, e.Name()))
		}
	}
}

// Handler implements media.Store: it serves the signed URLs under
// mediaapi.BlobPrefix.
func (s *Store) Handler() http.Handler { return s.handler }

// fail writes an error answer.
func fail(w http.ResponseWriter, status int, code, format string, args ...any) {
	mediaapi.WriteError(w, status, mediaapi.Error{Code: code, Message: fmt.Sprintf(format, args...)})
}

func (s *Store) serve(w http.ResponseWriter, r *http.Request) {
	u, err := parseSignedURL(r.URL.Path, r.URL.RawQuery)
	if err != nil {
		if r.Method == http.MethodPut {
			s.uploads.WithLabelValues("refused").Inc()
		}
		fail(w, http.StatusForbidden, mediaapi.CodeBadSignature, "not a valid media URL: %v", err)
		return
	}
	want := opGet
	switch r.Method {
	case http.MethodPut:
		want = opPut
	case http.MethodGet, http.MethodHead:
	default:
		w.Header().Set("Allow", "GET, HEAD, PUT")
		fail(w, http.StatusMethodNotAllowed, mediaapi.CodeMethodNotAllowed, "%s is not allowed on media URLs", r.Method)
		return
	}
	if u.op != want {
		if want == opPut {
			s.uploads.WithLabelValues("refused").Inc()
		}
		fail(w, http.StatusForbidden, mediaapi.CodeBadSignature, "this URL is for %s, not %s", u.op, r.Method)
		return
	}
	if err := u.verify(s.hmacKey, s.now()); err != nil {
		if want == opPut {
			s.uploads.WithLabelValues("refused").Inc()
		}
		if errors.Is(err, errURLExpired) {
			fail(w, http.StatusForbidden, mediaapi.CodeURLExpired, "the URL expired; ask for a new one")
			return
		}
		fail(w, http.StatusForbidden, mediaapi.CodeBadSignature, "the URL signature does not verify: it was altered or is from another server")
		return
	}
	if want == opPut {
		s.put(w, r, u)
		return
	}
	s.get(w, r, u)
}

// deadline is when a transfer of n bytes must be done.
func (s *Store) deadline(n int64) time.Time {
	return time.Now().Add(transferGrace + time.Duration(n/s.minRate)*time.Second)
}

func (s *Store) put(w http.ResponseWriter, r *http.Request, u signedURL) {
	switch {
	case r.ContentLength < 0:
		s.uploads.WithLabelValues("refused").Inc()
		fail(w, http.StatusLengthRequired, mediaapi.CodeLengthRequired, "uploads need a Content-Length of %d", u.size)
		return
	case r.ContentLength > u.size:
		s.uploads.WithLabelValues("refused").Inc()
		e := mediaapi.Error{Code: mediaapi.CodeTooLarge, Limit: u.size,
			Message: fmt.Sprintf("Content-Length %d exceeds this slot's size of %d bytes", r.ContentLength, u.size)}
		mediaapi.WriteError(w, http.StatusRequestEntityTooLarge, e)
		return
	case r.ContentLength < u.size:
		s.uploads.WithLabelValues("refused").Inc()
		fail(w, http.StatusBadRequest, mediaapi.CodeSizeMismatch, "Content-Length %d differs from this slot's size of %d bytes", r.ContentLength, u.size)
		return
	}
	final := s.ObjectPath(u.key)
	if _, err := os.Lstat(final); err == nil {
		s.uploads.WithLabelValues("exists").Inc()
		fail(w, http.StatusPreconditionFailed, mediaapi.CodeExists, "the object was already uploaded")
		return
	}
	// Lift the server's global read timeout for this body only.
	rc := http.NewResponseController(w)
	if err := rc.SetReadDeadline(s.deadline(u.size)); err != nil && !errors.Is(err, http.ErrNotSupported) {
		s.log.Warn("media disk store: set read deadline", "err", err)
	}
	n, err := s.receive(r.Body, u, final)
	s.bytes.WithLabelValues("upload").Add(float64(n))
	switch {
	case errors.Is(err, fs.ErrExist):
		s.uploads.WithLabelValues("exists").Inc()
		fail(w, http.StatusPreconditionFailed, mediaapi.CodeExists, "the object was already uploaded")
	case errors.Is(err, errShortBody):
		s.uploads.WithLabelValues("aborted").Inc()
		fail(w, http.StatusBadRequest, mediaapi.CodeSizeMismatch, "the body ended after %d of %d bytes; nothing was stored", n, u.size)
	case err != nil:
		s.uploads.WithLabelValues("aborted").Inc()
		s.log.Error("media disk store: upload failed", "size", u.size, "received", n, "err", err)
		e := mediaapi.Error{Code: mediaapi.CodeUnavailable, Message: "the upload could not be stored; retry", RetryAfterSeconds: 5}
		mediaapi.WriteError(w, http.StatusServiceUnavailable, e)
	default:
		s.uploads.WithLabelValues("stored").Inc()
		w.Header().Set("Content-Length", "0")
		w.WriteHeader(http.StatusCreated)
	}
}

var errShortBody = errors.New("upload body ended early")

// receive streams exactly u.size bytes from body into a temporary file and
// links it to final. On any failure the temporary file is removed and
// nothing is visible. It returns the bytes received.
func (s *Store) receive(body io.Reader, u signedURL, final string) (n int64, err error) {
	f, err := os.CreateTemp(filepath.Join(s.dir, tmpDir), u.key+".*.part")
	if err != nil {
		return 0, fmt.Errorf("create temporary file: %w", err)
	}
	tmp := f.Name()
	defer func() {
		if f != nil {
			f.Close()
		}
		os.Remove(tmp) // after the link, or on failure: never visible
	}()
	bp := s.bufs.Get().(*[]byte)
	n, err = io.CopyBuffer(onlyWriter{f}, io.LimitReader(body, u.size), *bp)
	s.bufs.Put(bp)
	if err != nil {
		var werr *writeError
		if errors.As(err, &werr) {
			return n, fmt.Errorf("write temporary file: %w", werr.err)
		}
		return n, fmt.Errorf("%w: %v", errShortBody, err)
	}
	if n != u.size {
		return n, errShortBody
	}
	if err := f.Sync(); err != nil {
		return n, fmt.Errorf("sync temporary file: %w", err)
	}
	err = f.Close()
	f = nil
	if err != nil {
		return n, fmt.Errorf("close temporary file: %w", err)
	}
	shard := filepath.Dir(final)
	if err := os.MkdirAll(shard, 0o700); err != nil {
		return n, fmt.Errorf("create shard directory: %w", err)
	}
	// Link, not rename: it fails if the object exists, so an upload can
	// never replace one, even when two race with the same URL.
	if err := os.Link(tmp, final); err != nil {
		if errors.Is(err, fs.ErrExist) {
			return n, fs.ErrExist
		}
		return n, fmt.Errorf("link object: %w", err)
	}
	syncDir(shard)
	return n, nil
}

// onlyWriter hides *os.File's ReadFrom so io.CopyBuffer uses our buffer
// (and a read error is told apart from a write error).
type onlyWriter struct{ f *os.File }

type writeError struct{ err error }

func (e *writeError) Error() string { return e.err.Error() }

func (w onlyWriter) Write(p []byte) (int, error) {
	n, err := w.f.Write(p)
	if err != nil {
		return n, &writeError{err}
	}
	return n, nil
}

func (s *Store) get(w http.ResponseWriter, r *http.Request, u signedURL) {
	f, err := os.Open(s.ObjectPath(u.key))
	if errors.Is(err, fs.ErrNotExist) {
		fail(w, http.StatusNotFound, mediaapi.CodeNotFound, "no such object: it was never uploaded, or it expired")
		return
	}
	if err != nil {
		s.log.Error("media disk store: open object", "err", err)
		mediaapi.WriteError(w, http.StatusServiceUnavailable, mediaapi.Error{Code: mediaapi.CodeUnavailable, Message: "the object cannot be read now; retry", RetryAfterSeconds: 5})
		return
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		s.log.Error("media disk store: stat object", "err", err)
		mediaapi.WriteError(w, http.StatusServiceUnavailable, mediaapi.Error{Code: mediaapi.CodeUnavailable, Message: "the object cannot be read now; retry", RetryAfterSeconds: 5})
		return
	}
	rc := http.NewResponseController(w)
	if err := rc.SetWriteDeadline(s.deadline(fi.Size())); err != nil && !errors.Is(err, http.ErrNotSupported) {
		s.log.Warn("media disk store: set write deadline", "err", err)
	}
	h := w.Header()
	h.Set("Content-Type", "application/octet-stream")
	h.Set("Cache-Control", "private, no-transform")
	h.Set("X-Content-Type-Options", "nosniff")
	// Objects never change, so the key is a strong validator for If-Range.
	h.Set("ETag", strconv.Quote(u.key))
	cw := &countingWriter{ResponseWriter: w}
	http.ServeContent(cw, r, "", fi.ModTime(), f)
	s.bytes.WithLabelValues("download").Add(float64(cw.n))
}

// countingWriter counts body bytes, passing ReadFrom through so the
// sendfile path stays.
type countingWriter struct {
	http.ResponseWriter
	n int64
}

func (w *countingWriter) Write(b []byte) (int, error) {
	n, err := w.ResponseWriter.Write(b)
	w.n += int64(n)
	return n, err
}

func (w *countingWriter) ReadFrom(r io.Reader) (int64, error) {
	var n int64
	var err error
	if rf, ok := w.ResponseWriter.(io.ReaderFrom); ok {
		n, err = rf.ReadFrom(r)
	} else {
		n, err = io.Copy(w.ResponseWriter, r)
	}
	w.n += n
	return n, err
}

func (w *countingWriter) Unwrap() http.ResponseWriter { return w.ResponseWriter }
