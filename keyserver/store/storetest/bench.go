package storetest

import (
	"context"
	"testing"

	"github.com/hushchat/hush/keyserver/store"
)

// BenchmarkClaim measures ClaimPreKey on st: each iteration claims one
// one-time prekey (refilled in batches of 100 outside the timer), b.N
// iterations spread over the benchmark's goroutines (b.SetParallelism).
func BenchmarkClaim(b *testing.B, st store.Store) {
	ctx := context.Background()
	name := Name(b)
	d := NewDevice(b, 1, 0)
	if err := st.CreateAccount(ctx, name, d.Keys, t0); err != nil {
		b.Fatal(err)
	}
	keys := PreKeys(b, 1, 100)
	next := uint32(1)
	refill := func() {
		for i := range keys {
			keys[i].ID = next
			next++
		}
		if err := st.AddOneTimePreKeys(ctx, name, 1, keys, 1<<30); err != nil {
			b.Fatal(err)
		}
	}
	b.ResetTimer()
	for i := 0; i < b.N; i += 100 {
		b.StopTimer()
		refill()
		b.StartTimer()
		n := min(100, b.N-i)
		for range n {
			c, err := st.ClaimPreKey(ctx, name, 1)
			if err != nil || c.LastResort {
				b.Fatalf("claim: %+v, %v", c, err)
			}
		}
	}
}
