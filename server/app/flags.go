package app

import (
	"errors"
	"flag"
	"fmt"

	"github.com/hushchat/hush/internal/envflag"
	"github.com/hushchat/hush/server/media"
	"github.com/hushchat/hush/server/media/backend"
	"github.com/hushchat/hush/server/media/s3"
)

// MediaFlags registers the media flags shared by hush-server and
// hush-relay on fs, each with an environment fallback named in its usage.
// Call the returned function after fs.Parse: it checks the values and
// fills o.
func MediaFlags(fs *flag.FlagSet, o *MediaOptions) func() error {
	var e envflag.Defaults
	var maxUpload, quota string
	fs.StringVar(&o.Kind, "media", e.String("HUSH_MEDIA", backend.Disk),
		"where encrypted attachments are stored: disk (served by this process under /v1/media/blob/)\nor s3 (presigned URLs to an S3-compatible bucket, see --s3-*) (env HUSH_MEDIA)")
	fs.StringVar(&o.Dir, "media-dir", e.String("HUSH_MEDIA_DIR", ""),
		"directory of the disk media backend (default <data>/media); several relays must share it (env HUSH_MEDIA_DIR)")
	fs.StringVar(&o.PublicURL, "media-public-url", e.String("HUSH_MEDIA_PUBLIC_URL", ""),
		"this server's URL as clients see it (e.g. https://chat.example.org), for the disk backend's\nupload and download URLs; empty: the scheme and Host of each request (env HUSH_MEDIA_PUBLIC_URL)")
	fs.StringVar(&maxUpload, "max-upload", e.String("HUSH_MAX_UPLOAD", "100MiB"),
		"largest encrypted attachment accepted, in bytes (suffixes K, M, G, KiB, MiB, GiB) (env HUSH_MAX_UPLOAD)")
	fs.StringVar(&quota, "media-quota", e.String("HUSH_MEDIA_QUOTA", "2GiB"),
		"bytes each account may upload per rolling day; at least --max-upload (env HUSH_MEDIA_QUOTA)")
	fs.DurationVar(&o.Retention, "media-retention", e.Duration("HUSH_MEDIA_RETENTION", media.DefaultRetention),
		"how long attachments are kept before the sweeper (and, on S3, a lifecycle rule) removes them (env HUSH_MEDIA_RETENTION)")
	fs.StringVar(&o.S3.Bucket, "s3-bucket", e.String("HUSH_S3_BUCKET", ""),
		"S3 bucket for --media s3; credentials come from the standard AWS environment\n(AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, AWS_PROFILE, instance roles) (env HUSH_S3_BUCKET)")
	fs.StringVar(&o.S3.Prefix, "s3-prefix", e.String("HUSH_S3_PREFIX", s3.DefaultPrefix),
		"key prefix of attachments in the bucket, ending in / (env HUSH_S3_PREFIX)")
	fs.StringVar(&o.S3.Region, "s3-region", e.String("HUSH_S3_REGION", ""),
		"S3 signing region; empty: AWS_REGION or the shared AWS config (env HUSH_S3_REGION)")
	fs.StringVar(&o.S3.Endpoint, "s3-endpoint", e.String("HUSH_S3_ENDPOINT", ""),
		"base URL of a non-AWS S3-compatible store, e.g. http://127.0.0.1:7070; empty: AWS (env HUSH_S3_ENDPOINT)")
	fs.BoolVar(&o.S3.PathStyle, "s3-path-style", e.Bool("HUSH_S3_PATH_STYLE", false),
		"address the bucket as ENDPOINT/BUCKET/KEY (most self-hosted stores need it) (env HUSH_S3_PATH_STYLE)")
	return func() error {
		if err := e.Err(); err != nil {
			return err
		}
		var err error
		if o.MaxUpload, err = ParseSize(maxUpload); err != nil {
			return fmt.Errorf("--max-upload: %w", err)
		}
		if o.MaxUpload < 1 {
			return errors.New("--max-upload must be at least 1 byte")
		}
		if o.QuotaBytes, err = ParseSize(quota); err != nil {
			return fmt.Errorf("--media-quota: %w", err)
		}
		if o.QuotaBytes < o.MaxUpload {
			return fmt.Errorf("--media-quota %d is below --max-upload %d: no file that size could ever be sent", o.QuotaBytes, o.MaxUpload)
		}
		if o.Retention <= 0 {
			return errors.New("--media-retention must be positive")
		}
		switch o.Kind {
		case backend.Disk:
		case backend.S3:
			if o.S3.Bucket == "" {
				return errors.New("--media s3 needs --s3-bucket")
			}
		default:
			return fmt.Errorf("--media %q: want disk or s3", o.Kind)
		}
		return nil
	}
}
