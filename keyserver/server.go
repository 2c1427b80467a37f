// Package keyserver is hush's key-distribution service: it knows account
// names, devices and their public keys, and nothing else — never a message,
// never a private key.
//
// What it does, and why it is shaped this way:
//
//   - Accounts and devices. A name (3–32 of [a-z0-9_.-], case-insensitive)
//     is claimed by the first device that proves, with a signature over a
//     fresh server challenge, that it holds the identity key it publishes
//     (see ksapi for why the signed-prekey signature alone is not enough).
//     Further devices join with a token of an existing device; device ids
//     are never reused, so a removed device's tokens stay dead.
//   - Prekeys. Each device publishes a signed prekey (rotated, the previous
//     one kept for a grace period), a pool of one-time prekeys and a
//     last-resort prekey. A bundle fetch hands out each one-time prekey at
//     most once (the store's atomic claim) and falls back to the last-resort
//     key; it is rate limited per (requester, target) so nobody can drain a
//     victim's pool.
//   - Auth. Login is challenge–response: the device signs a single-use
//     nonce with its identity key and receives an Ed25519 token
//     (keyserver/authtoken) that any holder of PublicKey verifies offline.
//     Every authenticated call also checks that the device still exists, so
//     removing a device revokes its tokens here at once; the relay learns of
//     removals through Devices/OnDeviceChange or the internal endpoint.
//
// The HTTP API (JSON, under /v1/) is documented in docs/api.md; its routes,
// limits, error codes and proof formats live in keyserver/ksapi, and its
// typed client in keyserver/ksclient. Persistence is a store.Store (SQLite
// or Cassandra), rate limiting a ratelimit.Limiter.
package keyserver

import (
	"context"
	"crypto/ed25519"
	"crypto/sha256"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/hushchat/hush/keyserver/ratelimit"
	"github.com/hushchat/hush/keyserver/store"
)

// Store is the persistence interface the server runs on (see package store).
type Store = store.Store

// ErrAccountNotFound is returned by Devices for an unknown account.
var ErrAccountNotFound = store.ErrAccountNotFound

// Defaults of Config's zero fields.
const (
	DefaultTokenTTL          = 24 * time.Hour
	DefaultChallengeTTL      = time.Minute
	DefaultSignedPreKeyGrace = 30 * 24 * time.Hour // as long as the relay keeps a queued message
	DefaultMaxStoredPreKeys  = 1000
	DefaultLowPreKeys        = 10
)

// DefaultBundleRate is the default bundle-fetch limit per (requester,
// target): 6 fetches per 10 minutes.
var DefaultBundleRate = ratelimit.Rate{Burst: 6, Per: 10 * time.Minute}

// DefaultAnonRate is the default limit on unauthenticated calls
// (challenge, login, register) per client IP address.
var DefaultAnonRate = ratelimit.Rate{Burst: 60, Per: time.Minute}

// Config configures a Server. Zero values take the defaults above.
type Config struct {
	// SigningKey signs tokens. Required.
	SigningKey ed25519.PrivateKey
	// TokenTTL is how long a token is valid.
	TokenTTL time.Duration
	// ChallengeTTL is how long a challenge nonce can be used.
	ChallengeTTL time.Duration
	// InviteCode, when set, must accompany every registration.
	InviteCode string
	// InternalSecret, when set, enables GET /v1/internal/accounts/{name}/devices
	// for requests carrying it in the X-Hush-Internal-Secret header.
	InternalSecret string
	// BundleRate limits bundle fetches per (requester account, target).
	BundleRate ratelimit.Rate
	// AnonRate limits unauthenticated calls per client IP.
	AnonRate ratelimit.Rate
	// BundleLimiter and AnonLimiter replace the in-process token buckets
	// built from BundleRate and AnonRate (e.g. with a shared limiter).
	BundleLimiter ratelimit.Limiter
	AnonLimiter   ratelimit.Limiter
	// SignedPreKeyGrace is how long a replaced signed prekey stays listed as
	// the previous one (the device keeps its private half as long).
	SignedPreKeyGrace time.Duration
	// MaxStoredPreKeys bounds the one-time prekeys one device may hold.
	MaxStoredPreKeys int
	// LowPreKeys: a fetch that leaves a device with fewer one-time prekeys
	// counts in the prekeys-low metric.
	LowPreKeys int
	// Now is the clock (nil: time.Now).
	Now func() time.Time
	// Logger receives operational logs (nil: slog.Default()). Keys and
	// tokens are never logged.
	Logger *slog.Logger
	// Registerer, when set, receives the server's Prometheus collectors.
	Registerer prometheus.Registerer
}

// DeviceInfo is one device of an account, as the relay needs it.
type DeviceInfo struct {
	ID             uint32
	RegistrationID uint32
}

// Server is the key server. Create it with New; it is safe for concurrent
// use.
type Server struct {
	cfg       Config
	store     store.Store
	priv      ed25519.PrivateKey
	pub       ed25519.PublicKey
	now       func() time.Time
	log       *slog.Logger
	bundleLim ratelimit.Limiter
	anonLim   ratelimit.Limiter
	inviteSum [32]byte
	secretSum [32]byte
	metrics   *metrics
	handler   http.Handler

	mu        sync.Mutex
	listeners []func(account string)
}

// New returns a server on st. It does not take ownership of st.
func New(cfg Config, st store.Store) (*Server, error) {
	if len(cfg.SigningKey) != ed25519.PrivateKeySize {
		return nil, fmt.Errorf("keyserver: signing key must be %d bytes, got %d", ed25519.PrivateKeySize, len(cfg.SigningKey))
	}
	if st == nil {
		return nil, errors.New("keyserver: nil store")
	}
	setDefault(&cfg.TokenTTL, DefaultTokenTTL)
	setDefault(&cfg.ChallengeTTL, DefaultChallengeTTL)
	setDefault(&cfg.SignedPreKeyGrace, DefaultSignedPreKeyGrace)
	setDefault(&cfg.MaxStoredPreKeys, DefaultMaxStoredPreKeys)
	setDefault(&cfg.LowPreKeys, DefaultLowPreKeys)
	if cfg.BundleRate == (ratelimit.Rate{}) {
		cfg.BundleRate = DefaultBundleRate
	}
	if cfg.AnonRate == (ratelimit.Rate{}) {
		cfg.AnonRate = DefaultAnonRate
	}
	if cfg.TokenTTL < 0 || cfg.ChallengeTTL < 0 || cfg.SignedPreKeyGrace < 0 || cfg.MaxStoredPreKeys < 0 || cfg.LowPreKeys < 0 {
		return nil, errors.New("keyserver: durations and limits must not be negative")
	}
	if cfg.MaxStoredPreKeys < maxPreKeysPerRequest {
		return nil, fmt.Errorf("keyserver: MaxStoredPreKeys %d is below one request's %d", cfg.MaxStoredPreKeys, maxPreKeysPerRequest)
	}
	if len(cfg.InviteCode) > maxInviteCodeLen {
		return nil, fmt.Errorf("keyserver: invite code longer than %d bytes", maxInviteCodeLen)
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	s := &Server{
		cfg:   cfg,
		store: st,
		priv:  cfg.SigningKey,
		pub:   cfg.SigningKey.Public().(ed25519.PublicKey),
		now:   cfg.Now,
		log:   cfg.Logger,
	}
	var err error
	if s.bundleLim = cfg.BundleLimiter; s.bundleLim == nil {
		if s.bundleLim, err = ratelimit.NewTokenBucket(cfg.BundleRate, cfg.Now); err != nil {
			return nil, fmt.Errorf("keyserver: bundle rate: %w", err)
		}
	}
	if s.anonLim = cfg.AnonLimiter; s.anonLim == nil {
		if s.anonLim, err = ratelimit.NewTokenBucket(cfg.AnonRate, cfg.Now); err != nil {
			return nil, fmt.Errorf("keyserver: anonymous rate: %w", err)
		}
	}
	// Secrets are compared as SHA-256 digests in constant time, so neither
	// their content nor their length leaks through timing.
	s.inviteSum = sha256.Sum256([]byte(cfg.InviteCode))
	s.secretSum = sha256.Sum256([]byte(cfg.InternalSecret))
	if s.metrics, err = newMetrics(cfg.Registerer); err != nil {
		return nil, fmt.Errorf("keyserver: metrics: %w", err)
	}
	s.handler = s.routes()
	return s, nil
}

func setDefault[T comparable](v *T, def T) {
	var zero T
	if *v == zero {
		*v = def
	}
}

// Handler serves the key server's HTTP API. Every route is under /v1/;
// mount it with mux.Handle("/v1/", h) next to other /v1/ routes (more
// specific patterns of the enclosing mux win). It serves no health or
// metrics endpoints: the binary mounts its own.
func (s *Server) Handler() http.Handler { return s.handler }

// PublicKey is the key tokens are verified with (authtoken.Verify).
func (s *Server) PublicKey() ed25519.PublicKey { return s.pub }

// Ready reports whether the store answers (for /readyz).
func (s *Server) Ready(ctx context.Context) error { return s.store.Ping(ctx) }

// Devices lists an account's devices by ascending id, straight from the
// store. It returns an error wrapping ErrAccountNotFound for an unknown
// account.
func (s *Server) Devices(ctx context.Context, account string) ([]DeviceInfo, error) {
	devs, err := s.store.Devices(ctx, account)
	if err != nil {
		return nil, fmt.Errorf("keyserver: devices: %w", err)
	}
	out := make([]DeviceInfo, len(devs))
	for i, d := range devs {
		out[i] = DeviceInfo{ID: d.ID, RegistrationID: d.RegistrationID}
	}
	return out, nil
}

// OnDeviceChange registers fn to be called, synchronously and after the
// change is stored, whenever an account is created or gains or loses a
// device. fn must not block; a relay uses it to drop its cached device
// list.
func (s *Server) OnDeviceChange(fn func(account string)) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.listeners = append(s.listeners, fn)
}

func (s *Server) deviceChanged(account string) {
	s.mu.Lock()
	ls := s.listeners
	s.mu.Unlock()
	for _, fn := range ls {
		fn(account)
	}
}
