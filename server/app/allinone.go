package app

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"path/filepath"
	"time"

	"github.com/hushchat/hush/keyserver"
	"github.com/hushchat/hush/keyserver/ratelimit"
	kssqlite "github.com/hushchat/hush/keyserver/store/sqlite"
	"github.com/hushchat/hush/server"
	"github.com/hushchat/hush/server/directory"
)

// AllInOneConfig configures hush-server.
type AllInOneConfig struct {
	// Listen is the HTTP address (default 127.0.0.1:8080).
	Listen string
	// DataDir holds keys.db, queue.db, push.db, signing.key and the disk
	// media backend's directory media/; created with mode 0700.
	DataDir string
	Relay   RelayOptions

	// Key server settings (zero: the key server's defaults).
	InviteCode string
	TokenTTL   time.Duration
	AnonRate   ratelimit.Rate
	BundleRate ratelimit.Rate

	// ShutdownGrace bounds the graceful shutdown (default 15 s).
	ShutdownGrace time.Duration
	// Logger (nil: discarded).
	Logger *slog.Logger
}

// StartAllInOne starts hush-server and returns once it listens.
func StartAllInOne(ctx context.Context, cfg AllInOneConfig) (*App, error) {
	if cfg.Listen == "" {
		cfg.Listen = "127.0.0.1:8080"
	}
	if cfg.ShutdownGrace <= 0 {
		cfg.ShutdownGrace = 15 * time.Second
	}
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
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

	key, created, err := keyserver.LoadOrCreateSigningKey(filepath.Join(cfg.DataDir, SigningKey))
	if err != nil {
		return nil, err
	}
	if created {
		log.Info("created a new token-signing key", "file", filepath.Join(cfg.DataDir, SigningKey))
	}
	kst, err := kssqlite.Open(ctx, filepath.Join(cfg.DataDir, KeysDB))
	if err != nil {
		return nil, fmt.Errorf("key store: %w", err)
	}
	a.closers = append(a.closers, kst)
	ks, err := keyserver.New(keyserver.Config{
		SigningKey: key,
		TokenTTL:   cfg.TokenTTL,
		InviteCode: cfg.InviteCode,
		AnonRate:   cfg.AnonRate,
		BundleRate: cfg.BundleRate,
		Logger:     log,
		Registerer: a.reg,
	}, kst)
	if err != nil {
		return nil, err
	}

	qs, notifier, err := openRelayStores(ctx, a, cfg.DataDir, cfg.Relay, ClusterOptions{}, log)
	if err != nil {
		return nil, err
	}
	// The relay asks the key server in-process; the cache keeps a large
	// group send from costing one store read per member, and the key
	// server's change notifications keep it exact.
	dir := directory.NewCache(directory.Func(func(ctx context.Context, account string) ([]uint32, error) {
		devs, err := ks.Devices(ctx, account)
		if errors.Is(err, keyserver.ErrAccountNotFound) {
			return nil, &directory.UnknownAccountError{Account: account}
		}
		if err != nil {
			return nil, err
		}
		ids := make([]uint32, len(devs))
		for i, d := range devs {
			ids[i] = d.ID
		}
		return ids, nil
	}), directory.CacheOptions{TTL: time.Minute})

	rc := cfg.Relay.relayConfig()
	rc.Store, rc.Directory, rc.TokenKey, rc.Push = qs, dir, ks.PublicKey(), notifier
	rc.Registerer, rc.Logger = a.reg, log
	if a.relay, err = server.New(rc); err != nil {
		return nil, err
	}
	ks.OnDeviceChange(a.relay.DeviceChanged)

	mux := http.NewServeMux()
	mux.Handle("/v1/", ks.Handler())
	if err := openMedia(ctx, a, cfg.Relay.Media, cfg.DataDir, ks.PublicKey(), dir, nil, "", log, mux); err != nil {
		sctx, cancel := context.WithTimeout(context.Background(), time.Second)
		a.relay.Shutdown(sctx)
		cancel()
		return nil, err
	}
	if err := a.serve(cfg.Listen, mux, ks.Ready); err != nil {
		sctx, cancel := context.WithTimeout(context.Background(), time.Second)
		a.relay.Shutdown(sctx)
		cancel()
		return nil, err
	}
	ok = true
	log.Info("hush-server listening", "addr", a.Addr(), "data", cfg.DataDir, "node_id", cfg.Relay.NodeID,
		"open_registration", cfg.InviteCode == "")
	return a, nil
}
