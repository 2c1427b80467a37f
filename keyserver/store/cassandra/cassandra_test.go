package cassandra_test

import (
	"context"
	"sync"
	"testing"
	"time"

	"github.com/hushchat/hush/internal/testenv"
	"github.com/hushchat/hush/keyserver/store"
	"github.com/hushchat/hush/keyserver/store/cassandra"
	"github.com/hushchat/hush/keyserver/store/storetest"
)

// TestClaimsAcrossNodes runs concurrent claims through several Store
// instances, each with its own session — what several key server
// processes do. Their local locks do not see each other, so only the
// lightweight transaction keeps the claims exact.
func TestClaimsAcrossNodes(t *testing.T) {
	const nodes, keys, claims = 4, 60, 240
	c := testenv.NeedCassandra(t)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	var sts []store.Store
	for range nodes {
		st, err := cassandra.Open(ctx, cassandra.Options{Hosts: c.Hosts, Port: c.Port, Keyspace: c.Keyspace})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { st.Close() })
		sts = append(sts, st)
	}
	name := storetest.Name(t)
	d := storetest.NewDevice(t, 1, keys)
	if err := sts[0].CreateAccount(ctx, name, d.Keys, time.Now()); err != nil {
		t.Fatal(err)
	}
	var (
		wg         sync.WaitGroup
		mu         sync.Mutex
		got        = map[uint32]int{}
		lastResort int
	)
	start := make(chan struct{})
	for i := range claims {
		wg.Add(1)
		go func() {
			defer wg.Done()
			<-start
			cl, err := sts[i%nodes].ClaimPreKey(ctx, name, 1)
			mu.Lock()
			defer mu.Unlock()
			switch {
			case err != nil:
				t.Errorf("claim: %v", err)
			case cl.LastResort:
				lastResort++
			default:
				got[cl.Key.ID]++
			}
		}()
	}
	close(start)
	wg.Wait()
	for id, n := range got {
		if n != 1 {
			t.Errorf("key %d handed out %d times", id, n)
		}
	}
	if len(got) != keys || lastResort != claims-keys {
		t.Fatalf("%d distinct keys, %d last resort; want %d and %d", len(got), lastResort, keys, claims-keys)
	}
}

func TestOpenValidates(t *testing.T) {
	for _, o := range []cassandra.Options{
		{},
		{Hosts: []string{"127.0.0.1"}},
		{Hosts: []string{"127.0.0.1"}, Keyspace: "Bad-Name"},
		{Hosts: []string{"127.0.0.1"}, Keyspace: "x; DROP KEYSPACE y"},
	} {
		if _, err := cassandra.Open(context.Background(), o); err == nil {
			t.Errorf("Open(%+v) accepted", o)
		}
	}
}
