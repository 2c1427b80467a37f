package app

import (
	"context"
	"fmt"
	"log/slog"
	"testing"
	"time"

	"github.com/hushchat/hush/internal/testenv"
	"github.com/hushchat/hush/server/queue"
)

// With --cassandra-replication the relay opens an admin session to create
// the keyspace and then its own session; gocql panics if both share one
// token-aware host policy, as they once did.
func TestOpenCassandraCreatesKeyspace(t *testing.T) {
	c := testenv.NeedCassandra(t)
	keyspace := "r" + c.Keyspace[len(c.Keyspace)-12:] // one the relay must create itself
	defer func() {
		s := c.Session(t)
		s.Query("DROP KEYSPACE IF EXISTS " + keyspace).Exec()
	}()
	hosts := make([]string, len(c.Hosts))
	for i, h := range c.Hosts {
		hosts[i] = fmt.Sprintf("%s:%d", h, c.Port)
	}
	a := &App{}
	defer func() {
		for i := len(a.closers) - 1; i >= 0; i-- {
			a.closers[i].Close()
		}
	}()
	o := ClusterOptions{Cassandra: hosts, Keyspace: keyspace,
		Replication: "{'class': 'SimpleStrategy', 'replication_factor': 1}"}
	st, _, err := openCassandra(context.Background(), a, o, 100, time.Now, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatalf("open with keyspace creation: %v", err)
	}
	if n, err := st.Depth(context.Background(), queue.Device{Account: "bob", ID: 1}); err != nil || n != 0 {
		t.Fatalf("depth of a new queue: %d, %v", n, err)
	}
}
