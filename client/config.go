package client

import (
	"log/slog"
	"math/rand/v2"
	"net/http"
	"time"
)

// IdentityPolicy decides what happens when a contact's identity key
// changes.
type IdentityPolicy int

const (
	// Strict records the change, raises IdentityChangedEvent, holds the
	// contact's new messages and refuses to send to the contact until the
	// user accepts the change with Trust. The default.
	Strict IdentityPolicy = iota
	// WarnOnly records the change and raises IdentityChangedEvent, then
	// accepts the new key at once (for bots that nobody watches).
	WarnOnly
)

// Config configures a Client. Only Home is required; zero durations and
// counts take the defaults listed.
type Config struct {
	// Home is the profile directory (created with mode 0700). One
	// process at a time may open it.
	Home string
	// RelayURL overrides the relay's WebSocket URL. By default it is
	// derived from the server URL given to Register (http→ws,
	// https→wss, path /v1/ws), which fits hush-server.
	RelayURL string
	// InviteCode accompanies Register on servers that require one.
	InviteCode string
	// IdentityPolicy: Strict (default) or WarnOnly.
	IdentityPolicy IdentityPolicy
	// Offline keeps the client from connecting: history, contacts and
	// search work, sends wait in the outbox.
	Offline bool

	// Logger receives operational logs (nil: slog.Default()). The client
	// never logs message text, keys or tokens.
	Logger *slog.Logger
	// HTTPClient talks to the key server (nil: a client with a 30 s
	// timeout).
	HTTPClient *http.Client
	// Clock is the time source for every timer (nil: the system clock).
	Clock Clock

	// HeartbeatInterval: heartbeats while active (5 s).
	HeartbeatInterval time.Duration
	// PingInterval: application pings that detect a dead connection
	// (25 s); the connection is dropped after 2.5 intervals of silence.
	PingInterval time.Duration
	// BackoffMin and BackoffMax bound the reconnect backoff (500 ms,
	// 60 s); each wait is drawn with full jitter.
	BackoffMin, BackoffMax time.Duration
	// TokenRefreshMargin: refresh the auth token when less than this is
	// left (1 h, at most half the token's lifetime).
	TokenRefreshMargin time.Duration
	// SendTimeout: a Send without SendAck for this long means the
	// connection is broken; it is dropped and the send retried (30 s).
	SendTimeout time.Duration
	// SendWindow: Sends in flight at once (64).
	SendWindow int
	// PreKeyLowWater and PreKeyBatch: upload PreKeyBatch one-time prekeys
	// when the server holds fewer than PreKeyLowWater (20, 100).
	PreKeyLowWater, PreKeyBatch int
	// KeyCheckInterval: how often prekeys and the signed prekey are
	// checked (1 h; also after connecting).
	KeyCheckInterval time.Duration
	// SignedPreKeyRotation: age at which the signed prekey is replaced
	// (7 days); the old one is kept for SignedPreKeyGrace (31 days, longer
	// than the relay keeps a message).
	SignedPreKeyRotation, SignedPreKeyGrace time.Duration
	// HoldTimeout: how long a group message may wait for its sender key
	// after the queue is drained before it is reported undecryptable and
	// a resend is requested (10 s).
	HoldTimeout time.Duration
	// HandlerRetryMin and HandlerRetryMax bound Run's backoff between
	// attempts at an event whose handler failed (1 s, 1 min).
	HandlerRetryMin, HandlerRetryMax time.Duration
	// EventBuffer: capacity of the Events channel and of the in-memory
	// queue of ephemeral events (256).
	EventBuffer int

	ownHTTP bool

	// testHookAfterCommit, when set, runs after an envelope's processing
	// committed and before it is acknowledged; returning true drops the
	// connection without the ACK (a crash at the worst moment).
	testHookAfterCommit func(serverID uint64) bool
	// testHookInBatch, when set, runs inside a receive transaction after
	// envelope serverID, i of n, was processed; returning true fails the
	// transaction.
	testHookInBatch func(serverID uint64, i, n int) bool
	// testHookInSendBatch, when set, runs inside an outbox transaction
	// after row i of n was encrypted; returning true fails the batch.
	testHookInSendBatch func(i, n int) bool
	// testHookBeforeSend, when set, runs after a batch of outbox rows
	// committed and before their frames go out; returning true ends the
	// connection instead.
	testHookBeforeSend func(n int) bool
}

func (c *Config) setDefaults() {
	def := func(v *time.Duration, d time.Duration) {
		if *v <= 0 {
			*v = d
		}
	}
	defInt := func(v *int, d int) {
		if *v <= 0 {
			*v = d
		}
	}
	def(&c.HeartbeatInterval, 5*time.Second)
	def(&c.PingInterval, 25*time.Second)
	def(&c.BackoffMin, 500*time.Millisecond)
	def(&c.BackoffMax, time.Minute)
	def(&c.TokenRefreshMargin, time.Hour)
	def(&c.SendTimeout, 30*time.Second)
	def(&c.KeyCheckInterval, time.Hour)
	def(&c.SignedPreKeyRotation, 7*24*time.Hour)
	def(&c.SignedPreKeyGrace, 31*24*time.Hour)
	def(&c.HoldTimeout, 10*time.Second)
	def(&c.HandlerRetryMin, time.Second)
	def(&c.HandlerRetryMax, time.Minute)
	defInt(&c.SendWindow, 64)
	defInt(&c.PreKeyLowWater, 20)
	defInt(&c.PreKeyBatch, 100)
	defInt(&c.EventBuffer, 256)
	if c.BackoffMax < c.BackoffMin {
		c.BackoffMax = c.BackoffMin
	}
	if c.HandlerRetryMax < c.HandlerRetryMin {
		c.HandlerRetryMax = c.HandlerRetryMin
	}
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
	if c.Clock == nil {
		c.Clock = SystemClock{}
	}
	if c.HTTPClient == nil {
		// Our own transport, so Close can drop its idle connections.
		c.HTTPClient = &http.Client{Timeout: 30 * time.Second, Transport: http.DefaultTransport.(*http.Transport).Clone()}
		c.ownHTTP = true
	}
}

// Clock is the client's time source; tests substitute a fake one.
type Clock interface {
	Now() time.Time
	// NewTimer returns a timer that fires once after d.
	NewTimer(d time.Duration) Timer
}

// Timer is a one-shot timer.
type Timer interface {
	C() <-chan time.Time
	// Stop prevents the timer from firing; it reports whether it did.
	Stop() bool
}

// SystemClock is the real clock.
type SystemClock struct{}

// Now implements Clock.
func (SystemClock) Now() time.Time { return time.Now() }

// NewTimer implements Clock.
func (SystemClock) NewTimer(d time.Duration) Timer { return sysTimer{time.NewTimer(d)} }

type sysTimer struct{ t *time.Timer }

func (t sysTimer) C() <-chan time.Time { return t.t.C }
func (t sysTimer) Stop() bool          { return t.t.Stop() }

// backoff returns the wait before reconnect attempt n (0-based): "full
// jitter", a uniform draw from [0, min(max, base·2ⁿ)], never below base/2
// so a fleet of clients does not hammer a restarted relay.
func backoff(n int, base, max time.Duration, r *rand.Rand) time.Duration {
	ceil := base
	for i := 0; i < n && ceil < max; i++ {
		ceil *= 2
	}
	ceil = min(ceil, max)
	lo := base / 2
	if ceil <= lo {
		return ceil
	}
	return lo + time.Duration(r.Int64N(int64(ceil-lo)+1))
}

// sleep waits d on clock, or until done closes; it reports whether the
// full time passed.
func sleep(clock Clock, d time.Duration, done <-chan struct{}) bool {
	if d <= 0 {
		select {
		case <-done:
			return false
		default:
			return true
		}
	}
	t := clock.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C():
		return true
	case <-done:
		return false
	}
}
