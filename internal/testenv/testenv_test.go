package testenv

import (
	"fmt"
	"net"
	"regexp"
	"strings"
	"testing"
)

// Keyspace names: unquoted CQL identifiers Cassandra accepts for keyspaces.
var keyspaceRE = regexp.MustCompile(`^[a-z][a-z0-9_]{0,47}$`)

// validBucket applies the S3 bucket naming rules (general purpose buckets).
func validBucket(s string) error {
	if len(s) < 3 || len(s) > 63 {
		return fmt.Errorf("length %d not in [3, 63]", len(s))
	}
	if !regexp.MustCompile(`^[a-z0-9][a-z0-9.-]*[a-z0-9]$`).MatchString(s) {
		return fmt.Errorf("characters or ends")
	}
	if strings.Contains(s, "..") || net.ParseIP(s) != nil ||
		strings.HasPrefix(s, "xn--") || strings.HasPrefix(s, "sthree-") ||
		strings.HasSuffix(s, "-s3alias") || strings.HasSuffix(s, "--ol-s3") {
		return fmt.Errorf("reserved form")
	}
	return nil
}

func TestNamesAreValidForEveryService(t *testing.T) {
	names := []string{
		"TestX",
		"TestQueue/Cassandra/ack_deletes",
		"Test_With__Many___Underscores_",
		"TestÜnicode/日本語/ok",
		"Test" + strings.Repeat("VeryLongName", 20),
		"Test/-/-/-",
		"",
	}
	const suffix = "0123456789ab"
	for _, n := range names {
		ks := buildName(n, suffix, '_', 48)
		if !keyspaceRE.MatchString(ks) {
			t.Errorf("keyspace for %q = %q: not a valid keyspace name", n, ks)
		}
		b := buildName(n, suffix, '-', 63)
		if err := validBucket(b); err != nil {
			t.Errorf("bucket for %q = %q: %v", n, b, err)
		}
		p := buildName(n, suffix, ':', 64)
		if !regexp.MustCompile(`^[a-z0-9:]+$`).MatchString(p) || len(p) > 64 {
			t.Errorf("redis prefix for %q = %q: want [a-z0-9:]{1,64} (safe in a SCAN pattern)", n, p)
		}
		for _, got := range []string{ks, b, p} {
			if !strings.HasSuffix(got, suffix) {
				t.Errorf("name %q lost its random suffix %q", got, suffix)
			}
		}
	}
}

func TestBuildNameKeepsTheTestRecognizable(t *testing.T) {
	if got, want := buildName("TestQueue/Cassandra", "abc", '_', 48), "t_testqueue_cassandra_abc"; got != want {
		t.Errorf("buildName = %q, want %q", got, want)
	}
	if got, want := buildName("TestQueue/Cassandra", "abc", '-', 63), "t-testqueue-cassandra-abc"; got != want {
		t.Errorf("buildName = %q, want %q", got, want)
	}
}

func TestUniqueNamesDiffer(t *testing.T) {
	seen := map[string]bool{}
	for range 100 {
		n := uniqueName(t, '_', 48)
		if seen[n] {
			t.Fatalf("uniqueName repeated %q", n)
		}
		seen[n] = true
	}
}

func TestParseCassandraHosts(t *testing.T) {
	for _, tc := range []struct {
		in    string
		hosts []string
		port  int
	}{
		{"127.0.0.1:9042", []string{"127.0.0.1"}, 9042},
		{"127.0.0.1:19042", []string{"127.0.0.1"}, 19042},
		{"a,b", []string{"a", "b"}, 9042},
		{"a:9100, b:9100", []string{"a", "b"}, 9100},
		{"a:9100,b", []string{"a", "b"}, 9100},
		{"[::1]:9042", []string{"::1"}, 9042},
	} {
		hosts, port, err := ParseCassandraHosts(tc.in)
		if err != nil {
			t.Errorf("ParseCassandraHosts(%q): %v", tc.in, err)
			continue
		}
		if strings.Join(hosts, ",") != strings.Join(tc.hosts, ",") || port != tc.port {
			t.Errorf("ParseCassandraHosts(%q) = %v, %d; want %v, %d", tc.in, hosts, port, tc.hosts, tc.port)
		}
	}
	for _, bad := range []string{"", "a,,b", "a:1,b:2", "a:x", "a:0", "a:70000", ":9042"} {
		if hosts, port, err := ParseCassandraHosts(bad); err == nil {
			t.Errorf("ParseCassandraHosts(%q) = %v, %d; want an error", bad, hosts, port)
		}
	}
}

// recorder is a testing.TB that records Fatalf and Skipf instead of
// stopping, to check which one unavailable picks.
type recorder struct {
	testing.TB
	fatal, skip string
}

func (r *recorder) Helper()                        {}
func (r *recorder) Fatalf(format string, a ...any) { r.fatal = fmt.Sprintf(format, a...) }
func (r *recorder) Skipf(format string, a ...any)  { r.skip = fmt.Sprintf(format, a...) }

func TestUnavailableFailsInCIAndSkipsElsewhere(t *testing.T) {
	ci := &recorder{TB: t}
	unavailable(ci, true, "Redis", EnvRedis+" is not set")
	if ci.fatal == "" || ci.skip != "" {
		t.Fatalf("under CI: fatal=%q skip=%q; want a failure, no skip", ci.fatal, ci.skip)
	}
	for _, want := range []string{"Redis", EnvRedis, "make testenv-up"} {
		if !strings.Contains(ci.fatal, want) {
			t.Errorf("CI failure %q does not mention %q", ci.fatal, want)
		}
	}

	dev := &recorder{TB: t}
	unavailable(dev, false, "S3", EnvS3Endpoint+" is not set")
	if dev.skip == "" || dev.fatal != "" {
		t.Fatalf("outside CI: fatal=%q skip=%q; want a skip, no failure", dev.fatal, dev.skip)
	}
	for _, want := range []string{"NOT A PASS", EnvS3Endpoint, "make test"} {
		if !strings.Contains(dev.skip, want) {
			t.Errorf("skip message %q does not mention %q", dev.skip, want)
		}
	}
}

func TestLookupMissingVariableUnderCI(t *testing.T) {
	t.Setenv("CI", "true")
	t.Setenv(EnvRedis, "")
	r := &recorder{TB: t}
	lookup(r, "Redis", EnvRedis)
	if !strings.Contains(r.fatal, EnvRedis) {
		t.Fatalf("lookup of an unset variable under CI=true: fatal=%q skip=%q", r.fatal, r.skip)
	}
}

func TestCheckersReportADeadServer(t *testing.T) {
	// A port nobody listens on: bind one, then close it.
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	port := l.Addr().(*net.TCPAddr).Port
	l.Close()

	ctx := t.Context()
	if err := CheckRedis(ctx, addr); err == nil {
		t.Error("CheckRedis on a closed port succeeded")
	}
	if _, err := CheckCassandra(ctx, []string{"127.0.0.1"}, port); err == nil {
		t.Error("CheckCassandra on a closed port succeeded")
	}
	if err := CheckS3(ctx, S3{Endpoint: "http://" + addr, AccessKey: "a", SecretKey: "b"}); err == nil {
		t.Error("CheckS3 on a closed port succeeded")
	}
}
