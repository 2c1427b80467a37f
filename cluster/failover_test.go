package cluster

import (
	"context"
	"fmt"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/hushchat/hush/internal/testenv"
	"github.com/hushchat/hush/server/routing/redisroute/redistest"
)

// TestClusterFailoverKill9Relay: three relays on the shared Redis and
// Cassandra, six users two per relay, six conversations that all cross
// relays (10,002 messages). Once a third of them are acknowledged, relay A
// is killed with SIGKILL: its senders and recipients reconnect to B and C
// and resend everything without a SendAck, with the same client ids and
// ciphertext. Every acknowledged message must reach its recipient's
// application exactly once (the recipient drops redeliveries of a server id
// it processed, as the client does), and every message must end up
// acknowledged. Messages whose attempt died with A (a Cassandra claim with
// no write) are taken over by the retry after the store's claim timeout.
func TestClusterFailoverKill9Relay(t *testing.T) {
	r := testenv.NeedRedis(t)
	d := newDeployment(t, r.Addr, r.Prefix)
	d.startKeyserver(true)
	relays := d.startRelays(relayOptions{name: "relay-a"}, relayOptions{name: "relay-b"}, relayOptions{name: "relay-c"})
	rs := &relaySet{urls: []string{relays[0].wsURL(), relays[1].wsURL(), relays[2].wsURL()}}

	const users, perConv = 6, 1667
	devs := make([]*device, users)
	pref := map[*device]int{}
	for i := range devs {
		devs[i] = registerDevice(t, d.keyserver.url(), fmt.Sprintf("user%d", i))
		pref[devs[i]] = i / 2 // users 0,1 on A; 2,3 on B; 4,5 on C
	}
	start := time.Now()
	convs := make([]*conversation, users)
	for i := range convs {
		convs[i] = newConversation(t, i, devs[i], devs[(i+3)%users], perConv) // A→B, A→C, B→C, B→A, C→A, C→B
	}
	t.Logf("encrypted %d messages in %v", users*perConv, time.Since(start))

	var ackedAtKill int64
	inboxes, st := runTraffic(t, runConfig{
		relays: rs, convs: convs, pref: pref, window: 64, timeout: 5 * time.Minute,
		during: func(st *trafficStats) {
			waitUntil(t, 3*time.Minute, "a third of the messages acknowledged", func() bool { return st.acks.Load() >= users*perConv/3 })
			relays[0].kill()
			ackedAtKill = st.acks.Load()
			t.Logf("relay A killed with SIGKILL after %d acknowledged messages", ackedAtKill)
		},
	})
	reordered := checkExactlyOnce(t, convs, inboxes)
	t.Logf("%d messages acknowledged (%d before the kill), %d delivered to the applications, %d redeliveries dropped by server id, %d reconnects, %d arrivals out of send order, in %v",
		st.acks.Load(), ackedAtKill, st.delivered.Load(), st.redelivered.Load(), st.reconnects.Load(), reordered, time.Since(start))
	if st.reconnects.Load() < 2 {
		t.Errorf("only %d reconnects: the two devices on relay A did not fail over", st.reconnects.Load())
	}
	if ackedAtKill >= users*perConv {
		t.Error("everything was acknowledged before the kill: nothing was in flight")
	}
}

// TestClusterRedisRestart: two relays on a private redis-server, which is
// killed (SIGKILL) while messages flow between them and restarted empty
// six seconds later. Sends keep being acknowledged (the queue is in
// Cassandra; doorbells fail fast), recipients keep getting messages through
// the router's fallback polling while Redis is down, and after the restart
// the relays re-register and everything acknowledged is delivered once.
func TestClusterRedisRestart(t *testing.T) {
	rd := redistest.Start(t)
	d := newDeployment(t, rd.Addr, "hush:")
	d.startKeyserver(false) // its limits stay in process: this test is about the relays
	// Leases long enough to outlive the outage: sends need a valid node id.
	relays := d.startRelays(relayOptions{name: "relay-a", lease: "12s"}, relayOptions{name: "relay-b", lease: "12s"})
	rs := &relaySet{urls: []string{relays[0].wsURL(), relays[1].wsURL()}}

	const users, perConv = 4, 300
	devs := make([]*device, users)
	pref := map[*device]int{}
	for i := range devs {
		devs[i] = registerDevice(t, d.keyserver.url(), fmt.Sprintf("user%d", i))
		pref[devs[i]] = i / 2
	}
	convs := make([]*conversation, users)
	for i := range convs {
		convs[i] = newConversation(t, i, devs[i], devs[(i+2)%users], perConv) // all cross relays
	}
	var downAt, upAt time.Time
	var ackedDown, ackedUp int64
	inboxes, st := runTraffic(t, runConfig{
		relays: rs, convs: convs, pref: pref, window: 8, pace: 40 * time.Millisecond, timeout: 3 * time.Minute,
		during: func(st *trafficStats) {
			waitUntil(t, time.Minute, "traffic", func() bool { return st.acks.Load() >= 100 })
			rd.Kill()
			downAt, ackedDown = time.Now(), st.acks.Load()
			time.Sleep(6 * time.Second)
			ackedUp = st.acks.Load()
			rd.Restart()
			upAt = time.Now()
		},
	})
	checkExactlyOnce(t, convs, inboxes)
	during := 0
	for _, in := range inboxes {
		during += in.deliveredBetween(downAt.Add(time.Second), upAt)
	}
	t.Logf("Redis down %v: %d sends acknowledged and %d messages delivered meanwhile; %d acknowledged in all, %d redeliveries dropped",
		upAt.Sub(downAt).Round(time.Millisecond), ackedUp-ackedDown, during, st.acks.Load(), st.redelivered.Load())
	if ackedUp-ackedDown == 0 {
		t.Error("no send was acknowledged while Redis was down")
	}
	if during == 0 {
		t.Error("nothing was delivered while Redis was down: fallback polling did not work")
	}
	for _, p := range relays {
		if p.metric(t, "hush_doorbell_failures_total") == 0 {
			t.Errorf("%s never saw a doorbell fail: the outage went unnoticed", p.name)
		}
		waitUntil(t, 30*time.Second, p.name+" router healthy again", func() bool { return p.metric(t, "hush_router_healthy") == 1 })
	}
}

// TestClusterCassandraOutage: the relays reach Cassandra through a TCP
// proxy of this test's own, which is cut (listener closed, every
// connection dropped) for five seconds while messages flow, then restored
// on the same port. That is a real outage from the relays' point of view,
// without stopping the shared test Cassandra that other packages use at
// the same time. Sends during the outage fail with CODE_UNAVAILABLE; the
// clients retry them with the same client id; nothing acknowledged is lost
// and nothing is stored twice.
func TestClusterCassandraOutage(t *testing.T) {
	r := testenv.NeedRedis(t)
	d := newDeployment(t, r.Addr, r.Prefix)
	d.startKeyserver(true)
	px := startProxy(t, d.cassandraAddr())
	relays := d.startRelays(relayOptions{name: "relay-a", cassandra: px.addr}, relayOptions{name: "relay-b", cassandra: px.addr})
	rs := &relaySet{urls: []string{relays[0].wsURL(), relays[1].wsURL()}}

	const users, perConv = 4, 250
	devs := make([]*device, users)
	pref := map[*device]int{}
	for i := range devs {
		devs[i] = registerDevice(t, d.keyserver.url(), fmt.Sprintf("user%d", i))
		pref[devs[i]] = i / 2
	}
	convs := make([]*conversation, users)
	for i := range convs {
		convs[i] = newConversation(t, i, devs[i], devs[(i+2)%users], perConv)
	}
	var unavailableBefore int64
	inboxes, st := runTraffic(t, runConfig{
		relays: rs, convs: convs, pref: pref, window: 8, pace: 40 * time.Millisecond, timeout: 4 * time.Minute,
		during: func(st *trafficStats) {
			waitUntil(t, time.Minute, "traffic", func() bool { return st.acks.Load() >= 100 })
			unavailableBefore = st.unavailable.Load()
			px.down()
			t.Log("Cassandra cut off from the relays")
			time.Sleep(5 * time.Second)
			px.up(t)
			t.Log("Cassandra reachable again")
		},
	})
	checkExactlyOnce(t, convs, inboxes)
	t.Logf("%d sends answered CODE_UNAVAILABLE and retried, %d acknowledged, %d redeliveries dropped, %d reconnects",
		st.unavailable.Load(), st.acks.Load(), st.redelivered.Load(), st.reconnects.Load())
	if st.unavailable.Load() == unavailableBefore {
		t.Error("no send failed with CODE_UNAVAILABLE during the outage")
	}
}

var nodeIDRE = regexp.MustCompile(`hush-relay listening.* node_id=(\d+)`)

// TestClusterFailoverNodeIDLostExits: another holder takes a relay's
// leased node id (here: the test overwrites the lease in Redis, as a node
// that leased the same id from a Redis that lost its data would). The
// relay must stop minting ids, shut down gracefully — its clients are told
// to reconnect elsewhere — and exit non-zero, so that its restart leases a
// fresh id.
func TestClusterFailoverNodeIDLostExits(t *testing.T) {
	r := testenv.NeedRedis(t)
	d := newDeployment(t, r.Addr, r.Prefix)
	d.startKeyserver(true)
	relay := d.startRelays(relayOptions{name: "relay-a"})[0]
	m := nodeIDRE.FindStringSubmatch(relay.logs.String())
	if m == nil {
		t.Fatalf("no node id in the log:\n%s", relay.logs.String())
	}
	u := registerDevice(t, d.keyserver.url(), "user0")
	conn, err := dialRelay(relay.wsURL(), u.token)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.close()

	rdb := r.Client(t)
	if err := rdb.Set(context.Background(), r.Prefix+"{nodeid}:"+m[1], "another-relay", time.Minute).Err(); err != nil {
		t.Fatal(err)
	}
	select {
	case <-relay.done:
	case <-time.After(time.Minute):
		t.Fatalf("the relay kept running after losing its node id:\n%s", relay.logs.String())
	}
	if code := relay.cmd.ProcessState.ExitCode(); code != 1 {
		t.Fatalf("exit code %d, want 1:\n%s", code, relay.logs.String())
	}
	if !strings.Contains(relay.logs.String(), "node id lease lost") {
		t.Errorf("the relay did not say why it stopped:\n%s", relay.logs.String())
	}
	// Its client was told to go elsewhere before the connection closed.
	select {
	case <-conn.done:
	case <-time.After(10 * time.Second):
		t.Fatal("the client's connection stayed open")
	}
	reconnect := false
	for len(conn.frames) > 0 {
		if f := <-conn.frames; f.GetReconnect() != nil {
			reconnect = true
		}
	}
	if !reconnect {
		t.Error("the client got no Reconnect frame")
	}
}
