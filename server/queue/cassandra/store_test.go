package cassandra

import (
	"context"
	"sync"
	"testing"
	"time"

	"github.com/hushchat/hush/internal/testenv"
	"github.com/hushchat/hush/server/queue"
	"github.com/hushchat/hush/server/queue/queuetest"
)

// suiteTimeout bounds one Open or truncation in tests.
const suiteTimeout = 2 * time.Minute

// opener runs the conformance suite on one keyspace: schema changes are
// slow on Cassandra, so the tables are created once and every subtest
// starts from truncated tables instead of a new keyspace. A later open in
// the same subtest (the suite's restart check) sees the same data.
func opener(c testenv.Cassandra) queuetest.Opener {
	var mu sync.Mutex
	seen := map[*testing.T]bool{}
	return func(t *testing.T, opts queue.Options) queue.Store {
		t.Helper()
		mu.Lock()
		again := seen[t]
		seen[t] = true
		mu.Unlock()
		ctx, cancel := context.WithTimeout(context.Background(), suiteTimeout)
		defer cancel()
		if !again {
			truncate(t, c)
		}
		s, err := Open(ctx, Config{Hosts: c.Hosts, Port: c.Port, Keyspace: c.Keyspace, Options: opts})
		if err != nil {
			t.Fatalf("Open: %v", err)
		}
		return s
	}
}

// truncate empties every table of the store in c's keyspace (creating them
// first if this is the keyspace's first use).
func truncate(t testing.TB, c testenv.Cassandra) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), suiteTimeout)
	defer cancel()
	s, err := Open(ctx, Config{Hosts: c.Hosts, Port: c.Port, Keyspace: c.Keyspace})
	if err != nil {
		t.Fatalf("Open for truncate: %v", err)
	}
	defer s.Close()
	for _, table := range TableNames() {
		if err := s.s.Query("TRUNCATE " + table).WithContext(ctx).Exec(); err != nil {
			t.Fatalf("truncate %s: %v", table, err)
		}
	}
}

func TestStore(t *testing.T) {
	t.Run("cassandra", func(t *testing.T) {
		c := testenv.NeedCassandra(t)
		queuetest.Run(t, opener(c))
	})
}
