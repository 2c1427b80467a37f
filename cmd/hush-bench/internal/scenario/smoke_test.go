package scenario

import (
	"context"
	"crypto/ed25519"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/hushchat/hush/cmd/hush-bench/internal/loadgen"
	"github.com/hushchat/hush/keyserver"
	"github.com/hushchat/hush/server/app"
	"github.com/hushchat/hush/server/app/apptest"
	"github.com/hushchat/hush/server/media"
	"github.com/hushchat/hush/server/media/disk"
	"github.com/hushchat/hush/server/media/mediaapi"
)

// The smoke test runs every scenario at a tiny size against a real
// hush-server started in process (key server, relay, SQLite stores on
// loopback), and checks only correctness: every message acknowledged was
// delivered exactly once, queues are empty afterwards, files round-trip.
// Figures are not asserted (they are for make bench).

type smokeServer struct {
	url string
	dir string
	app *app.App
}

func startServer(t *testing.T) *smokeServer {
	t.Helper()
	a := apptest.Start(t, func(c *app.AllInOneConfig) { c.Relay.MaxQueue = 100_000 })
	t.Cleanup(func() {
		if err := a.Shutdown(); err != nil {
			t.Errorf("shutdown: %v", err)
		}
	})
	return &smokeServer{url: a.URL(), dir: a.DataDir(), app: a.App()}
}

func newRunner(t *testing.T, cfg loadgen.Config) *Runner {
	t.Helper()
	env, err := loadgen.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return &Runner{Env: env, ServerPID: os.Getpid(), Workers: 4}
}

func TestBenchSmoke(t *testing.T) {
	srv := startServer(t)
	r := newRunner(t, loadgen.Config{Server: srv.url, SourceIPs: 4})
	ctx := context.Background()

	t.Run("throughput", func(t *testing.T) {
		res, err := r.Throughput(ctx, PairsOptions{Pairs: 4, Size: 200, Window: 16, Warmup: 100 * time.Millisecond, Duration: 700 * time.Millisecond})
		if err != nil {
			t.Fatal(err)
		}
		if res.Acked == 0 || res.Delivered != res.Acked || res.Lost != 0 || res.Duplicated != 0 || res.Refused != 0 || res.Unexpected != 0 || res.Leftover != 0 {
			t.Fatalf("counts: %+v, leftover %d", res.Counts, res.Leftover)
		}
		if res.LatencyMs.N == 0 || res.MsgsPerS <= 0 {
			t.Fatalf("no figures: %d latencies, %v msgs/s", res.LatencyMs.N, res.MsgsPerS)
		}
		if err := res.Err(); err != nil {
			t.Fatal(err)
		}
	})
	t.Run("latency", func(t *testing.T) {
		res, err := r.Latency(ctx, LatencyOptions{PairsOptions: PairsOptions{Pairs: 2, Size: 200, Window: 16, Rate: 200, Duration: 500 * time.Millisecond}})
		if err != nil {
			t.Fatal(err)
		}
		// 2 senders × 100 msgs/s × 0.5 s, each scheduled send counted.
		if res.Acked != 100 || res.Delivered != 100 || res.Err() != nil {
			t.Fatalf("counts: %+v (%v)", res.Counts, res.Err())
		}
	})
	t.Run("fanout", func(t *testing.T) {
		res, err := r.Fanout(ctx, FanoutOptions{Members: 12, Sends: 10, Size: 200})
		if err != nil {
			t.Fatal(err)
		}
		if res.Acked != 11*10 || res.Delivered != 11*10 || res.Err() != nil || res.LastMemberMs.N != 10 {
			t.Fatalf("counts: %+v, %d sends timed (%v)", res.Counts, res.LastMemberMs.N, res.Err())
		}
	})
	t.Run("offline", func(t *testing.T) {
		res, err := r.Offline(ctx, OfflineOptions{Messages: 1500, Senders: 3, Size: 200, Window: 32})
		if err != nil {
			t.Fatal(err)
		}
		if res.Acked != 1500 || res.Delivered != 1500 || res.QueueEmptyAfter != 1500 || res.Leftover != 0 || res.Err() != nil {
			t.Fatalf("counts: %+v, before QueueEmpty %d, leftover %d (%v)", res.Counts, res.QueueEmptyAfter, res.Leftover, res.Err())
		}
	})
	t.Run("idle", func(t *testing.T) {
		res, err := r.Idle(ctx, IdleOptions{Conns: 40, Concurrency: 8, Settle: 200 * time.Millisecond})
		if err != nil {
			t.Fatal(err)
		}
		if int(res.ServerConnected) < 40 || res.Err() != nil {
			t.Fatalf("server counts %v connections, want ≥ 40 (%v)", res.ServerConnected, res.Err())
		}
	})
	t.Run("idle-accounts-file", func(t *testing.T) {
		file := filepath.Join(t.TempDir(), "accounts.json")
		if _, err := r.Idle(ctx, IdleOptions{Conns: 5, RegisterOnly: true, Accounts: file}); err != nil {
			t.Fatal(err)
		}
		if fi, err := os.Stat(file); err != nil || fi.Mode().Perm() != 0o600 {
			t.Fatalf("accounts file: %v, %v", fi, err)
		}
		res, err := r.Idle(ctx, IdleOptions{Conns: 5, Accounts: file, Settle: 100 * time.Millisecond})
		if err != nil || res.Conns != 5 {
			t.Fatalf("idle from file: %+v, %v", res, err)
		}
	})
	t.Run("e2e", func(t *testing.T) {
		res, err := r.E2E(ctx, E2EOptions{Pairs: 1, Messages: 30, Window: 8, Home: t.TempDir()})
		if err != nil {
			t.Fatal(err)
		}
		if res.Acked != 30 || res.Delivered != 30 || res.Err() != nil {
			t.Fatalf("counts: %+v (%v)", res.Counts, res.Err())
		}
	})
	t.Run("media", func(t *testing.T) {
		// hush-server does not mount the media API (yet); serve it beside
		// the server, trusting the server's token-signing key, as a relay
		// with media would.
		key, _, err := keyserver.LoadOrCreateSigningKey(filepath.Join(srv.dir, app.SigningKey))
		if err != nil {
			t.Fatal(err)
		}
		store, err := disk.Open(t.TempDir(), disk.Options{Logger: slog.New(slog.DiscardHandler)})
		if err != nil {
			t.Fatal(err)
		}
		svc, err := media.New(media.Config{Store: store, TokenKey: key.Public().(ed25519.PublicKey), Logger: slog.New(slog.DiscardHandler)})
		if err != nil {
			t.Fatal(err)
		}
		mux := http.NewServeMux()
		mux.Handle(mediaapi.PathPrefix, svc.Handler())
		hs := httptest.NewServer(mux)
		defer hs.Close()
		mr := newRunner(t, loadgen.Config{Server: hs.URL, KeyServer: srv.url, SourceIPs: 2})
		res, err := mr.Media(ctx, MediaOptions{Size: 3<<20 + 5, Rounds: 1})
		if err != nil {
			t.Fatal(err)
		}
		if !res.Verified || res.BlobSize <= res.Size || res.RawMBps <= 0 || res.EncMBps <= 0 {
			t.Fatalf("media: %+v", res)
		}
	})
}

func TestLargestPlaintext(t *testing.T) {
	// 100 MiB blob: IV 16 + MAC 32 leave 104,857,552 bytes, a multiple
	// of the block: the plaintext is that minus the one padding byte.
	if got, want := LargestPlaintext(100<<20), int64(100<<20-16-32-1); got != want {
		t.Fatalf("LargestPlaintext(100 MiB) = %d, want %d", got, want)
	}
	if got := LargestPlaintext(48); got != 0 {
		t.Fatalf("LargestPlaintext(48) = %d, want 0", got)
	}
}
