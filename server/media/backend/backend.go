// Package backend opens the media.Store a relay's flags name, so that
// hush-server and hush-relay wire media the same way:
//
//	store, err := backend.Open(ctx, backend.Config{Kind: "disk", Dir: dataDir + "/media"}, log, reg)
//	svc, err := media.New(media.Config{Store: store, TokenKey: ksPub, ...})
//	mux.Handle(mediaapi.PathPrefix, svc.Handler())
//	go svc.Run(ctx)
package backend

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/hushchat/hush/server/media"
	"github.com/hushchat/hush/server/media/disk"
	"github.com/hushchat/hush/server/media/s3"
)

// Kinds of backend.
const (
	Disk = "disk"
	S3   = "s3"
)

// Config selects and configures a backend.
type Config struct {
	// Kind is Disk or S3.
	Kind string
	// Dir is the disk backend's directory (created 0700 if missing).
	Dir string
	// S3 configures the S3 backend; credentials come from the standard
	// AWS environment.
	S3 s3.Config
	// Retention, when set, is installed as a bucket lifecycle rule on S3
	// where the store supports it (the relay's sweeper runs regardless).
	Retention time.Duration
}

// Open opens the backend cfg names. For S3 it checks that the bucket is
// reachable with the credentials at hand, so a misconfiguration fails at
// start-up rather than at the first upload.
func Open(ctx context.Context, cfg Config, log *slog.Logger, reg prometheus.Registerer) (media.Store, error) {
	if log == nil {
		log = slog.Default()
	}
	switch cfg.Kind {
	case Disk:
		if cfg.Dir == "" {
			return nil, errors.New("media: the disk backend needs a directory (--media-dir)")
		}
		return disk.Open(cfg.Dir, disk.Options{Logger: log, Registerer: reg})
	case S3:
		st, err := s3.New(ctx, cfg.S3, s3.Options{Logger: log})
		if err != nil {
			return nil, err
		}
		if err := st.Check(ctx); err != nil {
			return nil, err
		}
		if cfg.Retention > 0 {
			err := st.EnsureLifecycle(ctx, cfg.Retention)
			switch {
			case errors.Is(err, s3.ErrLifecycleUnsupported):
				log.Info("media: the S3 store has no lifecycle rules; the relay's sweeper enforces retention", "bucket", cfg.S3.Bucket)
			case err != nil:
				log.Warn("media: could not install the S3 lifecycle rule; the relay's sweeper enforces retention", "bucket", cfg.S3.Bucket, "err", err)
			}
		}
		return st, nil
	default:
		return nil, fmt.Errorf("media: unknown backend %q (want %s or %s)", cfg.Kind, Disk, S3)
	}
}
