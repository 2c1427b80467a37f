package backend

import (
	"bytes"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/hushchat/hush/internal/testenv"
	"github.com/hushchat/hush/server/media/disk"
	"github.com/hushchat/hush/server/media/s3"
)

func TestOpenDisk(t *testing.T) {
	st, err := Open(t.Context(), Config{Kind: Disk, Dir: t.TempDir() + "/media"}, nil, prometheus.NewRegistry())
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := st.(*disk.Store); !ok || st.Handler() == nil {
		t.Fatalf("disk backend: %T", st)
	}
	if _, err := Open(t.Context(), Config{Kind: Disk}, nil, nil); err == nil || !strings.Contains(err.Error(), "--media-dir") {
		t.Fatalf("no directory: %v", err)
	}
	if _, err := Open(t.Context(), Config{Kind: "ftp"}, nil, nil); err == nil || !strings.Contains(err.Error(), `"ftp"`) {
		t.Fatalf("unknown kind: %v", err)
	}
}

func TestOpenS3(t *testing.T) {
	env := testenv.NeedS3(t)
	dir := t.TempDir()
	t.Setenv("AWS_CONFIG_FILE", dir+"/config")
	t.Setenv("AWS_SHARED_CREDENTIALS_FILE", dir+"/credentials")
	t.Setenv("AWS_EC2_METADATA_DISABLED", "true")
	t.Setenv("AWS_PROFILE", "")
	t.Setenv("AWS_SESSION_TOKEN", "")
	t.Setenv("AWS_ACCESS_KEY_ID", env.AccessKey)
	t.Setenv("AWS_SECRET_ACCESS_KEY", env.SecretKey)
	var logs bytes.Buffer
	log := slog.New(slog.NewTextHandler(&logs, nil))
	cfg := Config{Kind: S3, Retention: 30 * 24 * time.Hour,
		S3: s3.Config{Bucket: env.Bucket, Region: env.Region, Endpoint: env.Endpoint, PathStyle: true}}
	st, err := Open(t.Context(), cfg, log, nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := st.(*s3.Store); !ok || st.Handler() != nil {
		t.Fatalf("s3 backend: %T", st)
	}
	// Either the rule went in, or the log says the sweeper does the job.
	if l := logs.String(); l != "" && !strings.Contains(l, "sweeper enforces retention") {
		t.Fatalf("log: %s", l)
	}
	cfg.S3.Bucket = "hush-missing-" + strings.ToLower(env.Bucket[len(env.Bucket)-8:])
	if _, err := Open(t.Context(), cfg, log, nil); err == nil || !strings.Contains(err.Error(), cfg.S3.Bucket) {
		t.Fatalf("missing bucket: %v", err)
	}
}
