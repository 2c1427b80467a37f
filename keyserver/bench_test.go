package keyserver_test

import (
	"context"
	"testing"
	"time"

	"github.com/hushchat/hush/keyserver"
	"github.com/hushchat/hush/keyserver/ratelimit"
	"github.com/hushchat/hush/keyserver/store/storetest"
)

// BenchmarkBundleFetch is one full bundle fetch over HTTP on loopback
// (token check, rate limit, device list, prekey claim, JSON both ways) on
// SQLite. The first 100 fetches claim one-time keys, the rest get the
// last-resort key.
func BenchmarkBundleFetch(b *testing.B) {
	e := storetest.NewEnv(b, openSQLite(b), func(c *keyserver.Config) {
		c.BundleRate = ratelimit.Rate{Burst: 1 << 30, Per: time.Second}
	})
	ctx := context.Background()
	alice := storetest.Name(b)
	d := storetest.NewDevice(b, 1, 100)
	if _, err := e.Client.Register(ctx, alice, "", d.Client(), d.Sign); err != nil {
		b.Fatal(err)
	}
	bd := storetest.NewDevice(b, 1, 0)
	bob, err := e.Client.Register(ctx, storetest.Name(b), "", bd.Client(), bd.Sign)
	if err != nil {
		b.Fatal(err)
	}
	for b.Loop() {
		if _, err := e.Client.Bundles(ctx, bob.Token, alice, 0); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkLogin is a full challenge–response login over HTTP: challenge,
// XEdDSA signature by the client, verification and token issue.
func BenchmarkLogin(b *testing.B) {
	e := storetest.NewEnv(b, openSQLite(b), nil)
	ctx := context.Background()
	d := storetest.NewDevice(b, 1, 0)
	s, err := e.Client.Register(ctx, storetest.Name(b), "", d.Client(), d.Sign)
	if err != nil {
		b.Fatal(err)
	}
	for b.Loop() {
		if _, err := e.Client.Login(ctx, s.Account, 1, d.Sign); err != nil {
			b.Fatal(err)
		}
	}
}
