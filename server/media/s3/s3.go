// Package s3 is the media backend for S3-compatible object stores
// (AWS S3, MinIO, versitygw, Ceph RGW…), through aws-sdk-go-v2. The relay
// never carries file bytes: it presigns a PUT and a GET (s3.PresignClient)
// and clients talk to the bucket directly.
//
// The upload URL is signed over the object key, the Content-Length, an
// "If-None-Match: *" header and an "x-amz-meta-hush-size" header carrying
// the size again: the store itself then refuses a body of another declared
// size, a URL pointed at another key, and a second upload to an existing
// key (412), which is what binds a slot to its account.
//
// AWS S3 stores an object only when its PUT completes, but not every
// S3-compatible server does: versitygw, for one, keeps the bytes it
// received from a PUT whose connection broke early. So an object is
// visible (Stat, and therefore download URLs) only when its stored length
// equals the size in its signed metadata; a partial object stays hidden
// until the sweeper removes it. Empty objects are refused: SigV4 cannot
// sign a Content-Length of 0, and an encrypted attachment is never empty.
//
// Objects live under a key prefix (default "media/") as prefix+objectKey.
// Retention is enforced by the sweeper (Sweep, run by media.Service.Run)
// and, where the store supports it, also by a bucket lifecycle rule
// (EnsureLifecycle), which scales better than listing a large bucket.
package s3

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/config"
	awss3 "github.com/aws/aws-sdk-go-v2/service/s3"
	"github.com/aws/aws-sdk-go-v2/service/s3/types"
	"github.com/aws/smithy-go"

	"github.com/hushchat/hush/server/media"
	"github.com/hushchat/hush/server/media/mediaapi"
)

// DefaultPrefix is where objects live in the bucket unless Config.Prefix
// says otherwise.
const DefaultPrefix = "media/"

// LifecycleRuleID names the lifecycle rule EnsureLifecycle maintains.
const LifecycleRuleID = "hush-media-retention"

// sizeMeta is the user-metadata key (x-amz-meta-hush-size) holding the
// size an object's upload URL was signed for.
const sizeMeta = "hush-size"

// maxPresign is the longest lifetime SigV4 allows a presigned URL.
const maxPresign = 7 * 24 * time.Hour

// Config says which bucket to use and how to reach it. Credentials come
// from the standard AWS chain (AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY,
// AWS_PROFILE and the shared config files, web identity, instance
// roles…), never from flags, so they stay out of process listings.
type Config struct {
	// Bucket is required.
	Bucket string
	// Prefix is prepended to every object key ("media/" by default; must
	// be empty or end in "/").
	Prefix string
	// Region signs requests; empty takes AWS_REGION or the shared config.
	Region string
	// Endpoint is the store's base URL for non-AWS stores (e.g.
	// http://127.0.0.1:7070); empty means AWS.
	Endpoint string
	// PathStyle addresses buckets as Endpoint/bucket/key instead of
	// bucket.Endpoint/key (most self-hosted stores need it).
	PathStyle bool
}

// Options are optional dependencies.
type Options struct {
	// Logger (nil: slog.Default()).
	Logger *slog.Logger
}

// Store is the S3 backend. It implements media.Store.
type Store struct {
	client  *awss3.Client
	presign *awss3.PresignClient
	bucket  string
	prefix  string
	log     *slog.Logger
}

var _ media.Store = (*Store)(nil)

// New loads the AWS configuration (region and credentials from the
// standard chain, overridden by cfg) and returns a Store for cfg.Bucket.
// It does not contact the store; call Check for that.
func New(ctx context.Context, cfg Config, opts Options) (*Store, error) {
	var lo []func(*config.LoadOptions) error
	if cfg.Region != "" {
		lo = append(lo, config.WithRegion(cfg.Region))
	}
	ac, err := config.LoadDefaultConfig(ctx, lo...)
	if err != nil {
		return nil, fmt.Errorf("media s3 store: load AWS configuration: %w", err)
	}
	if ac.Region == "" {
		return nil, errors.New("media s3 store: no region: set --s3-region or AWS_REGION")
	}
	client := awss3.NewFromConfig(ac, func(o *awss3.Options) {
		if cfg.Endpoint != "" {
			o.BaseEndpoint = aws.String(cfg.Endpoint)
		}
		o.UsePathStyle = cfg.PathStyle
	})
	return NewFromClient(client, cfg, opts)
}

// NewFromClient returns a Store using an existing client (cfg's Region,
// Endpoint and PathStyle are then the client's business).
func NewFromClient(client *awss3.Client, cfg Config, opts Options) (*Store, error) {
	if client == nil {
		return nil, errors.New("media s3 store: nil client")
	}
	if cfg.Bucket == "" {
		return nil, errors.New("media s3 store: bucket is required (--s3-bucket)")
	}
	prefix := cfg.Prefix
	if prefix == "" {
		prefix = DefaultPrefix
	}
	if prefix == "/" {
		prefix = ""
	}
	if prefix != "" && (!strings.HasSuffix(prefix, "/") || strings.HasPrefix(prefix, "/")) {
		return nil, fmt.Errorf("media s3 store: prefix %q must end with \"/\" and not start with one", prefix)
	}
	if opts.Logger == nil {
		opts.Logger = slog.Default()
	}
	return &Store{
		client:  client,
		presign: awss3.NewPresignClient(client),
		bucket:  cfg.Bucket,
		prefix:  prefix,
		log:     opts.Logger,
	}, nil
}

// Check reports whether the bucket exists and the credentials reach it
// (a readiness probe).
func (s *Store) Check(ctx context.Context) error {
	if _, err := s.client.HeadBucket(ctx, &awss3.HeadBucketInput{Bucket: aws.String(s.bucket)}); err != nil {
		return fmt.Errorf("media s3 store: bucket %s: %w", s.bucket, err)
	}
	return nil
}

// Bucket returns the bucket name and ObjectName the full S3 key of an
// object key (tests and operators).
func (s *Store) Bucket() string { return s.bucket }

// ObjectName returns the S3 object name of key.
func (s *Store) ObjectName(key string) string { return s.prefix + key }

func checkKey(key string) error {
	if !mediaapi.ValidObjectKey(key) {
		return fmt.Errorf("media s3 store: %q is not an object key", hint(key))
	}
	return nil
}

func hint(key string) string {
	if len(key) > 6 {
		return key[:6] + "…"
	}
	return key
}

func checkTTL(ttl time.Duration) error {
	if ttl < time.Second || ttl > maxPresign {
		return fmt.Errorf("media s3 store: URL lifetime %v must be between 1s and %v", ttl, maxPresign)
	}
	return nil
}

// PresignUpload implements media.Store: a PUT signed over the key, the
// Content-Length and If-None-Match: *.
func (s *Store) PresignUpload(ctx context.Context, key string, size int64, ttl time.Duration) (media.Request, error) {
	if err := checkKey(key); err != nil {
		return media.Request{}, err
	}
	if size < 1 {
		return media.Request{}, fmt.Errorf("media s3 store: size %d: uploads are at least 1 byte", size)
	}
	if err := checkTTL(ttl); err != nil {
		return media.Request{}, err
	}
	out, err := s.presign.PresignPutObject(ctx, &awss3.PutObjectInput{
		Bucket:        aws.String(s.bucket),
		Key:           aws.String(s.ObjectName(key)),
		ContentLength: aws.Int64(size),
		IfNoneMatch:   aws.String("*"),
		Metadata:      map[string]string{sizeMeta: strconv.FormatInt(size, 10)},
	}, awss3.WithPresignExpires(ttl))
	if err != nil {
		return media.Request{}, fmt.Errorf("media s3 store: presign PUT %s: %w", hint(key), err)
	}
	if !signsHeader(out.URL, "content-length") || !signsHeader(out.URL, "x-amz-meta-"+sizeMeta) {
		// Without them a slot would not bound the upload's size.
		return media.Request{}, fmt.Errorf("media s3 store: presigned PUT does not sign the size")
	}
	return media.Request{Method: out.Method, URL: out.URL, Header: clientHeaders(out.SignedHeader)}, nil
}

// PresignDownload implements media.Store.
func (s *Store) PresignDownload(ctx context.Context, key string, ttl time.Duration) (media.Request, error) {
	if err := checkKey(key); err != nil {
		return media.Request{}, err
	}
	if err := checkTTL(ttl); err != nil {
		return media.Request{}, err
	}
	out, err := s.presign.PresignGetObject(ctx, &awss3.GetObjectInput{
		Bucket: aws.String(s.bucket),
		Key:    aws.String(s.ObjectName(key)),
	}, awss3.WithPresignExpires(ttl))
	if err != nil {
		return media.Request{}, fmt.Errorf("media s3 store: presign GET %s: %w", hint(key), err)
	}
	return media.Request{Method: out.Method, URL: out.URL, Header: clientHeaders(out.SignedHeader)}, nil
}

// signsHeader reports whether a presigned URL's X-Amz-SignedHeaders names
// header (lower case).
func signsHeader(rawURL, header string) bool {
	_, q, _ := strings.Cut(rawURL, "?")
	for _, p := range strings.Split(q, "&") {
		if v, ok := strings.CutPrefix(p, "X-Amz-SignedHeaders="); ok {
			v = strings.ReplaceAll(v, "%3B", ";")
			for _, h := range strings.Split(v, ";") {
				if h == header {
					return true
				}
			}
		}
	}
	return false
}

// clientHeaders drops the signed headers HTTP clients set themselves.
func clientHeaders(signed http.Header) http.Header {
	h := http.Header{}
	for k, vs := range signed {
		switch http.CanonicalHeaderKey(k) {
		case "Host", "Content-Length":
			continue
		}
		h[http.CanonicalHeaderKey(k)] = append([]string(nil), vs...)
	}
	return h
}

// Stat implements media.Store.
func (s *Store) Stat(ctx context.Context, key string) (media.Info, error) {
	if err := checkKey(key); err != nil {
		return media.Info{}, err
	}
	out, err := s.client.HeadObject(ctx, &awss3.HeadObjectInput{
		Bucket: aws.String(s.bucket),
		Key:    aws.String(s.ObjectName(key)),
	})
	if isNotFound(err) {
		return media.Info{}, fmt.Errorf("stat %s: %w", hint(key), media.ErrNotFound)
	}
	if err != nil {
		return media.Info{}, fmt.Errorf("media s3 store: stat %s: %w", hint(key), err)
	}
	size := aws.ToInt64(out.ContentLength)
	if declared := out.Metadata[sizeMeta]; declared != strconv.FormatInt(size, 10) {
		// A partial upload some stores keep: not an object.
		return media.Info{}, fmt.Errorf("stat %s: %w: %d bytes stored, %q declared", hint(key), media.ErrNotFound, size, declared)
	}
	return media.Info{Size: size, Created: aws.ToTime(out.LastModified)}, nil
}

func isNotFound(err error) bool {
	if err == nil {
		return false
	}
	var nf *types.NotFound
	var nk *types.NoSuchKey
	if errors.As(err, &nf) || errors.As(err, &nk) {
		return true
	}
	var api smithy.APIError
	return errors.As(err, &api) && (api.ErrorCode() == "NotFound" || api.ErrorCode() == "NoSuchKey")
}

// Delete implements media.Store.
func (s *Store) Delete(ctx context.Context, key string) error {
	if err := checkKey(key); err != nil {
		return err
	}
	_, err := s.client.DeleteObject(ctx, &awss3.DeleteObjectInput{
		Bucket: aws.String(s.bucket),
		Key:    aws.String(s.ObjectName(key)),
	})
	if err != nil && !isNotFound(err) {
		return fmt.Errorf("media s3 store: delete %s: %w", hint(key), err)
	}
	return nil
}

// Sweep implements media.Store: it lists the prefix and deletes, in
// batches, the objects last modified before olderThan. Names under the
// prefix that are not object keys are left alone.
func (s *Store) Sweep(ctx context.Context, olderThan time.Time) (int, error) {
	pages := awss3.NewListObjectsV2Paginator(s.client, &awss3.ListObjectsV2Input{
		Bucket: aws.String(s.bucket),
		Prefix: aws.String(s.prefix),
	})
	n := 0
	for pages.HasMorePages() {
		page, err := pages.NextPage(ctx)
		if err != nil {
			return n, fmt.Errorf("media s3 store: sweep: list: %w", err)
		}
		var ids []types.ObjectIdentifier
		for _, o := range page.Contents {
			name := aws.ToString(o.Key)
			if !mediaapi.ValidObjectKey(strings.TrimPrefix(name, s.prefix)) || !aws.ToTime(o.LastModified).Before(olderThan) {
				continue
			}
			ids = append(ids, types.ObjectIdentifier{Key: o.Key})
		}
		if len(ids) == 0 {
			continue
		}
		out, err := s.client.DeleteObjects(ctx, &awss3.DeleteObjectsInput{
			Bucket: aws.String(s.bucket),
			Delete: &types.Delete{Objects: ids, Quiet: aws.Bool(true)},
		})
		if err != nil {
			return n, fmt.Errorf("media s3 store: sweep: delete %d objects: %w", len(ids), err)
		}
		n += len(ids) - len(out.Errors)
		if len(out.Errors) > 0 {
			e := out.Errors[0]
			return n, fmt.Errorf("media s3 store: sweep: %d of %d deletions failed, first: %s %s",
				len(out.Errors), len(ids), aws.ToString(e.Code), aws.ToString(e.Message))
		}
	}
	return n, nil
}

// Handler implements media.Store: S3 serves its own URLs.
func (s *Store) Handler() http.Handler { return nil }

// ErrLifecycleUnsupported is wrapped by EnsureLifecycle when the store
// does not implement bucket lifecycle rules; the sweeper then does the
// job alone.
var ErrLifecycleUnsupported = errors.New("bucket lifecycle rules not supported by this store")

// EnsureLifecycle installs (or updates) the rule LifecycleRuleID that
// expires objects under the prefix after retention, rounded up to whole
// days, keeping every other rule of the bucket.
func (s *Store) EnsureLifecycle(ctx context.Context, retention time.Duration) error {
	days := int32((retention + 24*time.Hour - 1) / (24 * time.Hour))
	if days < 1 {
		return fmt.Errorf("media s3 store: retention %v is under a day; lifecycle rules count whole days", retention)
	}
	var rules []types.LifecycleRule
	cur, err := s.client.GetBucketLifecycleConfiguration(ctx, &awss3.GetBucketLifecycleConfigurationInput{Bucket: aws.String(s.bucket)})
	switch {
	case err == nil:
		for _, r := range cur.Rules {
			if aws.ToString(r.ID) != LifecycleRuleID {
				rules = append(rules, r)
			}
		}
	case apiCode(err) == "NoSuchLifecycleConfiguration":
	case unsupported(err):
		return fmt.Errorf("media s3 store: %w: %v", ErrLifecycleUnsupported, err)
	default:
		return fmt.Errorf("media s3 store: read lifecycle of %s: %w", s.bucket, err)
	}
	rules = append(rules, types.LifecycleRule{
		ID:         aws.String(LifecycleRuleID),
		Status:     types.ExpirationStatusEnabled,
		Filter:     &types.LifecycleRuleFilter{Prefix: aws.String(s.prefix)},
		Expiration: &types.LifecycleExpiration{Days: aws.Int32(days)},
		AbortIncompleteMultipartUpload: &types.AbortIncompleteMultipartUpload{
			DaysAfterInitiation: aws.Int32(1),
		},
	})
	_, err = s.client.PutBucketLifecycleConfiguration(ctx, &awss3.PutBucketLifecycleConfigurationInput{
		Bucket:                 aws.String(s.bucket),
		LifecycleConfiguration: &types.BucketLifecycleConfiguration{Rules: rules},
	})
	if unsupported(err) {
		return fmt.Errorf("media s3 store: %w: %v", ErrLifecycleUnsupported, err)
	}
	if err != nil {
		return fmt.Errorf("media s3 store: set lifecycle of %s: %w", s.bucket, err)
	}
	return nil
}

func apiCode(err error) string {
	var api smithy.APIError
	if errors.As(err, &api) {
		return api.ErrorCode()
	}
	return ""
}

func unsupported(err error) bool {
	if err == nil {
		return false
	}
	switch apiCode(err) {
	case "NotImplemented", "NotSupported", "MethodNotAllowed":
		return true
	}
	var re interface{ HTTPStatusCode() int }
	return errors.As(err, &re) && (re.HTTPStatusCode() == http.StatusNotImplemented || re.HTTPStatusCode() == http.StatusMethodNotAllowed)
}
