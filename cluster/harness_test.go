package cluster

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/hushchat/hush/internal/testenv"
)

// Binaries built once by TestMain.
var bins struct {
	relay, keyserver string
}

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "hush-cluster-bin-")
	if err != nil {
		fmt.Fprintln(os.Stderr, "cluster tests:", err)
		os.Exit(1)
	}
	bins.relay = filepath.Join(dir, "hush-relay")
	bins.keyserver = filepath.Join(dir, "hush-keyserver")
	for bin, pkg := range map[string]string{
		bins.relay:     "github.com/hushchat/hush/cmd/hush-relay",
		bins.keyserver: "github.com/hushchat/hush/cmd/hush-keyserver",
	} {
		if out, err := exec.Command("go", "build", "-o", bin, pkg).CombinedOutput(); err != nil {
			fmt.Fprintf(os.Stderr, "cluster tests: go build %s: %v\n%s", pkg, err, out)
			os.RemoveAll(dir)
			os.Exit(1)
		}
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

// logBuf collects a process's output.
type logBuf struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *logBuf) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *logBuf) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// proc is one hush server process.
type proc struct {
	name string
	cmd  *exec.Cmd
	addr string
	logs *logBuf
	done chan struct{}
}

var listenRE = regexp.MustCompile(`hush-(?:relay|keyserver) listening"? addr=(\S+)`)

// startProc runs bin with args and extra environment (the parent's HUSH_*
// variables are not passed on) and waits until it listens.
func startProc(t testing.TB, name, bin string, args, env []string) *proc {
	t.Helper()
	cmd := exec.Command(bin, args...)
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "HUSH_") && !strings.HasPrefix(kv, "AWS_") {
			cmd.Env = append(cmd.Env, kv)
		}
	}
	cmd.Env = append(cmd.Env, env...)
	p := &proc{name: name, cmd: cmd, logs: &logBuf{}, done: make(chan struct{})}
	stderr, err := cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stdout = p.logs
	if err := cmd.Start(); err != nil {
		t.Fatalf("start %s: %v", name, err)
	}
	addr := make(chan string, 1)
	go func() {
		sc := bufio.NewScanner(io.TeeReader(stderr, p.logs))
		sc.Buffer(make([]byte, 64<<10), 1<<20)
		for sc.Scan() {
			if m := listenRE.FindStringSubmatch(sc.Text()); m != nil {
				select {
				case addr <- m[1]:
				default:
				}
			}
		}
		io.Copy(io.Discard, stderr)
	}()
	go func() {
		cmd.Wait()
		close(p.done)
	}()
	t.Cleanup(func() {
		p.kill()
		if t.Failed() {
			logs := p.logs.String()
			if len(logs) > 16<<10 {
				logs = "…" + logs[len(logs)-16<<10:]
			}
			t.Logf("%s output:\n%s", p.name, logs)
		}
	})
	select {
	case p.addr = <-addr:
	case <-p.done:
		t.Fatalf("%s exited at start (%v):\n%s", name, cmd.ProcessState, p.logs.String())
	case <-time.After(2 * time.Minute):
		t.Fatalf("%s did not start listening:\n%s", name, p.logs.String())
	}
	return p
}

func (p *proc) url() string   { return "http://" + p.addr }
func (p *proc) wsURL() string { return "ws://" + p.addr + "/v1/ws" }

// kill stops the process with SIGKILL (no shutdown at all) and waits.
func (p *proc) kill() {
	p.cmd.Process.Signal(syscall.SIGKILL)
	<-p.done
}

// exited reports whether the process has ended.
func (p *proc) exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// waitReady polls /readyz until it answers 200.
func (p *proc) waitReady(t testing.TB) {
	t.Helper()
	deadline := time.Now().Add(2 * time.Minute)
	for {
		resp, err := http.Get(p.url() + "/readyz")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return
			}
		}
		if p.exited() {
			t.Fatalf("%s exited:\n%s", p.name, p.logs.String())
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s not ready: %v\n%s", p.name, err, p.logs.String())
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// metric reads one unlabelled sample (or the sum over labels) of a metric
// from the process's /metrics.
func (p *proc) metric(t testing.TB, name string) float64 {
	t.Helper()
	resp, err := http.Get(p.url() + "/metrics")
	if err != nil {
		t.Fatalf("%s /metrics: %v", p.name, err)
	}
	defer resp.Body.Close()
	sum := 0.0
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if !strings.HasPrefix(line, name+" ") && !strings.HasPrefix(line, name+"{") {
			continue
		}
		f := strings.Fields(line)
		v, err := strconv.ParseFloat(f[len(f)-1], 64)
		if err == nil {
			sum += v
		}
	}
	return sum
}

// deployment is the shared services of one test: a Redis (prefix), a
// Cassandra keyspace, the internal secret and the key servers' signing
// key.
type deployment struct {
	t         *testing.T
	dir       string
	redis     string // host:port
	prefix    string
	cass      testenv.Cassandra
	secret    string
	keyFile   string
	keyserver *proc
}

// newDeployment claims a Cassandra keyspace and uses redisAddr with prefix
// (testenv.NeedRedis, or a private redis-server).
func newDeployment(t *testing.T, redisAddr, prefix string) *deployment {
	t.Helper()
	d := &deployment{
		t: t, dir: t.TempDir(), redis: redisAddr, prefix: prefix,
		cass: testenv.NeedCassandra(t), secret: "cluster-test-secret",
	}
	d.keyFile = filepath.Join(d.dir, "signing.key")
	return d
}

func (d *deployment) cassandraAddr() string {
	return net.JoinHostPort(d.cass.Hosts[0], strconv.Itoa(d.cass.Port))
}

// startKeyserver starts a hush-keyserver process on the deployment's
// keyspace (and Redis for its rate limits when withRedis), and waits until
// it is ready. The first one started becomes d.keyserver.
func (d *deployment) startKeyserver(withRedis bool, extra ...string) *proc {
	d.t.Helper()
	args := []string{
		"--listen", "127.0.0.1:0",
		"--store", "cassandra:" + d.cassandraAddr() + "/" + d.cass.Keyspace,
		"--signing-key", d.keyFile,
		"--anon-rate", "100000", "--bundle-rate", "100000",
		"--shutdown-grace", "2s",
	}
	if withRedis {
		args = append(args, "--redis", d.redis, "--redis-prefix", d.prefix)
	}
	args = append(args, extra...)
	n := 1
	if d.keyserver != nil {
		n = 2
	}
	p := startProc(d.t, fmt.Sprintf("hush-keyserver-%d", n), bins.keyserver, args, []string{"HUSH_INTERNAL_SECRET=" + d.secret})
	p.waitReady(d.t)
	if d.keyserver == nil {
		d.keyserver = p
	}
	return p
}

// relayOptions vary a relay of the deployment.
type relayOptions struct {
	name      string
	cassandra string   // host:port to reach Cassandra (default the real one)
	env       []string // e.g. HUSH_TESTING_CLOCK_OFFSET
	lease     string   // --node-id-lease (default 4s: a fresh Redis prefix makes the first lease wait that long, plus 2 s)
	extra     []string
}

// startRelay starts a hush-relay process: node id leased from Redis,
// queues in the deployment's keyspace. It does not wait for readiness
// (a fresh lease warms up first); call waitReady.
func (d *deployment) startRelay(o relayOptions) *proc {
	d.t.Helper()
	if o.cassandra == "" {
		o.cassandra = d.cassandraAddr()
	}
	if o.lease == "" {
		o.lease = "4s"
	}
	args := []string{
		"--listen", "127.0.0.1:0",
		"--data", filepath.Join(d.dir, o.name),
		"--keyserver", d.keyserver.url(),
		"--node-id", "auto", "--node-id-lease", o.lease,
		"--redis", d.redis, "--redis-prefix", d.prefix,
		"--cassandra", o.cassandra, "--keyspace", d.cass.Keyspace,
		"--online-window", "3s",
		"--shutdown-grace", "3s",
		"--directory-ttl", "2s",
	}
	args = append(args, o.extra...)
	env := append([]string{"HUSH_INTERNAL_SECRET=" + d.secret}, o.env...)
	return startProc(d.t, o.name, bins.relay, args, env)
}

// startRelays starts the named relays — the first alone, so that only one
// process creates the tables — and waits until all are ready.
func (d *deployment) startRelays(opts ...relayOptions) []*proc {
	d.t.Helper()
	ps := make([]*proc, len(opts))
	ps[0] = d.startRelay(opts[0])
	var wg sync.WaitGroup
	for i := 1; i < len(opts); i++ {
		ps[i] = d.startRelay(opts[i])
	}
	for _, p := range ps {
		wg.Add(1)
		go func() { defer wg.Done(); p.waitReady(d.t) }()
	}
	wg.Wait()
	return ps
}

// tcpProxy forwards a loopback port to a target, and can cut every
// connection and refuse new ones (an outage as the relays see it) and come
// back on the same port.
type tcpProxy struct {
	target string
	addr   string

	mu    sync.Mutex
	ln    net.Listener
	conns map[net.Conn]struct{}
}

func startProxy(t *testing.T, target string) *tcpProxy {
	t.Helper()
	p := &tcpProxy{target: target, addr: "127.0.0.1:0", conns: map[net.Conn]struct{}{}}
	p.up(t)
	t.Cleanup(p.down)
	return p
}

// up starts listening (again, on the same port).
func (p *tcpProxy) up(t *testing.T) {
	t.Helper()
	var ln net.Listener
	var err error
	for range 100 {
		if ln, err = net.Listen("tcp", p.addr); err == nil {
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	if err != nil {
		t.Fatalf("proxy listen %s: %v", p.addr, err)
	}
	p.mu.Lock()
	p.ln, p.addr = ln, ln.Addr().String()
	p.mu.Unlock()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go p.serve(c)
		}
	}()
}

func (p *tcpProxy) serve(c net.Conn) {
	u, err := net.Dial("tcp", p.target)
	if err != nil {
		c.Close()
		return
	}
	p.mu.Lock()
	if p.ln == nil { // cut meanwhile
		p.mu.Unlock()
		c.Close()
		u.Close()
		return
	}
	p.conns[c], p.conns[u] = struct{}{}, struct{}{}
	p.mu.Unlock()
	go func() { io.Copy(u, c); u.Close(); c.Close() }()
	io.Copy(c, u)
	c.Close()
	u.Close()
	p.mu.Lock()
	delete(p.conns, c)
	delete(p.conns, u)
	p.mu.Unlock()
}

// down closes the listener and every connection.
func (p *tcpProxy) down() {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.ln != nil {
		p.ln.Close()
		p.ln = nil
	}
	for c := range p.conns {
		c.Close()
	}
	clear(p.conns)
}

func waitUntil(t *testing.T, timeout time.Duration, what string, ok func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !ok() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", timeout, what)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func ctxTimeout(t *testing.T, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}
