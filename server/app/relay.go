package app

import (
	"context"
	"crypto/ed25519"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/hushchat/hush/server"
	"github.com/hushchat/hush/server/directory"
	"github.com/hushchat/hush/server/media/backend"
	"github.com/hushchat/hush/server/presence/redispresence"
	"github.com/hushchat/hush/server/routing/redisroute"
)

// RelayConfig configures hush-relay.
type RelayConfig struct {
	// Listen is the HTTP address (default 127.0.0.1:8082).
	Listen string
	// DataDir holds queue.db and push.db (unless Cluster puts them in
	// Cassandra) and the disk media backend's files; created with mode 0700.
	DataDir string
	Relay   RelayOptions
	// Cluster connects the relay to Redis and Cassandra (zero: neither).
	Cluster ClusterOptions
	// KeyServer is the key server's base URL; InternalSecret its
	// --internal-secret.
	KeyServer      string
	InternalSecret string
	// KeyServerKey verifies tokens; nil means fetch it from KeyServer at
	// start.
	KeyServerKey ed25519.PublicKey
	// DirectoryTTL: how long a device list is cached (default 10 s). It
	// bounds how long a removed device may still connect.
	DirectoryTTL time.Duration
	// ShutdownGrace bounds the graceful shutdown (default 15 s).
	ShutdownGrace time.Duration
	Logger        *slog.Logger
}

// StartRelay starts hush-relay and returns once it listens.
func StartRelay(ctx context.Context, cfg RelayConfig) (*App, error) {
	if cfg.Listen == "" {
		cfg.Listen = "127.0.0.1:8082"
	}
	if cfg.ShutdownGrace <= 0 {
		cfg.ShutdownGrace = 15 * time.Second
	}
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	if cfg.KeyServer == "" {
		return nil, errors.New("no key server URL given")
	}
	if err := cfg.Cluster.check(); err != nil {
		return nil, err
	}
	src, err := directory.NewHTTP(cfg.KeyServer, cfg.InternalSecret, nil)
	if err != nil {
		return nil, err
	}
	key := cfg.KeyServerKey
	if key == nil {
		fctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		key, err = directory.FetchServerKey(fctx, cfg.KeyServer, nil)
		cancel()
		if err != nil {
			return nil, err
		}
	}
	if err := prepareDataDir(cfg.DataDir); err != nil {
		return nil, err
	}
	a := &App{log: log, reg: newRegistry(), grace: cfg.ShutdownGrace}
	ok := false
	defer func() {
		if !ok {
			a.closeAll()
		}
	}()
	cl := cfg.Cluster
	rc := cfg.Relay.relayConfig()
	var rdb redis.UniversalClient
	if len(cl.Redis) > 0 {
		if rdb, err = openRedis(ctx, a, cl); err != nil {
			return nil, err
		}
		if cl.NodeIDAuto {
			if rc.NodeIDs, err = leaseNodeID(ctx, a, rdb, cl, log); err != nil {
				return nil, err
			}
			a.lost = rc.NodeIDs.Lost()
		}
	}
	qs, notifier, err := openRelayStores(ctx, a, cfg.DataDir, cfg.Relay, cl, log)
	if err != nil {
		return nil, err
	}
	if rdb != nil {
		rctx, cancel := context.WithTimeout(ctx, 30*time.Second)
		router, err := redisroute.New(rctx, rdb, redisroute.Options{Prefix: cl.RedisPrefix, Logger: log})
		cancel()
		if err != nil {
			return nil, fmt.Errorf("redis router: %w", err)
		}
		a.closers = append(a.closers, router)
		pctx, cancel := context.WithTimeout(ctx, 30*time.Second)
		pres, err := redispresence.New(pctx, rdb, redispresence.Options{
			Prefix: cl.RedisPrefix, OnlineWindow: cfg.Relay.OnlineWindow, Now: cfg.Relay.clock(), Logger: log})
		cancel()
		if err != nil {
			return nil, fmt.Errorf("redis presence: %w", err)
		}
		a.closers = append(a.closers, pres)
		rc.Router, rc.Presence = router, pres
	}
	dir := directory.NewCache(src, directory.CacheOptions{TTL: cfg.DirectoryTTL})
	rc.Store, rc.Directory, rc.TokenKey, rc.Push = qs, dir, key, notifier
	rc.Registerer, rc.Logger = a.reg, log
	if a.relay, err = server.New(rc); err != nil {
		return nil, err
	}
	mux := http.NewServeMux()
	if len(cl.Cassandra) > 0 && (cfg.Relay.Media.Kind == "" || cfg.Relay.Media.Kind == backend.Disk) {
		log.Warn("media on the disk backend with shared queues: every relay must share the media directory, or use --media s3")
	}
	if err := openMedia(ctx, a, cfg.Relay.Media, cfg.DataDir, key, dir, rdb, cl.RedisPrefix, log, mux); err != nil {
		sctx, cancel := context.WithTimeout(context.Background(), time.Second)
		a.relay.Shutdown(sctx)
		cancel()
		return nil, err
	}
	ready := func(ctx context.Context) error {
		// Readiness includes reaching the key server: without it no
		// device can connect.
		if _, err := src.Devices(ctx, "readyz"); err != nil && !errors.Is(err, directory.ErrUnknownAccount) {
			return fmt.Errorf("key server: %w", err)
		}
		return nil
	}
	if err := a.serve(cfg.Listen, mux, ready); err != nil {
		sctx, cancel := context.WithTimeout(context.Background(), time.Second)
		a.relay.Shutdown(sctx)
		cancel()
		return nil, err
	}
	ok = true
	nodeID := cfg.Relay.NodeID
	if rc.NodeIDs != nil {
		nodeID = rc.NodeIDs.ID()
	}
	log.Info("hush-relay listening", "addr", a.Addr(), "data", cfg.DataDir, "keyserver", cfg.KeyServer, "node_id", nodeID,
		"redis", len(cl.Redis) > 0, "cassandra", len(cl.Cassandra) > 0, "media", cfg.Relay.Media.Kind)
	return a, nil
}
