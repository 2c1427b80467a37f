// Package redistest starts private redis-server processes for tests that
// must do to Redis what a shared server cannot allow: kill it, restart it,
// or run it as a cluster. Everything else uses the shared server from
// internal/testenv.
//
// The binary is the same Debian redis-server scripts/testenv uses. When it
// is not on PATH the test fails under CI=true and is skipped (loudly)
// otherwise, as internal/testenv does for the shared services.
package redistest

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
)

// startTimeout bounds how long a fresh server may take to answer PING.
const startTimeout = 20 * time.Second

// Server is one private redis-server process on a fixed loopback port.
type Server struct {
	// Addr is 127.0.0.1:port; it stays the same across Restart.
	Addr string
	t    testing.TB
	port int
	dir  string
	args []string

	mu  sync.Mutex
	cmd *exec.Cmd
	log *syncBuffer
}

// syncBuffer is the server's output, written by exec's copying goroutine
// and read by Log.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.String()
}

func binary(t testing.TB) string {
	t.Helper()
	p, err := exec.LookPath("redis-server")
	if err != nil {
		if v, _ := strconv.ParseBool(os.Getenv("CI")); v {
			t.Fatalf("redistest: redis-server is required under CI=true: %v", err)
		}
		t.Skipf("redistest: SKIPPING, NOT A PASS: redis-server not on PATH (%v); install redis-server", err)
	}
	return p
}

// Start runs a redis-server without persistence on a free loopback port and
// stops it in t.Cleanup. extra are further command-line options.
func Start(t testing.TB, extra ...string) *Server {
	t.Helper()
	bin := binary(t)
	port := freePort(t, false)
	s := &Server{Addr: fmt.Sprintf("127.0.0.1:%d", port), t: t, port: port, dir: t.TempDir()}
	s.args = append([]string{
		"--port", strconv.Itoa(port), "--bind", "127.0.0.1",
		"--save", "", "--appendonly", "no", "--dir", s.dir,
		"--daemonize", "no", "--loglevel", "warning",
	}, extra...)
	s.start(bin)
	t.Cleanup(s.Kill)
	return s
}

func (s *Server) start(bin string) {
	s.t.Helper()
	cmd := exec.Command(bin, s.args...)
	log := &syncBuffer{}
	cmd.Stdout, cmd.Stderr = log, log
	if err := cmd.Start(); err != nil {
		s.t.Fatalf("redistest: start redis-server: %v", err)
	}
	s.mu.Lock()
	s.cmd, s.log = cmd, log
	s.mu.Unlock()
	c := redis.NewClient(&redis.Options{Addr: s.Addr, MaxRetries: -1, DialTimeout: time.Second})
	defer c.Close()
	deadline := time.Now().Add(startTimeout)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		err := c.Ping(ctx).Err()
		cancel()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			s.Kill()
			s.t.Fatalf("redistest: redis-server on %s did not answer within %v: %v\n%s", s.Addr, startTimeout, err, log.String())
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// Kill stops the server with SIGKILL (no shutdown, no save) and waits for
// the process to end. Killing a stopped server does nothing.
func (s *Server) Kill() {
	s.mu.Lock()
	cmd := s.cmd
	s.cmd = nil
	s.mu.Unlock()
	if cmd == nil {
		return
	}
	_ = cmd.Process.Signal(syscall.SIGKILL)
	_ = cmd.Wait()
}

// Restart starts the server again on the same port, empty (it had no
// persistence). It kills the running one first, if any.
func (s *Server) Restart() {
	s.t.Helper()
	s.Kill()
	s.start(binary(s.t))
}

// Log returns what the server printed so far.
func (s *Server) Log() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.log == nil {
		return ""
	}
	return s.log.String()
}

// StartCluster runs a Redis Cluster of n masters (no replicas) on loopback,
// waits until it serves every slot, and returns the seed addresses.
func StartCluster(t testing.TB, n int) []string {
	t.Helper()
	bin := binary(t)
	cli, err := exec.LookPath("redis-cli")
	if err != nil {
		if v, _ := strconv.ParseBool(os.Getenv("CI")); v {
			t.Fatalf("redistest: redis-cli is required under CI=true: %v", err)
		}
		t.Skipf("redistest: SKIPPING, NOT A PASS: redis-cli not on PATH (%v)", err)
	}
	addrs := make([]string, n)
	for i := range n {
		port := freePort(t, true)
		dir := t.TempDir()
		s := &Server{Addr: fmt.Sprintf("127.0.0.1:%d", port), t: t, port: port, dir: dir}
		s.args = []string{
			"--port", strconv.Itoa(port), "--bind", "127.0.0.1",
			"--save", "", "--appendonly", "no", "--dir", dir,
			"--daemonize", "no", "--loglevel", "warning",
			"--cluster-enabled", "yes", "--cluster-config-file", filepath.Join(dir, "nodes.conf"),
			"--cluster-node-timeout", "2000",
		}
		s.start(bin)
		t.Cleanup(s.Kill)
		addrs[i] = s.Addr
	}
	args := append([]string{"--cluster", "create"}, addrs...)
	args = append(args, "--cluster-replicas", "0", "--cluster-yes")
	out, err := exec.Command(cli, args...).CombinedOutput()
	if err != nil {
		t.Fatalf("redistest: redis-cli --cluster create: %v\n%s", err, out)
	}
	deadline := time.Now().Add(startTimeout)
	for _, a := range addrs {
		c := redis.NewClient(&redis.Options{Addr: a})
		for {
			info, err := c.ClusterInfo(context.Background()).Result()
			if err == nil && strings.Contains(info, "cluster_state:ok") {
				break
			}
			if time.Now().After(deadline) {
				c.Close()
				t.Fatalf("redistest: cluster node %s not ok within %v: %v %s", a, startTimeout, err, info)
			}
			time.Sleep(50 * time.Millisecond)
		}
		c.Close()
	}
	return addrs
}

// freePort returns a loopback TCP port nobody listens on now; with bus,
// port+10000 (the cluster bus port) is free too.
func freePort(t testing.TB, bus bool) int {
	t.Helper()
	for range 100 {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatalf("redistest: find a free port: %v", err)
		}
		port := l.Addr().(*net.TCPAddr).Port
		l.Close()
		if !bus {
			return port
		}
		if port+10000 > 65535 {
			continue
		}
		if l2, err := net.Listen("tcp", fmt.Sprintf("127.0.0.1:%d", port+10000)); err == nil {
			l2.Close()
			return port
		}
	}
	t.Fatal("redistest: no free port pair for a cluster node")
	return 0
}
