package cluster

import (
	"errors"
	"fmt"
	"net/http"
	"sync"
	"testing"
	"time"

	"github.com/hushchat/hush/crypto"
	"github.com/hushchat/hush/internal/testenv"
	"github.com/hushchat/hush/keyserver/ksclient"
)

// TestClusterKeyServersClaimOnce: two hush-keyserver processes on one
// Cassandra keyspace. A target device holds 500 one-time prekeys; 1,000
// bundle fetches run concurrently, half against each node. Every one-time
// prekey is handed out exactly once (Cassandra lightweight transactions
// across processes) and the other 500 fetches get the last-resort key.
// Then the two nodes' rate limits, kept in Redis, prove shared: the
// anonymous-call budget is spent across both nodes, not per node.
func TestClusterKeyServersClaimOnce(t *testing.T) {
	r := testenv.NeedRedis(t)
	d := newDeployment(t, r.Addr, r.Prefix)
	const anonBudget = 40
	limits := []string{"--anon-rate", fmt.Sprint(anonBudget), "--anon-rate-window", "1h"}
	ks1 := d.startKeyserver(true, limits...)
	ks2 := d.startKeyserver(true, limits...)
	ctx := ctxTimeout(t, 3*time.Minute)

	target := registerDevice(t, ks1.url(), "target") // 10 one-time prekeys
	const oneTime = 500
	var uploaded []ksclient.PreKey
	for start := uint32(1000); len(uploaded)+10 < oneTime; start += 100 {
		pks, _, err := crypto.GeneratePreKeys(start, 100)
		if err != nil {
			t.Fatal(err)
		}
		batch := make([]ksclient.PreKey, 0, 100)
		for _, p := range pks[:min(100, oneTime-10-len(uploaded))] {
			batch = append(batch, ksclient.PreKey{ID: p.Public().ID, PublicKey: p.Public().PublicKey})
		}
		if _, err := target.ks.UploadPreKeys(ctx, target.token, batch); err != nil {
			t.Fatalf("upload prekeys: %v", err)
		}
		uploaded = append(uploaded, batch...)
	}
	requesters := []*device{registerDevice(t, ks1.url(), "asker1"), registerDevice(t, ks2.url(), "asker2")}
	nodes := []*ksclient.Client{mustKS(t, ks1.url()), mustKS(t, ks2.url())}

	const fetches = 1000
	var mu sync.Mutex
	handed := map[uint32]int{}
	lastResort := 0
	var errs []error
	var wg sync.WaitGroup
	sem := make(chan struct{}, 64)
	for i := range fetches {
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer func() { <-sem; wg.Done() }()
			asker := requesters[i%2]
			bs, err := nodes[(i/2)%2].Bundles(ctx, asker.token, "target", 1)
			mu.Lock()
			defer mu.Unlock()
			if err != nil || len(bs) != 1 {
				errs = append(errs, fmt.Errorf("fetch %d: %v (%d bundles)", i, err, len(bs)))
				return
			}
			if bs[0].LastResort {
				lastResort++
			} else {
				handed[bs[0].PreKey.ID]++
			}
		}()
	}
	wg.Wait()
	for _, err := range errs[:min(len(errs), 5)] {
		t.Error(err)
	}
	for id, n := range handed {
		if n > 1 {
			t.Errorf("one-time prekey %d handed out %d times", id, n)
		}
	}
	if len(handed) != oneTime || lastResort != fetches-oneTime {
		t.Errorf("%d distinct one-time prekeys and %d last-resort answers, want %d and %d", len(handed), lastResort, oneTime, fetches-oneTime)
	}
	t.Logf("%d fetches over two key servers: %d one-time prekeys each handed out once, %d last-resort", fetches, len(handed), lastResort)

	// Shared limits: the registrations above spent part of this address's
	// anonymous budget; challenges alternating between the nodes spend the
	// rest, and then both refuse. Per-node buckets would allow about
	// twice as many.
	allowed, refusedBy := 0, map[int]bool{}
	for i := 0; i < 4*anonBudget && len(refusedBy) < 2; i++ {
		_, err := nodes[i%2].Challenge(ctx)
		switch {
		case err == nil:
			allowed++
		case isRateLimited(err):
			refusedBy[i%2] = true
		default:
			t.Fatalf("challenge: %v", err)
		}
	}
	const spent = 3 * 2 // three registrations, each a challenge and a register call
	if len(refusedBy) != 2 || spent+allowed > anonBudget+1 {
		t.Fatalf("%d challenges allowed after %d calls, refused by %d nodes: the budget of %d is not shared", allowed, spent, len(refusedBy), anonBudget)
	}
}

func mustKS(t *testing.T, url string) *ksclient.Client {
	c, err := ksclient.New(url)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func isRateLimited(err error) bool {
	var e *ksclient.Error
	return errors.As(err, &e) && e.Status == http.StatusTooManyRequests
}
