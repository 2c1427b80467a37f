package s3

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/credentials"
	awss3 "github.com/aws/aws-sdk-go-v2/service/s3"
	"github.com/aws/aws-sdk-go-v2/service/s3/types"

	"github.com/hushchat/hush/internal/testenv"
	"github.com/hushchat/hush/server/media"
	"github.com/hushchat/hush/server/media/mediatest"
)

// openS3 gives the suite a fresh bucket on the test S3 server. URLs are
// signed with real time, so Wait sleeps.
func openS3(t testing.TB) mediatest.Harness {
	t.Helper()
	st := testenv.NeedS3(t)
	c := st.Client()
	s, err := NewFromClient(c, Config{Bucket: st.Bucket}, Options{})
	if err != nil {
		t.Fatalf("NewFromClient: %v", err)
	}
	return mediatest.Harness{
		Store: s,
		Clock: time.Now,
		Wait:  time.Sleep,
		Raw: func(ctx context.Context, key string) (io.ReadCloser, error) {
			out, err := c.GetObject(ctx, &awss3.GetObjectInput{Bucket: aws.String(st.Bucket), Key: aws.String(s.ObjectName(key))})
			if err != nil {
				return nil, err
			}
			return out.Body, nil
		},
		Replace: func(ctx context.Context, key string, data []byte) error {
			// A hostile store controls the metadata too.
			_, err := c.PutObject(ctx, &awss3.PutObjectInput{Bucket: aws.String(st.Bucket), Key: aws.String(s.ObjectName(key)),
				Body: bytes.NewReader(data), Metadata: map[string]string{sizeMeta: strconv.Itoa(len(data))}})
			return err
		},
	}
}

func TestStore(t *testing.T) {
	t.Run("s3", func(t *testing.T) { mediatest.Run(t, openS3) })
}

func BenchmarkStore(b *testing.B) {
	b.Run("s3", func(b *testing.B) { mediatest.Bench(b, openS3) })
}

func newKey(t testing.TB) string {
	k, err := media.NewObjectKey()
	if err != nil {
		t.Fatal(err)
	}
	return k
}

// isolateAWSConfig keeps the machine's AWS files and instance metadata out
// of a test that uses the standard credential chain.
func isolateAWSConfig(t *testing.T) {
	dir := t.TempDir()
	t.Setenv("AWS_CONFIG_FILE", dir+"/config")
	t.Setenv("AWS_SHARED_CREDENTIALS_FILE", dir+"/credentials")
	t.Setenv("AWS_EC2_METADATA_DISABLED", "true")
	for _, v := range []string{"AWS_PROFILE", "AWS_REGION", "AWS_DEFAULT_REGION", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3"} {
		t.Setenv(v, "")
	}
}

// TestNewFromEnvironment builds the store the way hush-server does: flags
// for bucket, region, endpoint and path style, credentials from the
// standard AWS environment.
func TestNewFromEnvironment(t *testing.T) {
	st := testenv.NeedS3(t)
	isolateAWSConfig(t)
	ctx := t.Context()
	cfg := Config{Bucket: st.Bucket, Region: st.Region, Endpoint: st.Endpoint, PathStyle: true}

	// No credentials: the store is built but cannot reach the bucket.
	s, err := New(ctx, cfg, Options{})
	if err != nil {
		t.Fatalf("New without credentials: %v", err)
	}
	if err := s.Check(ctx); err == nil {
		t.Fatal("Check succeeded without credentials")
	}

	t.Setenv("AWS_ACCESS_KEY_ID", st.AccessKey)
	t.Setenv("AWS_SECRET_ACCESS_KEY", st.SecretKey)
	s, err = New(ctx, cfg, Options{})
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	if err := s.Check(ctx); err != nil {
		t.Fatalf("Check: %v", err)
	}
	key := newKey(t)
	r, err := s.PresignUpload(ctx, key, 5, time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	req, _ := http.NewRequestWithContext(ctx, r.Method, r.URL, strings.NewReader("hello"))
	req.Header = r.Header.Clone()
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("PUT through a store built from the environment: %s", resp.Status)
	}
	if info, err := s.Stat(ctx, key); err != nil || info.Size != 5 {
		t.Fatalf("Stat = %+v, %v", info, err)
	}

	// A missing bucket fails Check with its name.
	s, err = New(ctx, Config{Bucket: "hush-no-such-bucket-" + key[:8], Region: st.Region, Endpoint: st.Endpoint, PathStyle: true}, Options{})
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Check(ctx); err == nil || !strings.Contains(err.Error(), "hush-no-such-bucket") {
		t.Fatalf("Check of a missing bucket: %v", err)
	}
}

func TestConfigErrors(t *testing.T) {
	isolateAWSConfig(t)
	ctx := t.Context()
	if _, err := New(ctx, Config{Bucket: "b"}, Options{}); err == nil || !strings.Contains(err.Error(), "region") {
		t.Fatalf("New without a region: %v", err)
	}
	c := awss3.New(awss3.Options{Region: "us-east-1", Credentials: credentials.NewStaticCredentialsProvider("AKID", "SECRET", "")})
	if _, err := NewFromClient(c, Config{}, Options{}); err == nil || !strings.Contains(err.Error(), "bucket") {
		t.Fatalf("no bucket: %v", err)
	}
	for _, p := range []string{"media", "/media/"} {
		if _, err := NewFromClient(c, Config{Bucket: "b", Prefix: p}, Options{}); err == nil {
			t.Fatalf("prefix %q accepted", p)
		}
	}
	s, err := NewFromClient(c, Config{Bucket: "b"}, Options{})
	if err != nil {
		t.Fatal(err)
	}
	if got := s.ObjectName("k"); got != DefaultPrefix+"k" {
		t.Fatalf("ObjectName = %q", got)
	}
	if s.Handler() != nil {
		t.Fatal("the S3 backend serves no URLs itself")
	}
	for _, ttl := range []time.Duration{0, 8 * 24 * time.Hour} {
		if _, err := s.PresignUpload(ctx, newKey(t), 1, ttl); err == nil {
			t.Fatalf("PresignUpload with ttl %v accepted", ttl)
		}
	}
	if _, err := s.PresignUpload(ctx, "../etc/passwd", 1, time.Minute); err == nil {
		t.Fatal("PresignUpload of a non-key accepted")
	}
	// The upload URL binds size and no-overwrite into the signature.
	r, err := s.PresignUpload(ctx, newKey(t), 10, time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	if !signsHeader(r.URL, "content-length") || !signsHeader(r.URL, "if-none-match") || !signsHeader(r.URL, "x-amz-meta-hush-size") {
		t.Fatalf("upload URL signs too little: %s", r.URL[strings.Index(r.URL, "X-Amz-SignedHeaders"):])
	}
	if r.Header.Get("If-None-Match") != "*" || r.Header.Get("X-Amz-Meta-Hush-Size") != "10" || r.Header.Get("Host") != "" || r.Header.Get("Content-Length") != "" {
		t.Fatalf("client headers %v", r.Header)
	}
}

// TestSweepLeavesForeignObjects: only object keys under the prefix are
// swept.
func TestSweepLeavesForeignObjects(t *testing.T) {
	st := testenv.NeedS3(t)
	c := st.Client()
	ctx := t.Context()
	s, err := NewFromClient(c, Config{Bucket: st.Bucket}, Options{})
	if err != nil {
		t.Fatal(err)
	}
	key := newKey(t)
	names := []string{s.ObjectName(key), DefaultPrefix + "README", "other/" + key, key}
	for _, n := range names {
		if _, err := c.PutObject(ctx, &awss3.PutObjectInput{Bucket: aws.String(st.Bucket), Key: aws.String(n), Body: strings.NewReader("x")}); err != nil {
			t.Fatal(err)
		}
	}
	n, err := s.Sweep(ctx, time.Now().Add(time.Hour))
	if err != nil || n != 1 {
		t.Fatalf("Sweep = %d, %v; want 1", n, err)
	}
	for _, name := range names[1:] {
		if _, err := c.HeadObject(ctx, &awss3.HeadObjectInput{Bucket: aws.String(st.Bucket), Key: aws.String(name)}); err != nil {
			t.Fatalf("%s was swept: %v", name, err)
		}
	}
}

// TestEnsureLifecycle: where the store supports lifecycle rules, the
// retention rule is installed next to the bucket's other rules; where it
// does not, the error says so (the sweeper then does the job).
func TestEnsureLifecycle(t *testing.T) {
	st := testenv.NeedS3(t)
	c := st.Client()
	ctx := t.Context()
	s, err := NewFromClient(c, Config{Bucket: st.Bucket}, Options{})
	if err != nil {
		t.Fatal(err)
	}
	if err := s.EnsureLifecycle(ctx, time.Hour); err == nil {
		t.Fatal("a retention under a day was accepted")
	}
	err = s.EnsureLifecycle(ctx, 30*24*time.Hour)
	if errors.Is(err, ErrLifecycleUnsupported) {
		t.Logf("this store has no lifecycle rules: %v", err)
		return
	}
	if err != nil {
		t.Fatalf("EnsureLifecycle: %v", err)
	}
	// Twice is the same as once, and other rules survive.
	if err := s.EnsureLifecycle(ctx, 30*24*time.Hour); err != nil {
		t.Fatal(err)
	}
	out, err := c.GetBucketLifecycleConfiguration(ctx, &awss3.GetBucketLifecycleConfigurationInput{Bucket: aws.String(st.Bucket)})
	if err != nil {
		t.Fatal(err)
	}
	var ours []types.LifecycleRule
	for _, r := range out.Rules {
		if aws.ToString(r.ID) == LifecycleRuleID {
			ours = append(ours, r)
		}
	}
	if len(ours) != 1 || ours[0].Expiration == nil || aws.ToInt32(ours[0].Expiration.Days) != 30 {
		t.Fatalf("lifecycle rules %+v", out.Rules)
	}
}
