package app

import (
	"context"
	"crypto/ed25519"
	"fmt"
	"log/slog"
	"net/http"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/hushchat/hush/keyserver/ratelimit/redislimit"
	"github.com/hushchat/hush/server/directory"
	"github.com/hushchat/hush/server/media"
	"github.com/hushchat/hush/server/media/backend"
	"github.com/hushchat/hush/server/media/mediaapi"
	"github.com/hushchat/hush/server/media/s3"
)

// MediaDir is the disk backend's directory inside the data directory,
// unless MediaOptions.Dir says otherwise.
const MediaDir = "media"

// MediaOptions configure the relay's media service (attachment upload
// slots and download URLs; see server/media).
type MediaOptions struct {
	// Kind is backend.Disk (default) or backend.S3.
	Kind string
	// Dir is the disk backend's directory (default <data>/media). Several
	// relays can use the disk backend only if they share this directory;
	// use S3 otherwise.
	Dir string
	// PublicURL is the relay's URL as clients see it, for the disk
	// backend's absolute URLs (empty: each request's own scheme and Host).
	PublicURL string
	// MaxUpload is the largest encrypted file in bytes (default 100 MiB).
	MaxUpload int64
	// QuotaBytes is each account's upload allowance per rolling day
	// (default media.DefaultQuotaBytes; at least MaxUpload).
	QuotaBytes int64
	// Retention is how long objects are kept (default 30 days).
	Retention time.Duration
	// S3 names the bucket for backend.S3; credentials come from the
	// standard AWS environment (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY,
	// AWS_PROFILE, …).
	S3 s3.Config
}

// openMedia opens the media backend and service, mounts it on mux and
// starts its retention sweeper, stopped (and waited for) with the app. With
// rdb set, the slot and download-URL rate limits and the byte quota live in
// Redis, shared by every relay.
func openMedia(ctx context.Context, a *App, o MediaOptions, dataDir string, key ed25519.PublicKey, dir directory.Directory,
	rdb redis.UniversalClient, prefix string, log *slog.Logger, mux *http.ServeMux) error {
	if o.Kind == "" {
		o.Kind = backend.Disk
	}
	if o.Dir == "" {
		o.Dir = filepath.Join(dataDir, MediaDir)
	}
	if o.Retention <= 0 {
		o.Retention = media.DefaultRetention
	}
	octx, cancel := context.WithTimeout(ctx, 30*time.Second)
	store, err := backend.Open(octx, backend.Config{Kind: o.Kind, Dir: o.Dir, S3: o.S3, Retention: o.Retention}, log, a.reg)
	cancel()
	if err != nil {
		return fmt.Errorf("media: %w", err)
	}
	cfg := media.Config{
		Store:      store,
		TokenKey:   key,
		Directory:  dir,
		PublicURL:  o.PublicURL,
		MaxUpload:  o.MaxUpload,
		Retention:  o.Retention,
		QuotaBytes: o.QuotaBytes,
		Registerer: a.reg,
		Logger:     log,
	}
	if rdb != nil {
		if cfg.SlotLimiter, err = redislimit.New(rdb, redislimit.Options{Prefix: prefix, Name: "media-slot", Rate: media.DefaultSlotRate}); err != nil {
			return fmt.Errorf("media: slot limiter: %w", err)
		}
		if cfg.ResolveLimiter, err = redislimit.New(rdb, redislimit.Options{Prefix: prefix, Name: "media-resolve", Rate: media.DefaultResolveRate}); err != nil {
			return fmt.Errorf("media: download limiter: %w", err)
		}
		quota := o.QuotaBytes
		if quota <= 0 {
			quota = media.DefaultQuotaBytes
		}
		if cfg.Quota, err = redislimit.NewByteQuota(rdb, redislimit.ByteQuotaOptions{
			Prefix: prefix, Name: "media", Limit: quota, Window: media.DefaultQuotaWindow}); err != nil {
			return fmt.Errorf("media: byte quota: %w", err)
		}
	}
	svc, err := media.New(cfg)
	if err != nil {
		return fmt.Errorf("media: %w", err)
	}
	mux.Handle(mediaapi.PathPrefix, svc.Handler())

	sctx, stop := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		svc.Run(sctx)
	}()
	a.closers = append(a.closers, closerFunc(func() error { stop(); wg.Wait(); return nil }))
	log.Info("media service", "backend", o.Kind, "max_upload", svc.MaxUpload(), "retention", o.Retention, "shared_limits", rdb != nil)
	return nil
}

// closerFunc adapts a function to io.Closer.
type closerFunc func() error

func (f closerFunc) Close() error { return f() }

// ParseSize reads a byte count for a flag: a plain number of bytes, or a
// number with one of the suffixes K, M, G, T (powers of 1000) or KiB,
// MiB, GiB, TiB (powers of 1024), e.g. "100MiB" or "2GiB".
func ParseSize(s string) (int64, error) {
	t := strings.TrimSpace(s)
	mult := int64(1)
	for _, u := range []struct {
		suffix string
		mult   int64
	}{{"KiB", 1 << 10}, {"MiB", 1 << 20}, {"GiB", 1 << 30}, {"TiB", 1 << 40}, {"K", 1e3}, {"M", 1e6}, {"G", 1e9}, {"T", 1e12}, {"B", 1}} {
		if strings.HasSuffix(t, u.suffix) {
			t, mult = strings.TrimSpace(strings.TrimSuffix(t, u.suffix)), u.mult
			break
		}
	}
	n, err := strconv.ParseInt(t, 10, 64)
	if err != nil || n < 0 {
		return 0, fmt.Errorf("size %q: want a number of bytes, optionally with K, M, G, KiB, MiB or GiB", s)
	}
	if n > 0 && mult > (1<<62)/n {
		return 0, fmt.Errorf("size %q is too large", s)
	}
	return n * mult, nil
}
