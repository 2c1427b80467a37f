// Command testenv-probe answers the questions scripts/testenv/up asks while
// it brings the test services up. It exists so the script's notion of
// "ready" is the same code the tests use (package testenv's Check*
// functions), with the same client libraries.
//
// Usage:
//
//	testenv-probe freeport PREF...       print one free TCP port on 127.0.0.1 per
//	                                     argument: PREF itself when it is free,
//	                                     else any free port (0: any); all distinct
//	testenv-probe redis HOST:PORT        PING
//	testenv-probe cassandra HOST:PORT    SELECT release_version FROM system.local (prints it)
//	testenv-probe s3 ENDPOINT            signed ListBuckets; keys from HUSH_TEST_S3_ACCESS_KEY
//	                                     and HUSH_TEST_S3_SECRET_KEY (never on the command line)
//
// Each probe makes one attempt bounded by -timeout and exits 0 on success,
// 1 with the reason on stderr otherwise; the script does the polling, so it
// can also notice a server process that died and show its log.
package main

import (
	"context"
	"flag"
	"fmt"
	"net"
	"os"
	"strconv"
	"time"

	"github.com/hushchat/hush/internal/testenv"
)

func main() {
	timeout := flag.Duration("timeout", 10*time.Second, "bound on one probe attempt")
	flag.Usage = func() {
		fmt.Fprintln(os.Stderr, "usage: testenv-probe [-timeout D] freeport PREF... | redis ADDR | cassandra ADDR | s3 ENDPOINT")
		flag.PrintDefaults()
	}
	flag.Parse()
	if err := run(*timeout, flag.Args()); err != nil {
		fmt.Fprintln(os.Stderr, "testenv-probe:", err)
		os.Exit(1)
	}
}

func run(timeout time.Duration, args []string) error {
	if len(args) == 0 {
		flag.Usage()
		return fmt.Errorf("no probe named")
	}
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	switch cmd := args[0]; {
	case cmd == "freeport" && len(args) >= 2:
		ports, err := freePorts(args[1:])
		if err != nil {
			return err
		}
		for _, p := range ports {
			fmt.Println(p)
		}
		return nil
	case cmd == "redis" && len(args) == 2:
		return testenv.CheckRedis(ctx, args[1])
	case cmd == "cassandra" && len(args) == 2:
		hosts, port, err := testenv.ParseCassandraHosts(args[1])
		if err != nil {
			return fmt.Errorf("cassandra address %q: %w", args[1], err)
		}
		version, err := testenv.CheckCassandra(ctx, hosts, port)
		if err != nil {
			return err
		}
		fmt.Println(version)
		return nil
	case cmd == "s3" && len(args) == 2:
		s := testenv.S3{
			Endpoint:  args[1],
			Region:    os.Getenv(testenv.EnvS3Region),
			AccessKey: os.Getenv(testenv.EnvS3AccessKey),
			SecretKey: os.Getenv(testenv.EnvS3SecretKey),
		}
		if s.AccessKey == "" || s.SecretKey == "" {
			return fmt.Errorf("s3 probe: %s and %s must be set", testenv.EnvS3AccessKey, testenv.EnvS3SecretKey)
		}
		return testenv.CheckS3(ctx, s)
	default:
		flag.Usage()
		return fmt.Errorf("unknown probe or wrong arguments: %q", args)
	}
}

// freePorts returns one unused loopback port per preference: the
// preferred port when it can be bound (so a restarted service keeps its
// address, and Cassandra gets 9042 when nobody else has it), any free port
// otherwise. All listeners stay open until every port is chosen, so the
// ports are distinct. They are free when this returns; the caller binds
// them moments later, and up checks that the service really came up.
func freePorts(prefs []string) ([]int, error) {
	var ports []int
	for _, p := range prefs {
		pref, err := strconv.Atoi(p)
		if err != nil || pref < 0 || pref > 65535 {
			return nil, fmt.Errorf("freeport: bad port %q", p)
		}
		var l net.Listener
		if pref != 0 {
			l, err = net.Listen("tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(pref)))
		}
		if pref == 0 || err != nil {
			l, err = net.Listen("tcp", "127.0.0.1:0")
		}
		if err != nil {
			return nil, fmt.Errorf("find a free port: %w", err)
		}
		defer l.Close()
		ports = append(ports, l.Addr().(*net.TCPAddr).Port)
	}
	return ports, nil
}
