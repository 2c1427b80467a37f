package sqlite

import (
	"bufio"
	"context"
	"crypto/rand"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hushchat/hush/server/queue"
)

// The crash test re-executes this test binary as a child that writes to a
// queue database as fast as it can and reports, on stdout, every Put and
// Ack after it returned nil. The parent kills it with SIGKILL mid-stream,
// reopens the database and checks that every reported Put is there and
// every reported Ack stuck.
const (
	crashDBEnv    = "HUSH_QUEUE_CRASH_DB"
	crashRoundEnv = "HUSH_QUEUE_CRASH_ROUND"
)

func TestMain(m *testing.M) {
	if path := os.Getenv(crashDBEnv); path != "" {
		round, _ := strconv.Atoi(os.Getenv(crashRoundEnv))
		crashChild(path, round)
		os.Exit(0)
	}
	os.Exit(m.Run())
}

var crashDevices = []queue.Device{{Account: "bob", ID: 1}, {Account: "bob", ID: 2}, {Account: "carol", ID: 1}, {Account: "dave", ID: 3}}

// crashChild runs until it is killed. Each report is one write(2) to the
// unbuffered stdout, made after the call it reports returned.
func crashChild(path string, round int) {
	s, err := Open(path, Options{MaxDepth: 1 << 20})
	if err != nil {
		fmt.Fprintf(os.Stderr, "open: %v\n", err)
		os.Exit(2)
	}
	var mu sync.Mutex
	report := func(format string, args ...any) {
		line := fmt.Sprintf(format, args...)
		mu.Lock()
		os.Stdout.WriteString(line)
		mu.Unlock()
	}
	ctx := context.Background()
	base := uint64(round+1) << 40
	var wg sync.WaitGroup
	for w := 0; w < 16; w++ {
		wg.Add(1)
		go func(w int) {
			defer wg.Done()
			for i := uint64(0); ; i++ {
				id := base + i*16 + uint64(w)
				now := time.Now()
				cid := make([]byte, queue.ClientIDSize)
				rand.Read(cid)
				p := queue.Put{
					ServerID: id, Sender: "alice", SenderDevice: uint32(w + 1), ClientID: cid,
					ServerTime: now, ExpiresAt: now.Add(time.Hour),
				}
				to := []queue.Device{crashDevices[int(i)%len(crashDevices)]}
				if i%5 == 0 { // a group send now and then
					to = crashDevices
					p.Shared, p.SharedType = []byte(fmt.Sprintf("shared %d", id)), 3
				}
				for _, d := range to {
					r := queue.Recipient{Device: d}
					if p.Shared == nil {
						r.Type, r.Payload = 2, []byte(fmt.Sprintf("for %s: %d", d, id))
					}
					p.Recipients = append(p.Recipients, r)
				}
				if _, err := s.Put(ctx, p); err != nil {
					fmt.Fprintf(os.Stderr, "put: %v\n", err)
					os.Exit(2)
				}
				var names []string
				for _, d := range to {
					names = append(names, d.String())
				}
				report("P %d %s\n", id, strings.Join(names, ","))
			}
		}(w)
	}
	// An acker drains bob.1: it announces each ack before making it ('a')
	// and reports it after it returned ('A').
	go func() {
		d := crashDevices[0]
		for {
			ms, err := s.Fetch(ctx, d, 0, 8)
			if err != nil {
				fmt.Fprintf(os.Stderr, "fetch: %v\n", err)
				os.Exit(2)
			}
			for _, m := range ms {
				report("a %d %s\n", m.ServerID, d)
				if _, err := s.Ack(ctx, d, []uint64{m.ServerID}); err != nil {
					fmt.Fprintf(os.Stderr, "ack: %v\n", err)
					os.Exit(2)
				}
				report("A %d %s\n", m.ServerID, d)
			}
			if len(ms) == 0 {
				time.Sleep(time.Millisecond)
			}
		}
	}()
	wg.Wait()
}

type msgKey struct {
	id  uint64
	dev string
}

func TestCrashKeepsEveryAcknowledgedWrite(t *testing.T) {
	path := filepath.Join(t.TempDir(), "queue.db")
	put := map[msgKey]bool{}    // reported stored
	acking := map[msgKey]bool{} // an ack was started: may be gone
	acked := map[msgKey]bool{}  // reported acked: must be gone
	for round := 0; round < 3; round++ {
		killAfter := 300 + 250*round
		cmd := exec.Command(os.Args[0], "-test.run=^$")
		cmd.Env = append(os.Environ(), crashDBEnv+"="+path, crashRoundEnv+"="+strconv.Itoa(round))
		var stderr strings.Builder
		cmd.Stderr = &stderr
		out, err := cmd.StdoutPipe()
		if err != nil {
			t.Fatal(err)
		}
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		sc := bufio.NewScanner(out)
		puts, killed := 0, false
		for sc.Scan() {
			f := strings.Fields(sc.Text())
			if len(f) != 3 {
				continue // a line cut by the kill was not reported whole
			}
			id, err := strconv.ParseUint(f[1], 10, 64)
			if err != nil {
				t.Fatalf("child printed %q", sc.Text())
			}
			switch f[0] {
			case "P":
				for _, d := range strings.Split(f[2], ",") {
					put[msgKey{id, d}] = true
				}
				puts++
			case "a":
				acking[msgKey{id, f[2]}] = true
			case "A":
				acked[msgKey{id, f[2]}] = true
			}
			if puts >= killAfter && !killed {
				if err := cmd.Process.Kill(); err != nil { // SIGKILL
					t.Fatal(err)
				}
				killed = true
			}
		}
		err = cmd.Wait()
		if !killed {
			t.Fatalf("round %d: child exited before the kill (%v): %s", round, err, stderr.String())
		}
		if stderr.Len() > 0 {
			t.Fatalf("round %d: child failed: %s", round, stderr.String())
		}

		// Reopen what the killed process left and compare.
		s, err := Open(path, Options{MaxDepth: 1 << 20})
		if err != nil {
			t.Fatalf("round %d: reopen: %v", round, err)
		}
		if err := s.Check(context.Background()); err != nil {
			t.Fatalf("round %d: %v", round, err)
		}
		stored := map[msgKey]bool{}
		for _, d := range crashDevices {
			after := uint64(0)
			for {
				ms, err := s.Fetch(context.Background(), d, after, queue.MaxFetch)
				if err != nil {
					t.Fatal(err)
				}
				if len(ms) == 0 {
					break
				}
				for _, m := range ms {
					k := msgKey{m.ServerID, d.String()}
					if stored[k] {
						t.Fatalf("round %d: %d stored twice for %s", round, m.ServerID, d)
					}
					stored[k] = true
					if m.Payload == nil {
						t.Fatalf("round %d: %d for %s has no payload", round, m.ServerID, d)
					}
				}
				after = ms[len(ms)-1].ServerID
			}
		}
		s.Close()
		lost, resurrected := 0, 0
		for k := range put {
			switch {
			case acked[k]:
				if stored[k] {
					resurrected++
				}
			case acking[k]:
				// The kill may have come before or after the ack committed.
			case !stored[k]:
				lost++
			}
		}
		if lost > 0 || resurrected > 0 {
			t.Fatalf("round %d: %d acknowledged puts lost, %d acknowledged acks undone (of %d puts, %d acks)",
				round, lost, resurrected, len(put), len(acked))
		}
		t.Logf("round %d: killed after %d reported puts; %d messages stored, %d acked, all accounted for", round, puts, len(stored), len(acked))
	}
}
