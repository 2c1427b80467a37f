package sqlite

import (
	"bytes"
	"context"
	"crypto/rand"
	"database/sql/driver"
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hushchat/hush/server/queue"
	"github.com/hushchat/hush/server/queue/queuetest"
)

// opener opens one database file per test (reopening the same file when a
// test opens again) and, after the test, checks the file's invariants.
func opener() queuetest.Opener {
	var mu sync.Mutex
	paths := map[*testing.T]string{}
	return func(t *testing.T, opts queue.Options) queue.Store {
		t.Helper()
		mu.Lock()
		path, again := paths[t]
		if !again {
			path = filepath.Join(t.TempDir(), "queue.db")
			paths[t] = path
		}
		mu.Unlock()
		s, err := Open(path, opts)
		if err != nil {
			t.Fatalf("Open: %v", err)
		}
		if !again {
			// Registered before the suite's Close, so it runs after it.
			t.Cleanup(func() { checkFile(t, path, opts) })
		}
		return checked{s, t}
	}
}

// checked checks the live store (including the writer's in-memory counts)
// before each Close.
type checked struct {
	*Store
	t *testing.T
}

func (c checked) Close() error {
	if err := c.Check(context.Background()); err != nil && !errors.Is(err, queue.ErrClosed) {
		c.t.Errorf("before Close: %v", err)
	}
	return c.Store.Close()
}

// checkFile reopens a closed database and verifies its invariants.
func checkFile(t *testing.T, path string, opts queue.Options) {
	t.Helper()
	s, err := Open(path, opts)
	if err != nil {
		t.Errorf("reopen for check: %v", err)
		return
	}
	defer s.Close()
	if err := s.Check(context.Background()); err != nil {
		t.Error(err)
	}
}

func TestStore(t *testing.T) {
	t.Run("sqlite", func(t *testing.T) { queuetest.Run(t, opener()) })
}

func openTest(t *testing.T, path string, opts Options) *Store {
	t.Helper()
	s, err := Open(path, opts)
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

func testPut(id uint64, payload []byte, to ...queue.Device) queue.Put {
	now := time.Now()
	cid := make([]byte, queue.ClientIDSize)
	binary.BigEndian.PutUint64(cid, id)
	p := queue.Put{ServerID: id, Sender: "alice", SenderDevice: 1, ClientID: cid, ServerTime: now, ExpiresAt: now.Add(time.Hour)}
	for _, d := range to {
		p.Recipients = append(p.Recipients, queue.Recipient{Device: d, Type: 2, Payload: payload})
	}
	return p
}

var bob = queue.Device{Account: "bob", ID: 1}

func TestFilesArePrivate(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "data", "relay")
	path := filepath.Join(dir, "queue.db")
	s := openTest(t, path, Options{})
	if _, err := s.Put(context.Background(), testPut(1, []byte("x"), bob)); err != nil {
		t.Fatal(err)
	}
	fi, err := os.Stat(dir)
	if err != nil {
		t.Fatal(err)
	}
	if perm := fi.Mode().Perm(); perm != 0o700 {
		t.Errorf("created directory has mode %o, want 700", perm)
	}
	for _, name := range []string{"queue.db", "queue.db-wal", "queue.db-shm"} {
		fi, err := os.Stat(filepath.Join(dir, name))
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		if perm := fi.Mode().Perm(); perm != 0o600 {
			t.Errorf("%s has mode %o, want 600", name, perm)
		}
	}
	s.Close()
	// An existing database readable by others is restricted at Open.
	if err := os.Chmod(path, 0o644); err != nil {
		t.Fatal(err)
	}
	openTest(t, path, Options{})
	if fi, _ := os.Stat(path); fi.Mode().Perm() != 0o600 {
		t.Errorf("reopened database has mode %o, want 600", fi.Mode().Perm())
	}
}

func TestPragmas(t *testing.T) {
	s := openTest(t, filepath.Join(t.TempDir(), "queue.db"), Options{})
	for pragma, want := range map[string]string{
		"journal_mode": "wal",
		"synchronous":  "2", // FULL: every commit fsyncs the WAL
		"page_size":    "4096",
	} {
		var got string
		// On the writer's connection: the writer is idle (nothing was submitted).
		err := s.wc.queryOnce(context.Background(), "PRAGMA "+pragma, make([]driver.Value, 1), func(v []driver.Value) error {
			got = fmt.Sprint(v[0])
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
		if got != want {
			t.Errorf("PRAGMA %s = %s, want %s", pragma, got, want)
		}
	}
}

func TestNewerSchemaIsRefused(t *testing.T) {
	path := filepath.Join(t.TempDir(), "queue.db")
	s := openTest(t, path, Options{})
	if err := s.wc.execScript(fmt.Sprintf(`UPDATE schema_version SET version = %d`, len(migrations)+1)); err != nil {
		t.Fatal(err)
	}
	s.Close()
	_, err := Open(path, Options{})
	if err == nil || !strings.Contains(err.Error(), "newer than this binary supports") {
		t.Fatalf("Open of a newer schema: %v", err)
	}
}

// A storage failure (here: the database may not grow) fails every op of
// the batch with a retryable error and stores nothing; once the storage
// recovers, the same puts succeed.
func TestStorageFailureIsRetryableAndStoresNothing(t *testing.T) {
	s := openTest(t, filepath.Join(t.TempDir(), "queue.db"), Options{})
	ctx := context.Background()
	if _, err := s.Put(ctx, testPut(1, []byte("small"), bob)); err != nil {
		t.Fatal(err)
	}
	// The writer is idle: its last batch answered before Put returned.
	var pages int64
	if err := s.wc.queryOnce(ctx, `PRAGMA page_count`, make([]driver.Value, 1), func(v []driver.Value) error {
		pages, _ = v[0].(int64)
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	if err := s.wc.execScript(fmt.Sprintf(`PRAGMA max_page_count = %d`, pages)); err != nil {
		t.Fatal(err)
	}
	big := bytes.Repeat([]byte("B"), queue.MaxPayloadSize)
	var puts []queue.Put
	for i := uint64(10); i < 18; i++ {
		puts = append(puts, testPut(i, big, bob, queue.Device{Account: "carol", ID: 1}))
	}
	errs := make([]error, len(puts))
	var wg sync.WaitGroup
	for i := range puts {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			_, errs[i] = s.Put(ctx, puts[i])
		}(i)
	}
	wg.Wait()
	for i, err := range errs {
		if !queue.IsRetryable(err) || !strings.Contains(err.Error(), "full") {
			t.Fatalf("put %d into a full database: %v, want a retryable \"full\" error", i, err)
		}
	}
	t.Logf("put into a full database: %v", errs[0])
	if n, _ := s.Depth(ctx, bob); n != 1 {
		t.Fatalf("bob has %d messages after failed puts, want 1", n)
	}
	if err := s.Check(ctx); err != nil {
		t.Fatal(err) // includes the writer's in-memory counts
	}
	if err := s.wc.execScript(`PRAGMA max_page_count = 1073741823`); err != nil {
		t.Fatal(err)
	}
	for i := range puts {
		if r, err := s.Put(ctx, puts[i]); err != nil || r.Duplicate {
			t.Fatalf("retry %d after recovery: %+v, %v", i, r, err)
		}
	}
	if n, _ := s.Depth(ctx, bob); n != 1+len(puts) {
		t.Fatalf("bob has %d messages, want %d", n, 1+len(puts))
	}
	if err := s.Check(ctx); err != nil {
		t.Fatal(err)
	}
}

// An op that fails half-way on its own (a ServerID the relay handed out
// twice) fails alone; concurrent puts batched with it are stored.
func TestBadOpDoesNotFailItsBatch(t *testing.T) {
	s := openTest(t, filepath.Join(t.TempDir(), "queue.db"), Options{})
	ctx := context.Background()
	if _, err := s.Put(ctx, testPut(100, []byte("first"), bob)); err != nil {
		t.Fatal(err)
	}
	const n = 32
	errs := make([]error, n)
	var wg sync.WaitGroup
	for i := 0; i < n; i++ {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			p := testPut(uint64(200+i), []byte("ok"), bob)
			if i == n/2 {
				p = testPut(100, []byte("reused id"), queue.Device{Account: "carol", ID: 1}, bob)
				p.ClientID[15] = 0xff // a different message
			}
			_, errs[i] = s.Put(ctx, p)
		}(i)
	}
	wg.Wait()
	for i, err := range errs {
		if i == n/2 {
			if !errors.Is(err, queue.ErrInvalid) {
				t.Fatalf("put reusing a stored server id: %v, want ErrInvalid", err)
			}
			continue
		}
		if err != nil {
			t.Fatalf("put %d batched with a bad one: %v", i, err)
		}
	}
	if d, _ := s.Depth(ctx, bob); d != n {
		t.Fatalf("bob has %d messages, want %d", d, n)
	}
	if d, _ := s.Depth(ctx, queue.Device{Account: "carol", ID: 1}); d != 0 {
		t.Fatalf("carol got %d messages of the failed put", d)
	}
	if err := s.Check(ctx); err != nil {
		t.Fatal(err)
	}
}

// Concurrent puts share commits: the point of the writer goroutine.
func TestConcurrentPutsShareCommits(t *testing.T) {
	s := openTest(t, filepath.Join(t.TempDir(), "queue.db"), Options{})
	ctx := context.Background()
	before := s.Stats()
	var wg sync.WaitGroup
	for w := 0; w < 64; w++ {
		wg.Add(1)
		go func(w int) {
			defer wg.Done()
			for i := 0; i < 10; i++ {
				if _, err := s.Put(ctx, testPut(uint64(1000+w*10+i), []byte("m"), bob)); err != nil {
					t.Error(err)
					return
				}
			}
		}(w)
	}
	wg.Wait()
	st := s.Stats()
	puts, commits := st.Puts-before.Puts, st.Commits-before.Commits
	if puts != 640 || commits >= puts {
		t.Fatalf("%d puts took %d commits; concurrent puts must share commits", puts, commits)
	}
	t.Logf("640 concurrent puts in %d commits", commits)
}

// The database grows by about one copy of a shared payload, not one per
// recipient.
func TestSharedPayloadStoredOnceOnDisk(t *testing.T) {
	dir := t.TempDir()
	s := openTest(t, filepath.Join(dir, "queue.db"), Options{})
	ctx := context.Background()
	size := func() int64 {
		var total int64
		for _, name := range []string{"queue.db", "queue.db-wal"} {
			if fi, err := os.Stat(filepath.Join(dir, name)); err == nil {
				total += fi.Size()
			}
		}
		return total
	}
	before := size()
	shared := make([]byte, 64<<10)
	rand.Read(shared) // incompressible, unmistakable
	p := testPut(5, nil)
	p.Shared, p.SharedType = shared, 3
	for i := 0; i < 1024; i++ {
		p.Recipients = append(p.Recipients, queue.Recipient{Device: queue.Device{Account: fmt.Sprintf("m%04d", i), ID: 1}})
	}
	if _, err := s.Put(ctx, p); err != nil {
		t.Fatal(err)
	}
	grown := size() - before
	// One 64 KiB payload plus ~1,024 small rows and their index entries;
	// a copy per recipient would be 64 MiB.
	if grown > 2<<20 {
		t.Fatalf("a 1,024-recipient put of a 64 KiB payload grew the files by %d bytes", grown)
	}
	t.Logf("1,024-recipient put of a 64 KiB payload wrote %d KiB", grown>>10)
}

// Sweep's count is exact here (the contract allows backends with native
// expiry to report less).
func TestSweepCountsExactly(t *testing.T) {
	clock := queuetest.NewClock(time.Now().Truncate(time.Millisecond))
	s := openTest(t, filepath.Join(t.TempDir(), "queue.db"), Options{Clock: clock.Now})
	ctx := context.Background()
	const total = 2*sweepChunk + 5
	var wg sync.WaitGroup
	for w := uint64(0); w < 16; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := w + 1; i <= total; i += 16 {
				p := testPut(i, []byte("x"), queue.Device{Account: fmt.Sprintf("u%d", i%7), ID: 1})
				p.ServerTime, p.ExpiresAt = clock.Now(), clock.Now().Add(time.Minute)
				if _, err := s.Put(ctx, p); err != nil {
					t.Error(err)
					return
				}
			}
		}()
	}
	wg.Wait()
	clock.Advance(time.Minute)
	n, err := s.Sweep(ctx, clock.Now())
	if err != nil || n != total {
		t.Fatalf("Sweep removed %d (%v), want %d", n, err, total)
	}
	if err := s.Check(ctx); err != nil {
		t.Fatal(err)
	}
}

// A database written by an older binary is migrated forward at Open, its
// messages intact.
func TestMigratesOlderSchema(t *testing.T) {
	path := filepath.Join(t.TempDir(), "queue.db")
	s := openTest(t, path, Options{})
	ctx := context.Background()
	if _, err := s.Put(ctx, testPut(1, []byte("kept"), bob)); err != nil {
		t.Fatal(err)
	}
	// Make it a version-1 database again: the index migration 2 drops.
	if err := s.wc.execScript(`CREATE INDEX queue_time ON queue (server_time); UPDATE schema_version SET version = 1`); err != nil {
		t.Fatal(err)
	}
	s.Close()

	s = openTest(t, path, Options{})
	var version int64
	var indexes []string
	if err := s.wc.queryOnce(ctx, `SELECT version FROM schema_version`, make([]driver.Value, 1), func(v []driver.Value) error {
		version, _ = v[0].(int64)
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	if err := s.wc.queryOnce(ctx, `SELECT name FROM sqlite_schema WHERE type = 'index' AND tbl_name = 'queue' AND name NOT LIKE 'sqlite_%' ORDER BY name`, make([]driver.Value, 1), func(v []driver.Value) error {
		indexes = append(indexes, fmt.Sprint(v[0]))
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	if version != int64(len(migrations)) || fmt.Sprint(indexes) != "[queue_expires]" {
		t.Fatalf("after migration: version %d, queue indexes %v; want %d, [queue_expires]", version, indexes, len(migrations))
	}
	if ms, err := s.Fetch(ctx, bob, 0, 10); err != nil || len(ms) != 1 || string(ms[0].Payload) != "kept" {
		t.Fatalf("message after migration: %v, %v", ms, err)
	}
}

// Check may run while the store is busy; its count check can share a batch
// with writes and must not see a difference that is not there.
func TestCheckWhileWriting(t *testing.T) {
	s := openTest(t, filepath.Join(t.TempDir(), "queue.db"), Options{})
	ctx := context.Background()
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for w := 0; w < 8; w++ {
		wg.Add(1)
		go func(w int) {
			defer wg.Done()
			d := queue.Device{Account: fmt.Sprintf("u%d", w), ID: 1}
			for i := 0; ; i++ {
				select {
				case <-stop:
					return
				default:
				}
				id := uint64(w*1_000_000 + i + 1)
				if _, err := s.Put(ctx, testPut(id, []byte("m"), d)); err != nil {
					t.Error(err)
					return
				}
				if i%2 == 1 {
					if _, err := s.Ack(ctx, d, []uint64{id}); err != nil {
						t.Error(err)
						return
					}
				}
			}
		}(w)
	}
	for i := 0; i < 20; i++ {
		if err := s.Check(ctx); err != nil {
			t.Error(err)
			break
		}
	}
	close(stop)
	wg.Wait()
}
