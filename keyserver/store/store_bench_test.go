package store_test

import (
	"context"
	"path/filepath"
	"testing"

	"github.com/hushchat/hush/internal/testenv"
	"github.com/hushchat/hush/keyserver/store/cassandra"
	"github.com/hushchat/hush/keyserver/store/sqlite"
	"github.com/hushchat/hush/keyserver/store/storetest"
)

func BenchmarkClaim(b *testing.B) {
	b.Run("sqlite", func(b *testing.B) {
		st, err := sqlite.Open(context.Background(), filepath.Join(b.TempDir(), "keys.db"))
		if err != nil {
			b.Fatal(err)
		}
		defer st.Close()
		storetest.BenchmarkClaim(b, st)
	})
	b.Run("cassandra", func(b *testing.B) {
		c := testenv.NeedCassandra(b)
		st, err := cassandra.Open(context.Background(), cassandra.Options{Hosts: c.Hosts, Port: c.Port, Keyspace: c.Keyspace})
		if err != nil {
			b.Fatal(err)
		}
		defer st.Close()
		storetest.BenchmarkClaim(b, st)
	})
}
