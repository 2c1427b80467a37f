package app

import (
	"bufio"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"sync"
	"testing"
	"time"

	"github.com/hushchat/hush/protocol"
)

// buildServer compiles cmd/hush-server once per test binary.
var buildServer = sync.OnceValues(func() (string, error) {
	dir, err := os.MkdirTemp("", "hush-server-bin")
	if err != nil {
		return "", err
	}
	bin := filepath.Join(dir, "hush-server")
	out, err := exec.Command("go", "build", "-o", bin, "github.com/hushchat/hush/cmd/hush-server").CombinedOutput()
	if err != nil {
		return "", fmt.Errorf("go build: %v\n%s", err, out)
	}
	return bin, nil
})

var listenRE = regexp.MustCompile(`hush-server listening"? addr=(\S+)`)

// process is a hush-server started as its own process.
type process struct {
	cmd  *exec.Cmd
	addr string
	logs *syncBuffer
}

func startProcess(t *testing.T, dir, listen string) *process {
	t.Helper()
	bin, err := buildServer()
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(bin, "--listen", listen, "--data", dir, "--anon-rate", "10000", "--bundle-rate", "10000")
	stderr, err := cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	p := &process{cmd: cmd, logs: &syncBuffer{}}
	t.Cleanup(func() {
		p.cmd.Process.Kill()
		p.cmd.Wait()
	})
	addr := make(chan string, 1)
	go func() {
		sc := bufio.NewScanner(io.TeeReader(stderr, p.logs))
		for sc.Scan() {
			if m := listenRE.FindStringSubmatch(sc.Text()); m != nil {
				addr <- m[1]
			}
		}
	}()
	select {
	case p.addr = <-addr:
	case <-time.After(60 * time.Second):
		t.Fatalf("hush-server did not start:\n%s", p.logs.Bytes())
	}
	return p
}

// kill -9 hush-server while messages stream in; after a restart every
// message that got a SendAck is delivered, exactly once, and the retries of
// the unacknowledged ones do not duplicate anything.
func TestKill9LosesNothingAcknowledged(t *testing.T) {
	dir := dataDir(t)
	p := startProcess(t, dir, "127.0.0.1:0")
	addr := p.addr
	alice := register(t, "http://"+addr, "alice")
	bob := register(t, "http://"+addr, "bob")

	// Encrypt everything up front: a retry must resend the same
	// ciphertext under the same client id.
	const n = 1500
	frames := make([]*protocol.Frame, n)
	index := map[string]int{}
	for i := range frames {
		frames[i] = alice.encryptSend(t, clientID(), fmt.Appendf(nil, "msg %04d", i), bob.addr())
		index[string(frames[i].GetSend().ClientId)] = i
	}
	ca := alice.connect(t)
	ca.drain()

	acked := make([]bool, n)
	ackedFirstRun := 0
	go func() {
		for _, f := range frames {
			if ca.send(f) != nil {
				return // the server died
			}
		}
	}()
	killed := false
	for !killed {
		f, err := ca.next()
		if err != nil {
			t.Fatalf("stream ended before the kill: %v", err)
		}
		a := f.GetSendAck()
		if a == nil {
			continue
		}
		if a.Error != nil {
			t.Fatalf("SendAck error: %v", a.Error)
		}
		acked[index[string(a.ClientId)]] = true
		if ackedFirstRun++; ackedFirstRun == n/3 {
			p.cmd.Process.Signal(os.Kill) // kill -9, mid-stream
			p.cmd.Wait()
			killed = true
		}
	}
	// Acks already on the wire when the process died count too.
	for {
		f, err := ca.next()
		if err != nil {
			break
		}
		if a := f.GetSendAck(); a != nil && a.Error == nil {
			acked[index[string(a.ClientId)]] = true
		}
	}
	firstRun := append([]bool(nil), acked...)

	startProcess(t, dir, addr) // same data, same address; stopped by its cleanup
	for _, d := range []*device{alice, bob} {
		d.login(t)
	}
	ca = alice.connect(t)
	ca.drain()
	for i, f := range frames { // retry whatever was not acknowledged
		if acked[i] {
			continue
		}
		if a := ca.sendAck(f); a.Error != nil {
			t.Fatalf("retry %d: %v", i, a.Error)
		}
		acked[i] = true
	}

	cb := bob.connect(t)
	envs := cb.drain()
	seen := make([]bool, n)
	last := -1
	for _, e := range envs {
		var i int
		pt := bob.decrypt(t, e) // a duplicate would fail here (ErrDuplicateMessage)
		if _, err := fmt.Sscanf(string(pt), "msg %d", &i); err != nil {
			t.Fatalf("plaintext %q", pt)
		}
		if seen[i] {
			t.Fatalf("message %d delivered twice", i)
		}
		seen[i] = true
		if firstRun[i] {
			if i < last {
				t.Fatalf("message %d delivered after %d: send order lost", i, last)
			}
			last = i
		}
	}
	for i := range n {
		if !seen[i] {
			t.Fatalf("message %d (acknowledged in the first run: %v) was lost", i, firstRun[i])
		}
	}
	t.Logf("%d acknowledged before kill -9, %d retried after restart, all %d delivered once", countTrue(firstRun), n-countTrue(firstRun), n)
}

func countTrue(b []bool) int {
	n := 0
	for _, v := range b {
		if v {
			n++
		}
	}
	return n
}
