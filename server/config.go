package server

import (
	"crypto/ed25519"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/hushchat/hush/protocol"
	"github.com/hushchat/hush/server/directory"
	"github.com/hushchat/hush/server/nodeid"
	"github.com/hushchat/hush/server/presence"
	"github.com/hushchat/hush/server/push"
	"github.com/hushchat/hush/server/queue"
	"github.com/hushchat/hush/server/routing"
)

// Defaults of Config's zero fields.
const (
	DefaultTTL              = 30 * 24 * time.Hour
	DefaultPingInterval     = 30 * time.Second
	DefaultWriteTimeout     = 10 * time.Second
	DefaultSendTimeout      = 30 * time.Second
	DefaultSweepInterval    = time.Minute
	DefaultMaxInflightSends = 64
	DefaultMaxUnacked       = 4096
	DefaultMaxOutFrames     = 1024
	DefaultMaxOutBytes      = 4 << 20
	DefaultMaxPendingBytes  = 1 << 20
	DefaultFrameRate        = 2000
	DefaultFrameBurst       = 4000
	DefaultMaxBadFrames     = 50
	DefaultReadBufferSize   = 512
	DefaultWriteBufferSize  = 16 << 10
)

// Config configures a Relay. Store, Directory and TokenKey are required;
// zero values of the rest take the defaults above.
type Config struct {
	// Store holds the queues. The relay does not close it.
	Store queue.Store
	// Directory answers device lists (wrap a remote one in a
	// directory.Cache). If it has an Invalidate(account) method,
	// DeviceChanged calls it.
	Directory directory.Directory
	// TokenKey is the key server's Ed25519 public key; tokens are verified
	// offline with it.
	TokenKey ed25519.PublicKey
	// NodeID is this relay's Snowflake node id (0–1023), unique among the
	// relays sharing queues. It is ignored when NodeIDs is set.
	NodeID int64
	// NodeIDs, when set, supplies the node id (e.g. a nodeid.Lease from
	// Redis): ids are minted only while NodeIDs.Valid() is nil, and Sends
	// are refused with CODE_UNAVAILABLE otherwise. The relay does not close
	// it. Nil means a fixed NodeID.
	NodeIDs nodeid.Provider

	// Router routes doorbells between relays (nil: routing.NewLocal(), owned
	// and closed by the relay). A router with a Healthy() bool method (the
	// Redis router) has its health exported as hush_router_healthy; an
	// unhealthy router does not make the relay unready — delivery goes on
	// through the router's fallback polling and push. Presence tracks presence (nil: an in-memory
	// tracker, owned by the relay). Push wakes offline devices (nil: no
	// push; PushRegister is refused). Routers, trackers and notifiers given
	// here are not closed by the relay.
	Router   routing.Router
	Presence presence.Tracker
	Push     push.Notifier

	// Registerer receives the hush_ metrics (nil: not registered).
	Registerer prometheus.Registerer
	// Logger receives operational logs (nil: discarded). Payloads and
	// tokens are never logged.
	Logger *slog.Logger
	// Now is the clock (nil: time.Now).
	Now func() time.Time

	// TTL is how long an envelope waits for its ack (default 30 days).
	TTL time.Duration
	// PingInterval: how often the relay pings each connection; a connection
	// silent (no frame, no pong) for ReadTimeout (default 2.5 × PingInterval)
	// is dropped. WriteTimeout bounds one write.
	PingInterval, ReadTimeout, WriteTimeout time.Duration
	// SendTimeout bounds processing one Send (directory and store).
	SendTimeout time.Duration
	// SweepInterval: how often expired envelopes are deleted.
	SweepInterval time.Duration
	// MaxInflightSends: Sends of one connection being stored at once; the
	// connection's further frames wait (TCP backpressure).
	MaxInflightSends int
	// MaxUnacked: envelopes delivered to a connection and not yet acked;
	// delivery pauses at this many until acks arrive.
	MaxUnacked int
	// MaxOutFrames and MaxOutBytes bound a connection's queue of answers
	// (SendAck, Pong, Presence, Error): a client that does not read them is
	// disconnected with CloseSlowReader.
	MaxOutFrames, MaxOutBytes int
	// MaxPendingBytes bounds live envelopes held in memory per connection;
	// beyond it the connection reads them back from its queue instead.
	MaxPendingBytes int
	// FrameRate and FrameBurst: a connection's frames per second (token
	// bucket); a faster client is slowed down, not refused.
	FrameRate, FrameBurst int
	// MaxBadFrames: malformed or refused frames a connection may send before
	// it is closed with CloseProtocolViolation.
	MaxBadFrames int
	// ReadBufferSize is each connection's WebSocket read buffer, held for
	// the connection's life: small, since an idle connection's frames are
	// tiny and larger frames are read past it (default 512 bytes).
	// WriteBufferSize is the buffer one pump write gathers frames in;
	// they are pooled, so idle connections hold none (default 16 KiB).
	ReadBufferSize, WriteBufferSize int
	// OnlineWindow is passed to the default presence tracker.
	OnlineWindow time.Duration
}

func (c *Config) setDefaults() error {
	if c.Store == nil {
		return errors.New("relay: Config.Store is required")
	}
	if c.Directory == nil {
		return errors.New("relay: Config.Directory is required")
	}
	if len(c.TokenKey) != ed25519.PublicKeySize {
		return fmt.Errorf("relay: Config.TokenKey must be a %d-byte Ed25519 public key", ed25519.PublicKeySize)
	}
	if c.NodeIDs == nil {
		ids, err := nodeid.NewStatic(c.NodeID)
		if err != nil {
			return fmt.Errorf("relay: %w", err)
		}
		c.NodeIDs = ids
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	if c.Now == nil {
		c.Now = time.Now
	}
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
	def(&c.TTL, DefaultTTL)
	def(&c.PingInterval, DefaultPingInterval)
	def(&c.ReadTimeout, c.PingInterval*5/2)
	def(&c.WriteTimeout, DefaultWriteTimeout)
	def(&c.SendTimeout, DefaultSendTimeout)
	def(&c.SweepInterval, DefaultSweepInterval)
	defInt(&c.MaxInflightSends, DefaultMaxInflightSends)
	defInt(&c.MaxUnacked, DefaultMaxUnacked)
	defInt(&c.MaxOutFrames, DefaultMaxOutFrames)
	defInt(&c.MaxOutBytes, DefaultMaxOutBytes)
	defInt(&c.MaxPendingBytes, DefaultMaxPendingBytes)
	defInt(&c.FrameRate, DefaultFrameRate)
	defInt(&c.FrameBurst, DefaultFrameBurst)
	defInt(&c.MaxBadFrames, DefaultMaxBadFrames)
	defInt(&c.ReadBufferSize, DefaultReadBufferSize)
	defInt(&c.WriteBufferSize, DefaultWriteBufferSize)
	if c.ReadTimeout <= c.PingInterval {
		return fmt.Errorf("relay: read timeout %v must exceed the ping interval %v", c.ReadTimeout, c.PingInterval)
	}
	if c.MaxOutBytes < protocol.MaxFrameSize {
		c.MaxOutBytes = protocol.MaxFrameSize
	}
	return nil
}
