package cassandra

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hushchat/hush/internal/testenv"
	"github.com/hushchat/hush/server/queue"
)

// Benchmarks against the real Cassandra of scripts/testenv (one node on the
// same machine, so the JVM and the benchmark share its cores):
//
//	set -a; . ./.testenv/env; set +a
//	go test -run '^$' -bench . -benchtime 3s ./server/queue/cassandra/

func openBench(b *testing.B) *Store {
	b.Helper()
	c := testenv.NeedCassandra(b)
	ctx, cancel := context.WithTimeout(context.Background(), suiteTimeout)
	defer cancel()
	s, err := Open(ctx, Config{Hosts: c.Hosts, Port: c.Port, Keyspace: c.Keyspace})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { s.Close() })
	return s
}

// runN runs fn b.N times spread over g goroutines and reports operations
// per second.
func runN(b *testing.B, g int, fn func(i int) error) {
	b.Helper()
	var next atomic.Int64
	var wg sync.WaitGroup
	var once sync.Once
	b.ResetTimer()
	for range g {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				i := next.Add(1) - 1
				if i >= int64(b.N) {
					return
				}
				if err := fn(int(i)); err != nil {
					once.Do(func() { b.Error(err) })
					return
				}
			}
		}()
	}
	wg.Wait()
	b.StopTimer()
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "ops/s")
}

// BenchmarkPut: 1-1 sends of 200 bytes to one device, spread over 1,000
// devices so the queues stay short (as they are for online devices).
func BenchmarkPut(b *testing.B) {
	s := openBench(b)
	payload := make([]byte, 200)
	for _, g := range []int{1, 16, 64} {
		b.Run(fmt.Sprintf("1rcpt-200B/goroutines=%d", g), func(b *testing.B) {
			pre := fmt.Sprintf("p%d", g)
			runN(b, g, func(i int) error {
				d := queue.Device{Account: fmt.Sprintf("%su%d", pre, i%1000), ID: 1}
				_, err := s.Put(context.Background(), put1(time.Now(), "alice", payload, d))
				return err
			})
		})
	}
}

// BenchmarkPutFetchAck: the whole life of a message — stored, fetched by
// its device, acked (deleted).
func BenchmarkPutFetchAck(b *testing.B) {
	s := openBench(b)
	payload := make([]byte, 200)
	for _, g := range []int{1, 16} {
		b.Run(fmt.Sprintf("goroutines=%d", g), func(b *testing.B) {
			pre := fmt.Sprintf("f%d", g)
			runN(b, g, func(i int) error {
				ctx := context.Background()
				d := queue.Device{Account: fmt.Sprintf("%su%d", pre, i%1000), ID: 1}
				p := put1(time.Now(), "alice", payload, d)
				if _, err := s.Put(ctx, p); err != nil {
					return err
				}
				ms, err := s.Fetch(ctx, d, 0, 16)
				if err != nil {
					return err
				}
				found := false
				for _, m := range ms {
					found = found || m.ServerID == p.ServerID
				}
				if !found {
					return fmt.Errorf("put %d not fetched", p.ServerID)
				}
				n, err := s.Ack(ctx, d, []uint64{p.ServerID})
				if err == nil && n != 1 {
					err = fmt.Errorf("ack deleted %d", n)
				}
				return err
			})
		})
	}
}

// BenchmarkPutShared1024: one group send of a 200-byte payload to 1,024
// member devices (the staged path: payload once, 1,024 references).
func BenchmarkPutShared1024(b *testing.B) {
	s := openBench(b)
	var to []queue.Device
	for i := range 1024 {
		to = append(to, queue.Device{Account: fmt.Sprintf("m%d", i), ID: 1})
	}
	payload := make([]byte, 200)
	runN(b, 1, func(i int) error {
		_, err := s.Put(context.Background(), putShared(time.Now(), "alice", payload, to...))
		return err
	})
	b.ReportMetric(float64(b.N*1024)/b.Elapsed().Seconds(), "deliveries/s")
}

// BenchmarkPutDeepQueue: a Put to a device already holding 1,000 messages
// (an offline device): the cap check counts the partition, so this shows
// what that count costs.
func BenchmarkPutDeepQueue(b *testing.B) {
	s := openBench(b)
	payload := make([]byte, 200)
	d := queue.Device{Account: "deep", ID: 1}
	for range 1000 {
		if _, err := s.Put(context.Background(), put1(time.Now(), "alice", payload, d)); err != nil {
			b.Fatal(err)
		}
	}
	runN(b, 1, func(i int) error {
		_, err := s.Put(context.Background(), put1(time.Now(), "alice", payload, d))
		return err
	})
}
