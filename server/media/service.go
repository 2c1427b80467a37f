package media

import (
	"context"
	"crypto/ed25519"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"mime"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/hushchat/hush/keyserver/authtoken"
	"github.com/hushchat/hush/keyserver/ratelimit"
	"github.com/hushchat/hush/server/directory"
	"github.com/hushchat/hush/server/media/mediaapi"
)

// Defaults of Config.
const (
	DefaultMaxUpload     = mediaapi.DefaultMaxUpload
	DefaultUploadTTL     = 15 * time.Minute
	DefaultDownloadTTL   = time.Hour
	DefaultRetention     = 30 * 24 * time.Hour
	DefaultSweepInterval = time.Hour
	DefaultQuotaBytes    = 2 << 30
	DefaultQuotaWindow   = 24 * time.Hour
)

// Default rates: a burst of 100 slots (an album) then one a minute on
// average; downloads are cheaper and far more frequent (every member of a
// group fetches every image).
var (
	DefaultSlotRate    = ratelimit.Rate{Burst: 100, Per: 100 * time.Minute}
	DefaultResolveRate = ratelimit.Rate{Burst: 600, Per: 10 * time.Minute}
)

// Config configures a Service. Store and TokenKey are required; every
// zero field takes its default.
type Config struct {
	// Store holds the blobs.
	Store Store
	// TokenKey is the key server's Ed25519 public key: requests carry the
	// same Bearer token as the relay's WebSocket.
	TokenKey ed25519.PublicKey
	// Directory, when set, revokes tokens of removed devices: a token is
	// honoured only while its device is listed for its account.
	Directory directory.Directory
	// PublicURL is the relay's URL as clients see it (e.g.
	// https://chat.example.org), used to make the disk backend's URLs
	// absolute. Empty: the scheme and Host of each slot request, which is
	// right unless a proxy rewrites them.
	PublicURL string
	// MaxUpload is the largest encrypted file accepted, in bytes
	// (DefaultMaxUpload: 100 MiB).
	MaxUpload int64
	// UploadTTL and DownloadTTL are how long presigned URLs stay valid.
	UploadTTL, DownloadTTL time.Duration
	// Retention is how long objects are kept (DefaultRetention: 30 days);
	// SweepInterval how often Run looks for older ones.
	Retention, SweepInterval time.Duration
	// SlotRate and ResolveRate limit slot and download-URL requests per
	// account (in process). SlotLimiter and ResolveLimiter, when set,
	// replace them (e.g. with a limiter shared between relays).
	SlotRate, ResolveRate       ratelimit.Rate
	SlotLimiter, ResolveLimiter ratelimit.Limiter
	// QuotaBytes per QuotaWindow is each account's upload allowance
	// (DefaultQuotaBytes per DefaultQuotaWindow: 2 GiB a day, rolling).
	// It must be at least MaxUpload. Quota, when set, replaces it.
	QuotaBytes  int64
	QuotaWindow time.Duration
	Quota       ByteQuota
	// Registerer receives the hush_media_* collectors (nil: none).
	Registerer prometheus.Registerer
	// Logger (nil: slog.Default()). Nothing logged carries a token, a URL
	// signature or an HMAC key.
	Logger *slog.Logger
	// Clock (nil: time.Now).
	Clock func() time.Time
}

// Service answers the relay's media endpoints (see the package comment and
// docs/api.md "Media API") and runs the retention sweeper.
type Service struct {
	cfg      Config
	store    Store
	public   *url.URL
	slotLim  ratelimit.Limiter
	resLim   ratelimit.Limiter
	quota    ByteQuota
	log      *slog.Logger
	now      func() time.Time
	metrics  *metrics
	handler  http.Handler
	blob     http.Handler
	quotaMsg string
}

// New checks cfg, applies defaults and returns a Service.
func New(cfg Config) (*Service, error) {
	if cfg.Store == nil {
		return nil, errors.New("media: Config.Store is required")
	}
	if len(cfg.TokenKey) != ed25519.PublicKeySize {
		return nil, fmt.Errorf("media: Config.TokenKey must be a %d-byte Ed25519 public key, got %d bytes", ed25519.PublicKeySize, len(cfg.TokenKey))
	}
	def := func(d *time.Duration, v time.Duration) {
		if *d == 0 {
			*d = v
		}
	}
	if cfg.MaxUpload == 0 {
		cfg.MaxUpload = DefaultMaxUpload
	}
	def(&cfg.UploadTTL, DefaultUploadTTL)
	def(&cfg.DownloadTTL, DefaultDownloadTTL)
	def(&cfg.Retention, DefaultRetention)
	def(&cfg.SweepInterval, DefaultSweepInterval)
	def(&cfg.QuotaWindow, DefaultQuotaWindow)
	if cfg.QuotaBytes == 0 {
		cfg.QuotaBytes = DefaultQuotaBytes
	}
	if cfg.SlotRate == (ratelimit.Rate{}) {
		cfg.SlotRate = DefaultSlotRate
	}
	if cfg.ResolveRate == (ratelimit.Rate{}) {
		cfg.ResolveRate = DefaultResolveRate
	}
	switch {
	case cfg.MaxUpload < 0:
		return nil, fmt.Errorf("media: MaxUpload %d is negative", cfg.MaxUpload)
	case cfg.UploadTTL < time.Second || cfg.DownloadTTL < time.Second:
		return nil, fmt.Errorf("media: URL lifetimes must be at least 1s (upload %v, download %v)", cfg.UploadTTL, cfg.DownloadTTL)
	case cfg.UploadTTL > 7*24*time.Hour || cfg.DownloadTTL > 7*24*time.Hour:
		// S3 presigned URLs cannot outlive a week.
		return nil, fmt.Errorf("media: URL lifetimes must be at most 7 days (upload %v, download %v)", cfg.UploadTTL, cfg.DownloadTTL)
	case cfg.Retention < 0 || cfg.SweepInterval < 0:
		return nil, fmt.Errorf("media: Retention %v and SweepInterval %v must be positive", cfg.Retention, cfg.SweepInterval)
	case cfg.Quota == nil && cfg.QuotaBytes < cfg.MaxUpload:
		return nil, fmt.Errorf("media: QuotaBytes %d is below MaxUpload %d: the largest file could never be uploaded", cfg.QuotaBytes, cfg.MaxUpload)
	}
	if cfg.Clock == nil {
		cfg.Clock = time.Now
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	s := &Service{cfg: cfg, store: cfg.Store, now: cfg.Clock, log: cfg.Logger,
		slotLim: cfg.SlotLimiter, resLim: cfg.ResolveLimiter, quota: cfg.Quota}
	if cfg.PublicURL != "" {
		u, err := url.Parse(cfg.PublicURL)
		if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
			return nil, fmt.Errorf("media: PublicURL %q must be an absolute http(s) URL", cfg.PublicURL)
		}
		s.public = u
	}
	var err error
	if s.slotLim == nil {
		if s.slotLim, err = ratelimit.NewTokenBucket(cfg.SlotRate, cfg.Clock); err != nil {
			return nil, fmt.Errorf("media: slot rate: %w", err)
		}
	}
	if s.resLim == nil {
		if s.resLim, err = ratelimit.NewTokenBucket(cfg.ResolveRate, cfg.Clock); err != nil {
			return nil, fmt.Errorf("media: download rate: %w", err)
		}
	}
	if s.quota == nil {
		if s.quota, err = NewByteBucket(cfg.QuotaBytes, cfg.QuotaWindow, cfg.Clock); err != nil {
			return nil, fmt.Errorf("media: quota: %w", err)
		}
		s.quotaMsg = fmt.Sprintf("%d bytes (%s) per %v", cfg.QuotaBytes, humanBytes(cfg.QuotaBytes), cfg.QuotaWindow)
	}
	if s.metrics, err = newMetrics(cfg.Registerer); err != nil {
		return nil, fmt.Errorf("media: metrics: %w", err)
	}
	s.blob = cfg.Store.Handler()
	s.handler = s.routes()
	return s, nil
}

// Handler serves every media route under mediaapi.PathPrefix
// ("/v1/media/"): mount it there on the relay's mux.
func (s *Service) Handler() http.Handler { return s.handler }

// MaxUpload returns the per-file limit in force.
func (s *Service) MaxUpload() int64 { return s.cfg.MaxUpload }

// Run sweeps objects older than the retention period now and then every
// SweepInterval until ctx is done; it returns nil then. A failed sweep is
// logged and counted, and retried at the next interval.
func (s *Service) Run(ctx context.Context) error {
	t := time.NewTicker(s.cfg.SweepInterval)
	defer t.Stop()
	for {
		if _, err := s.SweepOnce(ctx); err != nil && ctx.Err() == nil {
			s.log.Error("media: retention sweep failed", "err", err)
		}
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
	}
}

// SweepOnce removes the objects older than the retention period once.
func (s *Service) SweepOnce(ctx context.Context) (int, error) {
	cutoff := s.now().Add(-s.cfg.Retention)
	n, err := s.store.Sweep(ctx, cutoff)
	s.metrics.swept.Add(float64(n))
	if err != nil {
		s.metrics.sweepFails.Inc()
		return n, fmt.Errorf("media: sweep objects before %s: %w", cutoff.Format(time.RFC3339), err)
	}
	if n > 0 {
		s.log.Info("media: retention sweep", "removed", n, "before", cutoff.Format(time.RFC3339))
	}
	return n, nil
}

// apiError is a refused request: its status and body.
type apiError struct {
	status int
	body   mediaapi.Error
	reason string // refusal metric label, "" for none
}

func (e *apiError) Error() string { return e.body.Code + ": " + e.body.Message }

func refuse(status int, reason, code, format string, args ...any) *apiError {
	return &apiError{status: status, reason: reason, body: mediaapi.Error{Code: code, Message: fmt.Sprintf(format, args...)}}
}

type handlerFunc func(w http.ResponseWriter, r *http.Request) error

func (s *Service) routes() http.Handler {
	mux := http.NewServeMux()
	mux.Handle("POST "+mediaapi.PathSlots, s.instrument("slots", s.slot))
	mux.Handle(mediaapi.PathObject, s.instrument("object", s.object))
	if s.blob != nil {
		mux.Handle(mediaapi.BlobPrefix, s.instrument("blob", func(w http.ResponseWriter, r *http.Request) error {
			s.blob.ServeHTTP(w, r)
			return nil
		}))
	}
	mux.Handle(mediaapi.PathPrefix, s.instrument("other", func(w http.ResponseWriter, r *http.Request) error {
		return refuse(http.StatusNotFound, "", mediaapi.CodeNotFound, "no media route %s", r.URL.Path)
	}))
	return mux
}

// statusWriter records the status code for metrics. It passes ReadFrom
// through so blob downloads keep the sendfile path.
type statusWriter struct {
	http.ResponseWriter
	status int
}

func (w *statusWriter) WriteHeader(code int) {
	if w.status == 0 {
		w.status = code
	}
	w.ResponseWriter.WriteHeader(code)
}

func (w *statusWriter) Write(b []byte) (int, error) {
	if w.status == 0 {
		w.status = http.StatusOK
	}
	return w.ResponseWriter.Write(b)
}

func (w *statusWriter) ReadFrom(r io.Reader) (int64, error) {
	if w.status == 0 {
		w.status = http.StatusOK
	}
	if rf, ok := w.ResponseWriter.(io.ReaderFrom); ok {
		return rf.ReadFrom(r)
	}
	return io.Copy(w.ResponseWriter, r)
}

// Unwrap lets http.ResponseController reach the connection (deadlines).
func (w *statusWriter) Unwrap() http.ResponseWriter { return w.ResponseWriter }

// instrument answers a handlerFunc's error as JSON, recovers panics as 500
// and records metrics under route.
func (s *Service) instrument(route string, h handlerFunc) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		start := time.Now()
		sw := &statusWriter{ResponseWriter: w}
		defer func() {
			if p := recover(); p != nil {
				if p == http.ErrAbortHandler {
					panic(p)
				}
				s.log.Error("media: panic in handler", "route", route, "panic", fmt.Sprint(p))
				if sw.status == 0 {
					mediaapi.WriteError(sw, http.StatusInternalServerError, mediaapi.Error{Code: mediaapi.CodeInternal, Message: "internal error"})
				}
			}
			s.metrics.requests.WithLabelValues(route, strconv.Itoa(sw.status)).Inc()
			s.metrics.duration.WithLabelValues(route).Observe(time.Since(start).Seconds())
		}()
		if err := h(sw, r); err != nil {
			var ae *apiError
			if !errors.As(err, &ae) {
				ae = s.serverError(r, route, err)
			}
			if ae.reason != "" {
				s.metrics.refused.WithLabelValues(ae.reason).Inc()
			}
			mediaapi.WriteError(sw, ae.status, ae.body)
		}
	})
}

// serverError answers a failure that is not the client's fault: 503, retry.
func (s *Service) serverError(r *http.Request, route string, err error) *apiError {
	if r.Context().Err() != nil {
		return refuse(http.StatusServiceUnavailable, "", mediaapi.CodeUnavailable, "request cancelled")
	}
	s.log.Error("media: request failed", "route", route, "err", err)
	e := refuse(http.StatusServiceUnavailable, "", mediaapi.CodeUnavailable, "media storage cannot serve this request now; retry later")
	e.body.RetryAfterSeconds = 5
	return e
}

// authenticate checks the Bearer token (and, with a Directory, that its
// device still exists).
func (s *Service) authenticate(w http.ResponseWriter, r *http.Request) (authtoken.Claims, error) {
	unauthorized := func(code, msg string) error {
		w.Header().Set("WWW-Authenticate", `Bearer realm="hush"`)
		return refuse(http.StatusUnauthorized, "unauthenticated", code, "%s", msg)
	}
	h := r.Header.Get("Authorization")
	if h == "" {
		return authtoken.Claims{}, unauthorized(mediaapi.CodeAuthRequired, "an Authorization: Bearer token is required")
	}
	scheme, tok, ok := strings.Cut(h, " ")
	if !ok || !strings.EqualFold(scheme, "Bearer") {
		return authtoken.Claims{}, unauthorized(mediaapi.CodeInvalidToken, `the Authorization header must be "Bearer <token>"`)
	}
	c, err := authtoken.Verify(s.cfg.TokenKey, strings.TrimSpace(tok), s.now())
	switch {
	case errors.Is(err, authtoken.ErrExpired):
		return authtoken.Claims{}, unauthorized(mediaapi.CodeTokenExpired, "the token has expired; log in again")
	case err != nil:
		return authtoken.Claims{}, unauthorized(mediaapi.CodeInvalidToken, "the token is not valid for this server")
	}
	if s.cfg.Directory != nil {
		devs, err := s.cfg.Directory.Devices(r.Context(), c.Account)
		switch {
		case errors.Is(err, directory.ErrUnknownAccount):
			return authtoken.Claims{}, unauthorized(mediaapi.CodeDeviceRevoked, "the token's account no longer exists")
		case err != nil:
			return authtoken.Claims{}, fmt.Errorf("device lookup for %s: %w", c.Account, err)
		case !directory.HasDevice(devs, c.Device):
			return authtoken.Claims{}, unauthorized(mediaapi.CodeDeviceRevoked, "the token's device was removed from its account")
		}
	}
	return c, nil
}

// slot answers POST /v1/media/slots.
func (s *Service) slot(w http.ResponseWriter, r *http.Request) error {
	c, err := s.authenticate(w, r)
	if err != nil {
		return err
	}
	if ct := r.Header.Get("Content-Type"); ct != "" {
		if mt, _, err := mime.ParseMediaType(ct); err != nil || mt != "application/json" {
			return refuse(http.StatusUnsupportedMediaType, "bad_request", mediaapi.CodeMalformedJSON, "Content-Type must be application/json")
		}
	}
	if r.ContentLength > mediaapi.MaxRequestBody {
		return refuse(http.StatusRequestEntityTooLarge, "bad_request", mediaapi.CodeBodyTooLarge, "a slot request body is at most %d bytes", mediaapi.MaxRequestBody)
	}
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, mediaapi.MaxRequestBody))
	if err != nil {
		var mbe *http.MaxBytesError
		if errors.As(err, &mbe) {
			return refuse(http.StatusRequestEntityTooLarge, "bad_request", mediaapi.CodeBodyTooLarge, "a slot request body is at most %d bytes", mediaapi.MaxRequestBody)
		}
		return refuse(http.StatusBadRequest, "bad_request", mediaapi.CodeMalformedJSON, "reading the body: %v", err)
	}
	req, err := mediaapi.DecodeSlotRequest(body)
	if err != nil {
		return refuse(http.StatusBadRequest, "bad_request", mediaapi.CodeMalformedJSON, `expected {"size": <encrypted size in bytes>}: %v`, err)
	}
	if req.Size < mediaapi.MinUpload {
		return refuse(http.StatusBadRequest, "bad_request", mediaapi.CodeInvalidSize, "size %d: an encrypted attachment is at least %d byte", req.Size, mediaapi.MinUpload)
	}
	if req.Size > s.cfg.MaxUpload {
		e := refuse(http.StatusRequestEntityTooLarge, "too_large", mediaapi.CodeTooLarge,
			"the file is %d bytes encrypted; the limit is %d bytes (%s)", req.Size, s.cfg.MaxUpload, humanBytes(s.cfg.MaxUpload))
		e.body.Limit = s.cfg.MaxUpload
		return e
	}
	ok, wait, err := s.slotLim.Allow(r.Context(), c.Account)
	if err != nil {
		return fmt.Errorf("slot rate limit for %s: %w", c.Account, err)
	}
	if !ok {
		e := refuse(http.StatusTooManyRequests, "rate_limited", mediaapi.CodeRateLimited, "too many uploads; retry in %s", roundUp(wait))
		e.body.RetryAfterSeconds = mediaapi.RetrySeconds(wait)
		return e
	}
	key, err := NewObjectKey()
	if err != nil {
		return err
	}
	now := s.now()
	pr, err := s.store.PresignUpload(r.Context(), key, req.Size, s.cfg.UploadTTL)
	if err != nil {
		return fmt.Errorf("presign upload of %d bytes for %s: %w", req.Size, c.Account, err)
	}
	// The quota is charged last, once nothing else can refuse the slot.
	ok, wait, err = s.quota.Take(r.Context(), c.Account, req.Size)
	if err != nil {
		return fmt.Errorf("byte quota for %s: %w", c.Account, err)
	}
	if !ok {
		e := refuse(http.StatusTooManyRequests, "quota_exceeded", mediaapi.CodeQuotaExceeded,
			"the account's upload quota%s is used up; an upload of %d bytes fits again in %s", s.quotaSuffix(), req.Size, roundUp(wait))
		e.body.RetryAfterSeconds = mediaapi.RetrySeconds(wait)
		if s.cfg.Quota == nil {
			e.body.Limit = s.cfg.QuotaBytes
		}
		return e
	}
	u, err := s.absolute(r, pr.URL)
	if err != nil {
		return err
	}
	s.metrics.slots.Inc()
	s.metrics.slotBytes.Add(float64(req.Size))
	s.log.Debug("media: slot issued", "account", c.Account, "device", c.Device, "size", req.Size)
	mediaapi.WriteJSON(w, http.StatusOK, mediaapi.Slot{
		ObjectKey: key,
		UploadURL: u,
		Method:    pr.Method,
		Headers:   flatten(pr.Header),
		Size:      req.Size,
		ExpiresAt: now.Add(s.cfg.UploadTTL).UTC().Truncate(time.Second),
	})
	return nil
}

// object answers GET /v1/media/{key} with a download URL.
func (s *Service) object(w http.ResponseWriter, r *http.Request) error {
	key := r.PathValue("key")
	if key == "slots" {
		w.Header().Set("Allow", http.MethodPost)
		return refuse(http.StatusMethodNotAllowed, "bad_request", mediaapi.CodeMethodNotAllowed, "%s is not allowed on %s (allowed: POST)", r.Method, mediaapi.PathSlots)
	}
	if r.Method != http.MethodGet && r.Method != http.MethodHead {
		w.Header().Set("Allow", "GET, HEAD")
		return refuse(http.StatusMethodNotAllowed, "bad_request", mediaapi.CodeMethodNotAllowed, "%s is not allowed here (allowed: GET, HEAD)", r.Method)
	}
	c, err := s.authenticate(w, r)
	if err != nil {
		return err
	}
	if !mediaapi.ValidObjectKey(key) {
		return refuse(http.StatusBadRequest, "bad_request", mediaapi.CodeInvalidKey, "not an object key: want %d characters of a-z and 2-7", mediaapi.ObjectKeyLen)
	}
	ok, wait, err := s.resLim.Allow(r.Context(), c.Account)
	if err != nil {
		return fmt.Errorf("download rate limit for %s: %w", c.Account, err)
	}
	if !ok {
		e := refuse(http.StatusTooManyRequests, "rate_limited", mediaapi.CodeRateLimited, "too many downloads; retry in %s", roundUp(wait))
		e.body.RetryAfterSeconds = mediaapi.RetrySeconds(wait)
		return e
	}
	info, err := s.store.Stat(r.Context(), key)
	if errors.Is(err, ErrNotFound) {
		return refuse(http.StatusNotFound, "not_found", mediaapi.CodeNotFound, "no such object: it was never uploaded, or it expired after %s", roundUp(s.cfg.Retention))
	}
	if err != nil {
		return fmt.Errorf("stat object: %w", err)
	}
	now := s.now()
	pr, err := s.store.PresignDownload(r.Context(), key, s.cfg.DownloadTTL)
	if err != nil {
		return fmt.Errorf("presign download: %w", err)
	}
	u, err := s.absolute(r, pr.URL)
	if err != nil {
		return err
	}
	mediaapi.WriteJSON(w, http.StatusOK, mediaapi.Download{
		ObjectKey:   key,
		DownloadURL: u,
		Method:      pr.Method,
		Headers:     flatten(pr.Header),
		Size:        info.Size,
		ExpiresAt:   now.Add(s.cfg.DownloadTTL).UTC().Truncate(time.Second),
	})
	return nil
}

// absolute resolves a backend URL that is a path against the public URL
// (or the request's own scheme and host).
func (s *Service) absolute(r *http.Request, raw string) (string, error) {
	if !strings.HasPrefix(raw, "/") {
		return raw, nil
	}
	ref, err := url.Parse(raw)
	if err != nil {
		return "", fmt.Errorf("backend URL: %w", err)
	}
	base := s.public
	if base == nil {
		scheme := "http"
		if r.TLS != nil {
			scheme = "https"
		}
		base = &url.URL{Scheme: scheme, Host: r.Host}
	}
	u := *base
	u.Path = strings.TrimSuffix(base.Path, "/") + ref.Path
	u.RawPath = ""
	u.RawQuery = ref.RawQuery
	return u.String(), nil
}

func (s *Service) quotaSuffix() string {
	if s.quotaMsg == "" {
		return ""
	}
	return " of " + s.quotaMsg
}

func flatten(h http.Header) map[string]string {
	m := make(map[string]string, len(h))
	for k, vs := range h {
		if len(vs) > 0 {
			m[http.CanonicalHeaderKey(k)] = vs[0]
		}
	}
	return m
}

func roundUp(d time.Duration) time.Duration {
	if d < time.Second {
		return time.Second
	}
	return d.Round(time.Second)
}

// humanBytes formats n in binary units for messages.
func humanBytes(n int64) string {
	const unit = 1024
	if n < unit {
		return fmt.Sprintf("%d B", n)
	}
	div, exp := int64(unit), 0
	for m := n / unit; m >= unit && exp < 4; m /= unit {
		div *= unit
		exp++
	}
	return fmt.Sprintf("%.4g %ciB", float64(n)/float64(div), "KMGTP"[exp])
}
