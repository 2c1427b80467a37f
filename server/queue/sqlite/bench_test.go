package sqlite

import (
	"context"
	"crypto/rand"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/hushchat/hush/server/queue"
)

// The benchmarks run on a real file under the test's temp directory with the
// production settings (WAL, synchronous=FULL): every reported message was
// fsync'd before its Put returned. fsyncs/op is commits per write op (each
// commit is one WAL fsync), the measure of group commit.

// benchStore opens a store in a fresh directory under HUSH_QUEUE_BENCH_DIR
// (to measure a particular disk; a tmpfs there shows the CPU ceiling with
// free fsyncs), else under the test's temp directory.
func benchStore(b *testing.B) *Store {
	b.Helper()
	dir := b.TempDir()
	if base := os.Getenv("HUSH_QUEUE_BENCH_DIR"); base != "" {
		var err error
		if dir, err = os.MkdirTemp(base, "hush-queue-bench-"); err != nil {
			b.Fatal(err)
		}
		b.Cleanup(func() { os.RemoveAll(dir) })
	}
	s, err := Open(filepath.Join(dir, "queue.db"), Options{MaxDepth: 1 << 30})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { s.Close() })
	return s
}

var benchPayload = func() []byte {
	p := make([]byte, 200) // a short text message's Signal ciphertext
	rand.Read(p)
	return p
}()

// cpuTime returns the process's user+system CPU time.
func cpuTime() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// writtenBytes returns the bytes this process has passed to write system
// calls (wchar in /proc/self/io), or 0 where that is unavailable.
func writtenBytes() int64 {
	b, err := os.ReadFile("/proc/self/io")
	if err != nil {
		return 0
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "wchar: "); ok {
			n, _ := strconv.ParseInt(v, 10, 64)
			return n
		}
	}
	return 0
}

// benchPut builds a 1-recipient put stamped now, as the relay does: times
// (and so the time-ordered indexes) advance as they would in production.
func benchPut(id uint64, to queue.Device) queue.Put {
	now := time.Now()
	// Client ids are random, as real clients choose them: the idempotency
	// index gets random inserts, not sequential ones.
	cid := make([]byte, 16)
	rand.Read(cid)
	return queue.Put{
		ServerID:     id,
		Sender:       "alice",
		SenderDevice: 1,
		ClientID:     cid,
		ServerTime:   now,
		ExpiresAt:    now.Add(30 * 24 * time.Hour),
		Recipients:   []queue.Recipient{{Device: to, Type: 2, Payload: benchPayload}},
	}
}

// parallel runs b.N calls of fn spread over conc goroutines and reports
// messages per second and fsyncs per op.
func parallel(b *testing.B, s *Store, conc int, perOp int, fn func(worker int, i uint64) error) {
	b.Helper()
	var next atomic.Uint64
	before := s.Stats()
	cpu0 := cpuTime()
	w0 := writtenBytes()
	b.ResetTimer()
	start := time.Now()
	var wg sync.WaitGroup
	var failed atomic.Value
	for w := 0; w < conc; w++ {
		wg.Add(1)
		go func(w int) {
			defer wg.Done()
			for {
				i := next.Add(1)
				if i > uint64(b.N) {
					return
				}
				if err := fn(w, i); err != nil {
					failed.Store(err)
					return
				}
			}
		}(w)
	}
	wg.Wait()
	elapsed := time.Since(start)
	cpu := cpuTime() - cpu0
	written := writtenBytes() - w0
	b.StopTimer()
	if err, ok := failed.Load().(error); ok {
		b.Fatal(err)
	}
	after := s.Stats()
	ops := (after.Puts + after.Acks) - (before.Puts + before.Acks)
	b.ReportMetric(float64(b.N*perOp)/elapsed.Seconds(), "msgs/s")
	// CPU per message (both cores, all goroutines): what the machine pays,
	// and less noisy than wall time on a shared box.
	b.ReportMetric(float64(cpu.Microseconds())/float64(b.N*perOp), "cpu-µs/msg")
	if written > 0 {
		// Bytes the process wrote (WAL frames and checkpoints): the disk
		// traffic durability costs.
		b.ReportMetric(float64(written)/float64(b.N*perOp), "written-B/msg")
	}
	if ops > 0 {
		commits := after.Commits - before.Commits
		lazy := after.LazyCommits - before.LazyCommits
		b.ReportMetric(float64(commits)/float64(ops), "commits/op")
		b.ReportMetric(float64(commits-lazy)/float64(ops), "fsyncs/op")
	}
}

// BenchmarkCyclePaced: Put then Ack, as BenchmarkCycle but with each of
// conc workers pausing between messages, so ops arrive at a moderate
// pace instead of all at once — where batches are small, and held
// batches and ack-only commits without fsync matter. Reports commits and
// fsyncs per op and CPU per message. Each worker waits for its own Ack,
// which the relay never does (its acks run beside the connection), so
// msgs/s here includes the up to 5 ms an ack waits for a Put to commit
// with; commits/op, fsyncs/op, cpu-µs/msg and written-B/msg are the
// figures to compare.
func BenchmarkCyclePaced(b *testing.B) {
	for _, conc := range []int{4, 16} {
		b.Run(fmt.Sprintf("conc=%d", conc), func(b *testing.B) {
			s := benchStore(b)
			ctx := context.Background()
			base := uint64(time.Now().UnixMilli()) << 22
			parallel(b, s, conc, 1, func(w int, i uint64) error {
				to := queue.Device{Account: fmt.Sprintf("u%04d", w), ID: 1}
				if _, err := s.Put(ctx, benchPut(base+i, to)); err != nil {
					return err
				}
				time.Sleep(200 * time.Microsecond) // delivery and decryption
				n, err := s.Ack(ctx, to, []uint64{base + i})
				if err == nil && n != 1 {
					err = fmt.Errorf("ack deleted %d", n)
				}
				time.Sleep(500 * time.Microsecond) // the sender's next message
				return err
			})
		})
	}
}

// BenchmarkPut: 1-recipient Puts of a 200-byte payload from conc concurrent
// senders (the relay runs one Put per inbound Send, concurrently).
func BenchmarkPut(b *testing.B) {
	for _, conc := range []int{1, 16, 64, 256} {
		b.Run(fmt.Sprintf("conc=%d", conc), func(b *testing.B) {
			s := benchStore(b)
			ctx := context.Background()
			base := uint64(time.Now().UnixMilli()) << 22
			parallel(b, s, conc, 1, func(w int, i uint64) error {
				to := queue.Device{Account: fmt.Sprintf("u%04d", i%1000), ID: 1}
				_, err := s.Put(ctx, benchPut(base+i, to))
				return err
			})
		})
	}
}

// BenchmarkCycle: the full life of a message — Put, Fetch, Ack — with conc
// device pairs at once.
func BenchmarkCycle(b *testing.B) {
	for _, conc := range []int{1, 16, 64, 256} {
		b.Run(fmt.Sprintf("conc=%d", conc), func(b *testing.B) {
			s := benchStore(b)
			ctx := context.Background()
			base := uint64(time.Now().UnixMilli()) << 22
			parallel(b, s, conc, 1, func(w int, i uint64) error {
				to := queue.Device{Account: fmt.Sprintf("u%04d", w), ID: 1}
				if _, err := s.Put(ctx, benchPut(base+i, to)); err != nil {
					return err
				}
				ms, err := s.Fetch(ctx, to, 0, 16)
				if err != nil {
					return err
				}
				if len(ms) != 1 || ms[0].ServerID != base+i {
					return fmt.Errorf("fetched %d messages", len(ms))
				}
				n, err := s.Ack(ctx, to, []uint64{base + i})
				if err == nil && n != 1 {
					err = fmt.Errorf("ack deleted %d", n)
				}
				return err
			})
		})
	}
}

// BenchmarkPutShared1024: a group send to 1,024 devices, the shared
// 200-byte payload stored once; msgs/s counts delivered copies.
func BenchmarkPutShared1024(b *testing.B) {
	s := benchStore(b)
	ctx := context.Background()
	base := uint64(time.Now().UnixMilli()) << 22
	rcpt := make([]queue.Recipient, 1024)
	for i := range rcpt {
		rcpt[i] = queue.Recipient{Device: queue.Device{Account: fmt.Sprintf("m%04d", i), ID: 1}}
	}
	parallel(b, s, 1, len(rcpt), func(w int, i uint64) error {
		p := benchPut(base+i, queue.Device{})
		p.Recipients, p.Shared, p.SharedType = rcpt, benchPayload, 3
		_, err := s.Put(ctx, p)
		return err
	})
}
