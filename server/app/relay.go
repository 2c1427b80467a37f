package app

import (
	"context"
	"crypto/ed25519"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"time"

	"github.com/hushchat/hush/server"
	"github.com/hushchat/hush/server/directory"
)

// RelayConfig configures hush-relay.
type RelayConfig struct {
	// Listen is the HTTP address (default 127.0.0.1:8082).
	Listen string
	// DataDir holds queue.db and push.db; created with mode 0700.
	DataDir string
	Relay   RelayOptions
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
	qs, notifier, err := openRelayStores(a, cfg.DataDir, cfg.Relay, log)
	if err != nil {
		return nil, err
	}
	dir := directory.NewCache(src, directory.CacheOptions{TTL: cfg.DirectoryTTL})
	rc := cfg.Relay.relayConfig()
	rc.Store, rc.Directory, rc.TokenKey, rc.Push = qs, dir, key, notifier
	rc.Registerer, rc.Logger = a.reg, log
	if a.relay, err = server.New(rc); err != nil {
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
	if err := a.serve(cfg.Listen, http.NewServeMux(), ready); err != nil {
		sctx, cancel := context.WithTimeout(context.Background(), time.Second)
		a.relay.Shutdown(sctx)
		cancel()
		return nil, err
	}
	ok = true
	log.Info("hush-relay listening", "addr", a.Addr(), "data", cfg.DataDir, "keyserver", cfg.KeyServer, "node_id", cfg.Relay.NodeID)
	return a, nil
}
