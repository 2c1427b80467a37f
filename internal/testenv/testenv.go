// Package testenv hands integration tests the real Redis, Cassandra and S3
// servers that scripts/testenv/up starts (make testenv-up, make test).
//
// The servers are shared by every test package of one `go test ./...` run,
// and packages run in parallel, so each Need* call carves out a namespace
// of its own and removes it when the test ends:
//
//   - NeedRedis gives a key/channel prefix unique to the test, and deletes
//     every key under it in t.Cleanup;
//   - NeedCassandra creates a fresh keyspace (SimpleStrategy, RF 1) and
//     drops it in t.Cleanup;
//   - NeedS3 creates a fresh bucket and empties and removes it in t.Cleanup.
//
// The addresses come from the HUSH_TEST_* variables that scripts/testenv/up
// writes to .testenv/env and `make test` exports. A service that is not
// configured, or configured but not answering, is a test failure when
// CI=true (a CI run must never pass by skipping its integration tests) and a
// loud skip otherwise, so `go test ./...` on a laptop without the services
// still runs every unit test.
//
// Nothing here mocks a service: every helper talks to the real server with
// the client library production code uses (go-redis/v9, gocql,
// aws-sdk-go-v2). The Check* functions are the same readiness probes
// scripts/testenv/up polls through cmd/testenv-probe, so "up says ready" and
// "a test can use it" mean the same thing.
package testenv

import (
	"crypto/rand"
	"encoding/hex"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"
)

// Names of the variables scripts/testenv/up writes to .testenv/env.
const (
	EnvRedis       = "HUSH_TEST_REDIS"         // host:port
	EnvCassandra   = "HUSH_TEST_CASSANDRA"     // host:port, or host1,host2[:port]
	EnvS3Endpoint  = "HUSH_TEST_S3_ENDPOINT"   // http://127.0.0.1:PORT
	EnvS3AccessKey = "HUSH_TEST_S3_ACCESS_KEY" //
	EnvS3SecretKey = "HUSH_TEST_S3_SECRET_KEY" //
	EnvS3Region    = "HUSH_TEST_S3_REGION"     // optional, default DefaultS3Region
)

// DefaultS3Region is the region tests sign with when HUSH_TEST_S3_REGION is
// unset; versitygw serves us-east-1 unless told otherwise.
const DefaultS3Region = "us-east-1"

// checkTimeout bounds each readiness check a Need* call makes. It is
// generous because a loaded 2-core CI machine can stall a JVM for seconds;
// it is not a performance assertion.
const checkTimeout = 20 * time.Second

// inCI reports whether the CI variable says this is a CI run, where a
// missing service must fail the test instead of skipping it.
func inCI() bool {
	v, err := strconv.ParseBool(os.Getenv("CI"))
	return err == nil && v
}

// unavailable stops the test because service cannot be used: Fatal in CI,
// a loud Skip elsewhere. why says what is wrong (a missing variable, a
// server that does not answer).
func unavailable(t testing.TB, ci bool, service, why string) {
	t.Helper()
	if ci {
		t.Fatalf("testenv: %s is required under CI=true but %s; start it with `make testenv-up` "+
			"and export .testenv/env (`make test` does both)", service, why)
		return
	}
	t.Skipf("testenv: SKIPPING %s test, NOT A PASS: %s. To run it: `make test`, or `make testenv-up` then "+
		"`set -a; . ./.testenv/env; set +a; go test ./...`", service, why)
}

// lookup returns the value of the environment variable name, or stops the
// test through unavailable when it is missing.
func lookup(t testing.TB, service, name string) string {
	t.Helper()
	v := strings.TrimSpace(os.Getenv(name))
	if v == "" {
		unavailable(t, inCI(), service, name+" is not set")
	}
	return v
}

// uniqueName returns a name for the running test made of a sanitized,
// truncated form of t.Name() and 12 random hex digits, joined with sep.
// The result uses only [a-z0-9] and sep, starts with "t" and is at most
// maxLen long; the random part keeps names unique across parallel tests,
// packages and repeated runs against the same long-lived servers.
func uniqueName(t testing.TB, sep byte, maxLen int) string {
	t.Helper()
	var rnd [6]byte
	if _, err := rand.Read(rnd[:]); err != nil {
		t.Fatalf("testenv: random name: %v", err)
	}
	suffix := hex.EncodeToString(rnd[:])
	return buildName(t.Name(), suffix, sep, maxLen)
}

// buildName is uniqueName without the randomness, for tests.
func buildName(testName, suffix string, sep byte, maxLen int) string {
	var b strings.Builder
	b.WriteByte('t')
	b.WriteByte(sep)
	lastSep := true
	for _, r := range strings.ToLower(testName) {
		switch {
		case r >= 'a' && r <= 'z', r >= '0' && r <= '9':
			b.WriteRune(r)
			lastSep = false
		case !lastSep:
			b.WriteByte(sep)
			lastSep = true
		}
	}
	name := strings.TrimRight(b.String(), string(sep))
	if room := maxLen - len(suffix) - 1; len(name) > room {
		name = strings.TrimRight(name[:room], string(sep))
	}
	return name + string(sep) + suffix
}
