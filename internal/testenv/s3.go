package testenv

import (
	"context"
	"errors"
	"fmt"
	"os"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/credentials"
	"github.com/aws/aws-sdk-go-v2/service/s3"
	"github.com/aws/aws-sdk-go-v2/service/s3/types"
	"github.com/aws/smithy-go"
)

// S3 is the shared test S3-compatible server (versitygw) and this test's
// bucket on it.
type S3 struct {
	// Endpoint is the server's base URL, e.g. http://127.0.0.1:7070.
	// Buckets are addressed path-style (Endpoint/Bucket/key).
	Endpoint string
	// Region is the signing region (HUSH_TEST_S3_REGION, default us-east-1).
	Region string
	// AccessKey and SecretKey are static credentials of the server's root
	// account.
	AccessKey, SecretKey string
	// Bucket was created for this test and is emptied and removed in
	// t.Cleanup. Its name is a valid S3 bucket name: [a-z0-9-], 3 to 63
	// characters, starting and ending with a letter or digit.
	Bucket string
}

// NeedS3 returns the test S3 server from the HUSH_TEST_S3_* variables with
// a bucket created for this test. It fails the test under CI=true and skips
// it otherwise when the server is not configured or does not answer.
func NeedS3(t testing.TB) S3 {
	t.Helper()
	s := S3{
		Endpoint:  lookup(t, "S3", EnvS3Endpoint),
		AccessKey: lookup(t, "S3", EnvS3AccessKey),
		SecretKey: lookup(t, "S3", EnvS3SecretKey),
		Region:    os.Getenv(EnvS3Region),
		Bucket:    uniqueName(t, '-', 63),
	}
	if s.Region == "" {
		s.Region = DefaultS3Region
	}
	ctx, cancel := context.WithTimeout(context.Background(), checkTimeout)
	defer cancel()
	if err := CheckS3(ctx, s); err != nil {
		unavailable(t, inCI(), "S3", fmt.Sprintf("%s=%s does not answer: %v", EnvS3Endpoint, s.Endpoint, err))
	}
	c := s.Client()
	if _, err := c.CreateBucket(ctx, &s3.CreateBucketInput{Bucket: aws.String(s.Bucket)}); err != nil {
		t.Fatalf("testenv: create bucket %s: %v", s.Bucket, err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
		defer cancel()
		if err := removeBucket(ctx, c, s.Bucket); err != nil {
			t.Errorf("testenv: remove bucket %s: %v", s.Bucket, err)
		}
	})
	return s
}

// Client returns an aws-sdk-go-v2 S3 client for s: static credentials,
// s.Region, path-style addressing against s.Endpoint. It reads no shared
// AWS configuration, so nothing on the machine can redirect a test.
func (s S3) Client() *s3.Client {
	return s3.New(s3.Options{
		Region:       s.Region,
		BaseEndpoint: aws.String(s.Endpoint),
		UsePathStyle: true,
		Credentials:  credentials.NewStaticCredentialsProvider(s.AccessKey, s.SecretKey, ""),
	})
}

// CheckS3 reports whether the server in s accepts a signed ListBuckets
// (s.Bucket is not used).
func CheckS3(ctx context.Context, s S3) error {
	if s.Region == "" {
		s.Region = DefaultS3Region
	}
	if _, err := s.Client().ListBuckets(ctx, &s3.ListBucketsInput{}); err != nil {
		return fmt.Errorf("list buckets at %s: %w", s.Endpoint, err)
	}
	return nil
}

// removeBucket aborts unfinished multipart uploads, deletes every object
// and then the bucket itself.
func removeBucket(ctx context.Context, c *s3.Client, bucket string) error {
	uploads := s3.NewListMultipartUploadsPaginator(c, &s3.ListMultipartUploadsInput{Bucket: aws.String(bucket)})
	for uploads.HasMorePages() {
		page, err := uploads.NextPage(ctx)
		if isNoSuchBucket(err) {
			return nil // the test removed it itself
		}
		if err != nil {
			return fmt.Errorf("list multipart uploads: %w", err)
		}
		for _, u := range page.Uploads {
			if _, err := c.AbortMultipartUpload(ctx, &s3.AbortMultipartUploadInput{
				Bucket: aws.String(bucket), Key: u.Key, UploadId: u.UploadId,
			}); err != nil {
				return fmt.Errorf("abort multipart upload %s: %w", aws.ToString(u.Key), err)
			}
		}
	}
	objects := s3.NewListObjectsV2Paginator(c, &s3.ListObjectsV2Input{Bucket: aws.String(bucket)})
	for objects.HasMorePages() {
		page, err := objects.NextPage(ctx)
		if err != nil {
			return fmt.Errorf("list objects: %w", err)
		}
		if len(page.Contents) == 0 {
			continue
		}
		ids := make([]types.ObjectIdentifier, 0, len(page.Contents))
		for _, o := range page.Contents {
			ids = append(ids, types.ObjectIdentifier{Key: o.Key})
		}
		out, err := c.DeleteObjects(ctx, &s3.DeleteObjectsInput{
			Bucket: aws.String(bucket),
			Delete: &types.Delete{Objects: ids, Quiet: aws.Bool(true)},
		})
		if err != nil {
			return fmt.Errorf("delete objects: %w", err)
		}
		if len(out.Errors) > 0 {
			e := out.Errors[0]
			return fmt.Errorf("delete object %s: %s", aws.ToString(e.Key), aws.ToString(e.Message))
		}
	}
	if _, err := c.DeleteBucket(ctx, &s3.DeleteBucketInput{Bucket: aws.String(bucket)}); err != nil {
		return fmt.Errorf("delete bucket: %w", err)
	}
	return nil
}

func isNoSuchBucket(err error) bool {
	var api smithy.APIError
	return errors.As(err, &api) && api.ErrorCode() == "NoSuchBucket"
}
