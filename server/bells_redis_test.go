package server

import (
	"context"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/hushchat/hush/server/queue"
	"github.com/hushchat/hush/server/routing/redisroute"
	"github.com/hushchat/hush/server/routing/redisroute/redistest"
)

// A real Redis stops answering writes for a while (CLIENT PAUSE WRITE on a
// private redis-server: PUBLISH and scripts wait, PING answers), as an
// overloaded one does: the sending relay's Ring times out. The recipient's
// relay never notices — its router stays healthy, so it does not poll —
// and only the sending relay ringing the kept bell again, once its router
// has recovered, delivers the envelope without a reconnect.
func TestBellRungAgainAfterRedisTimeout(t *testing.T) {
	srv := redistest.Start(t)
	router := func(node string) *redisroute.Router {
		t.Helper()
		c, err := redisroute.NewClient([]string{srv.Addr}, redisroute.ClientOptions{Timeout: 2 * time.Second})
		if err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()
		r, err := redisroute.New(ctx, c, redisroute.Options{
			Prefix: "hush:", Node: node,
			Timeout:        300 * time.Millisecond,
			HealthInterval: 100 * time.Millisecond,
			// Long enough that no registration is refreshed during the
			// pause: the recipient's router must stay healthy.
			RegistrationTTL: 10 * time.Minute,
		})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { r.Close(); c.Close() })
		return r
	}
	ra, rb := router("a"), router("b")
	e := newEnv(t, func(c *Config, _ *queue.Options) { c.Router = rb }) // relay B: alice
	_, urlA := secondRelay(t, e, ra, 2, nil)                            // relay A: bob
	e.dir.set("alice", 1)
	e.dir.set("bob", 1)
	bob := e.connectURL(urlA, "bob", 1)
	bob.nextOf("QueueEmpty")
	alice := e.connect("alice", 1)
	alice.nextOf("QueueEmpty")

	// A bell that works, first.
	ack := alice.sendAndAck(sendTo(newClientID(), []byte("before"), dev("bob", 1)))
	if ack.Error != nil {
		t.Fatal(ack.Error)
	}
	if envs := bob.nextOf("Deliver").GetDeliver().Envelopes; len(envs) != 1 || envs[0].ServerId != ack.ServerId {
		t.Fatalf("bob got %v, want %d", envs, ack.ServerId)
	}
	bob.ack(ack.ServerId)

	admin := redis.NewClient(&redis.Options{Addr: srv.Addr})
	t.Cleanup(func() { admin.Close() })
	const pause = 1500 * time.Millisecond
	if err := admin.Do(context.Background(), "CLIENT", "PAUSE", pause.Milliseconds(), "WRITE").Err(); err != nil {
		t.Fatal(err)
	}
	ack = alice.sendAndAck(sendTo(newClientID(), []byte("during"), dev("bob", 1)))
	if ack.Error != nil {
		t.Fatal(ack.Error)
	}
	waitUntil(t, "the ring to fail", func() bool { return counter(t, e, "hush_doorbell_failures_total", "") >= 1 })
	if !ra.Healthy() {
		t.Fatal("the recipient's router became unhealthy: its polling, not the retry, would deliver")
	}
	envs := bob.nextOf("Deliver").GetDeliver().Envelopes
	if len(envs) != 1 || envs[0].ServerId != ack.ServerId {
		t.Fatalf("bob got %v, want %d", envs, ack.ServerId)
	}
	waitUntil(t, "the retry counted", func() bool { return counter(t, e, "hush_doorbell_retries_total", "") >= 1 })
	if st := ra.Stats(); st.BellsPolled != 0 {
		t.Fatalf("the recipient's router polled %d devices: it saw an outage", st.BellsPolled)
	}
}
