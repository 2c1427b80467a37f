package store_test

import (
	"context"
	"path/filepath"
	"sync"
	"testing"

	"github.com/hushchat/hush/internal/testenv"
	"github.com/hushchat/hush/keyserver/store"
	"github.com/hushchat/hush/keyserver/store/cassandra"
	"github.com/hushchat/hush/keyserver/store/sqlite"
	"github.com/hushchat/hush/keyserver/store/storetest"
)

// TestStore runs the conformance suite on every backend, as subtests named
// by backend.
func TestStore(t *testing.T) {
	t.Run("sqlite", func(t *testing.T) {
		storetest.Run(t, func(t *testing.T) store.Store {
			st, err := sqlite.Open(context.Background(), filepath.Join(t.TempDir(), "keys.db"))
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { st.Close() })
			return st
		})
	})
	t.Run("cassandra", func(t *testing.T) {
		// One keyspace for the whole suite (schema changes are slow on
		// Cassandra); every subtest uses fresh account names. The store is
		// opened through Open, as the binary does, so keyspace and schema
		// creation are exercised too.
		c := testenv.NeedCassandra(t)
		var (
			once sync.Once
			st   *cassandra.Store
			err  error
		)
		storetest.Run(t, func(t *testing.T) store.Store {
			once.Do(func() {
				st, err = cassandra.Open(context.Background(), cassandra.Options{Hosts: c.Hosts, Port: c.Port, Keyspace: c.Keyspace})
			})
			if err != nil {
				t.Fatal(err)
			}
			return st
		})
		if st != nil {
			st.Close()
		}
	})
}
