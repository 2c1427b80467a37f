package redisroute

import (
	"context"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/hushchat/hush/server/queue"
	"github.com/hushchat/hush/server/routing"
	"github.com/hushchat/hush/server/routing/redisroute/redistest"
)

// The doorbell benchmarks compare the two designs the scale-out issue asks
// about, on one private redis-server so that its CPU can be read from
// INFO (reported as redis-µs/op):
//
//   - per-node (this package): a registration key per device, one channel
//     per relay node; Ring = MGET + one PUBLISH per target node.
//   - per-user (the seed's sketch): each node SUBSCRIBEs one channel per
//     attached device; Ring = one PUBLISH per bell, attached = receivers>0.
//
// Both deliver 1,000 bells to 1,000 devices spread over 3 receiving nodes
// from a 4th node, and an op ends when all receivers have every bell.

const (
	benchDevices = 1000
	benchNodes   = 3
)

// counter counts delivered bells and wakes a waiter at a target.
type counter struct {
	// memPerDevice is the Redis memory the setup used per attached device.
	memPerDevice float64

	n      atomic.Int64
	mu     sync.Mutex
	target int64
	done   chan struct{}
}

func (c *counter) add(k int64) {
	v := c.n.Add(k)
	c.mu.Lock()
	if c.done != nil && v >= c.target {
		close(c.done)
		c.done = nil
	}
	c.mu.Unlock()
}

func (c *counter) expect(total int64) chan struct{} {
	ch := make(chan struct{})
	c.mu.Lock()
	if c.n.Load() >= total {
		close(ch)
	} else {
		c.target, c.done = total, ch
	}
	c.mu.Unlock()
	return ch
}

func (c *counter) Ring(routing.Bell)          { c.add(1) }
func (c *counter) Evict(queue.Device, uint64) {}

func waitBells(b *testing.B, ch chan struct{}) {
	select {
	case <-ch:
	case <-time.After(30 * time.Second):
		b.Fatal("bells did not arrive")
	}
}

func benchDevice(i int) queue.Device {
	return queue.Device{Account: fmt.Sprintf("user%04d", i), ID: 1}
}

// redisCPU returns the server's used CPU (user+sys) so far.
func redisCPU(b *testing.B, c *redis.Client) time.Duration {
	info, err := c.Info(context.Background(), "cpu").Result()
	if err != nil {
		b.Fatal(err)
	}
	var total float64
	for _, line := range strings.Split(info, "\r\n") {
		for _, k := range []string{"used_cpu_sys:", "used_cpu_user:"} {
			if v, ok := strings.CutPrefix(line, k); ok {
				f, _ := strconv.ParseFloat(v, 64)
				total += f
			}
		}
	}
	return time.Duration(total * float64(time.Second))
}

func redisMemory(b *testing.B, c *redis.Client) int64 {
	info, err := c.Info(context.Background(), "memory").Result()
	if err != nil {
		b.Fatal(err)
	}
	for _, line := range strings.Split(info, "\r\n") {
		if v, ok := strings.CutPrefix(line, "used_memory:"); ok {
			n, _ := strconv.ParseInt(v, 10, 64)
			return n
		}
	}
	b.Fatal("no used_memory in INFO")
	return 0
}

type benchEnv struct {
	srv   *redistest.Server
	admin *redis.Client
}

func newBenchEnv(b *testing.B) benchEnv {
	srv := redistest.Start(b)
	admin := redis.NewClient(&redis.Options{Addr: srv.Addr})
	b.Cleanup(func() { admin.Close() })
	return benchEnv{srv, admin}
}

func (e benchEnv) client(b *testing.B) redis.UniversalClient {
	c, err := NewClient([]string{e.srv.Addr}, ClientOptions{})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { c.Close() })
	return c
}

// perNodeSetup attaches benchDevices devices over benchNodes routers and
// returns a sending router on a node of its own and the bell counter.
func perNodeSetup(b *testing.B, e benchEnv) (*Router, *counter, []queue.Device) {
	cnt := &counter{}
	ctx := context.Background()
	mem0 := redisMemory(b, e.admin)
	var devs []queue.Device
	var nodes []*Router
	for n := range benchNodes {
		r := startRouter(b, e.client(b), Options{Prefix: "hush:", Node: fmt.Sprint("recv", n)})
		r.Subscribe(cnt)
		nodes = append(nodes, r)
	}
	for i := range benchDevices {
		dev := benchDevice(i)
		if err := nodes[i%benchNodes].Attach(ctx, dev, uint64(i+1)); err != nil {
			b.Fatal(err)
		}
		devs = append(devs, dev)
	}
	cnt.memPerDevice = float64(redisMemory(b, e.admin)-mem0) / benchDevices
	sender := startRouter(b, e.client(b), Options{Prefix: "hush:", Node: "sender"})
	return sender, cnt, devs
}

// perUser is the per-user-channel design, as far as the benchmark needs it.
type perUser struct {
	c   redis.UniversalClient
	pss []*redis.PubSub
}

func perUserSetup(b *testing.B, e benchEnv) (*perUser, *counter, []queue.Device) {
	cnt := &counter{}
	ctx := context.Background()
	mem0 := redisMemory(b, e.admin)
	pu := &perUser{c: e.client(b)}
	var devs []queue.Device
	chans := make([][]string, benchNodes)
	for i := range benchDevices {
		dev := benchDevice(i)
		devs = append(devs, dev)
		chans[i%benchNodes] = append(chans[i%benchNodes], "hush:u:"+dev.String())
	}
	var wg sync.WaitGroup
	for n := range benchNodes {
		ps := e.client(b).Subscribe(ctx)
		// One SUBSCRIBE per device as it connects.
		for _, ch := range chans[n] {
			if err := ps.Subscribe(ctx, ch); err != nil {
				b.Fatal(err)
			}
		}
		confirmed := 0
		for confirmed < len(chans[n]) {
			m, err := ps.Receive(ctx)
			if err != nil {
				b.Fatal(err)
			}
			if _, ok := m.(*redis.Subscription); ok {
				confirmed++
			}
		}
		pu.pss = append(pu.pss, ps)
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				m, err := ps.Receive(ctx)
				if err != nil {
					return
				}
				if msg, ok := m.(*redis.Message); ok {
					if _, err := decodeMessage([]byte(msg.Payload)); err == nil {
						cnt.add(1)
					}
				}
			}
		}()
	}
	b.Cleanup(func() {
		for _, ps := range pu.pss {
			ps.Close()
		}
		wg.Wait()
	})
	cnt.memPerDevice = float64(redisMemory(b, e.admin)-mem0) / benchDevices
	return pu, cnt, devs
}

// ring publishes one message per bell to the device's channel.
func (p *perUser) ring(ctx context.Context, bells []routing.Bell) ([]bool, error) {
	pipe := p.c.Pipeline()
	cmds := make([]*redis.IntCmd, len(bells))
	for i, bl := range bells {
		msg, err := encodeBells([]routing.Bell{bl})
		if err != nil {
			return nil, err
		}
		cmds[i] = pipe.Publish(ctx, "hush:u:"+bl.Device.String(), msg[0].msg)
	}
	if _, err := pipe.Exec(ctx); err != nil {
		return nil, err
	}
	out := make([]bool, len(bells))
	for i, c := range cmds {
		out[i] = c.Val() > 0
	}
	return out, nil
}

func bellsFor(devs []queue.Device, id uint64) []routing.Bell {
	bells := make([]routing.Bell, len(devs))
	for i, d := range devs {
		bells[i] = routing.Bell{Device: d, ServerID: id}
	}
	return bells
}

func runDoorbells(b *testing.B, admin *redis.Client, cnt *counter, devs []queue.Device, perOp int, ring func([]routing.Bell) ([]bool, error)) {
	var want int64
	cpu0 := redisCPU(b, admin)
	b.ResetTimer()
	for i := 0; b.Loop(); i++ {
		lo := (i * perOp) % len(devs)
		sel := devs[lo : lo+perOp]
		want += int64(len(sel))
		ch := cnt.expect(want)
		got, err := ring(bellsFor(sel, uint64(i+1)))
		if err != nil {
			b.Fatal(err)
		}
		for j, a := range got {
			if !a {
				b.Fatalf("device %s reported offline", sel[j])
			}
		}
		waitBells(b, ch)
	}
	b.StopTimer()
	b.ReportMetric(float64(redisCPU(b, admin)-cpu0)/float64(time.Microsecond)/float64(b.N), "redis-µs/op")
	b.ReportMetric(cnt.memPerDevice, "redis-B/device")
}

// BenchmarkDoorbells1000 rings 1,000 devices on 3 nodes per op.
func BenchmarkDoorbells1000(b *testing.B) {
	ctx := context.Background()
	b.Run("per-node", func(b *testing.B) {
		e := newBenchEnv(b)
		sender, cnt, devs := perNodeSetup(b, e)
		runDoorbells(b, e.admin, cnt, devs, benchDevices, func(bl []routing.Bell) ([]bool, error) { return sender.Ring(ctx, bl) })
	})
	b.Run("per-user", func(b *testing.B) {
		e := newBenchEnv(b)
		pu, cnt, devs := perUserSetup(b, e)
		runDoorbells(b, e.admin, cnt, devs, benchDevices, func(bl []routing.Bell) ([]bool, error) { return pu.ring(ctx, bl) })
	})
}

// BenchmarkDoorbellOne rings one device on another node per op: the
// common case of a 1-1 message.
func BenchmarkDoorbellOne(b *testing.B) {
	ctx := context.Background()
	b.Run("per-node", func(b *testing.B) {
		e := newBenchEnv(b)
		sender, cnt, devs := perNodeSetup(b, e)
		runDoorbells(b, e.admin, cnt, devs, 1, func(bl []routing.Bell) ([]bool, error) { return sender.Ring(ctx, bl) })
	})
	b.Run("per-user", func(b *testing.B) {
		e := newBenchEnv(b)
		pu, cnt, devs := perUserSetup(b, e)
		runDoorbells(b, e.admin, cnt, devs, 1, func(bl []routing.Bell) ([]bool, error) { return pu.ring(ctx, bl) })
	})
}

// BenchmarkAttach is the per-connection cost: per-node writes a
// registration (SET … GET); per-user subscribes a channel on the node's
// pub/sub connection and waits for the confirmation.
func BenchmarkAttach(b *testing.B) {
	ctx := context.Background()
	b.Run("per-node", func(b *testing.B) {
		e := newBenchEnv(b)
		r := startRouter(b, e.client(b), Options{Prefix: "hush:"})
		cpu0 := redisCPU(b, e.admin)
		b.ResetTimer()
		for i := 0; b.Loop(); i++ {
			if err := r.Attach(ctx, benchDevice(i%100_000), uint64(i+1)); err != nil {
				b.Fatal(err)
			}
		}
		b.StopTimer()
		b.ReportMetric(float64(redisCPU(b, e.admin)-cpu0)/float64(time.Microsecond)/float64(b.N), "redis-µs/op")
	})
	b.Run("per-user", func(b *testing.B) {
		e := newBenchEnv(b)
		ps := e.client(b).Subscribe(ctx)
		defer ps.Close()
		cpu0 := redisCPU(b, e.admin)
		b.ResetTimer()
		for i := 0; b.Loop(); i++ {
			if err := ps.Subscribe(ctx, "hush:u:"+benchDevice(i%100_000).String()); err != nil {
				b.Fatal(err)
			}
			if _, err := ps.Receive(ctx); err != nil {
				b.Fatal(err)
			}
		}
		b.StopTimer()
		b.ReportMetric(float64(redisCPU(b, e.admin)-cpu0)/float64(time.Microsecond)/float64(b.N), "redis-µs/op")
	})
}

// BenchmarkRefresh1000 is per-node's standing cost: one refresh round of
// 1,000 attached devices (done every RegistrationTTL/3, 15 s by default).
func BenchmarkRefresh1000(b *testing.B) {
	e := newBenchEnv(b)
	r := startRouter(b, e.client(b), Options{Prefix: "hush:"})
	ctx := context.Background()
	for i := range benchDevices {
		if err := r.Attach(ctx, benchDevice(i), uint64(i+1)); err != nil {
			b.Fatal(err)
		}
	}
	cpu0 := redisCPU(b, e.admin)
	b.ResetTimer()
	for b.Loop() {
		if err := r.refreshAll(false); err != nil {
			b.Fatal(err)
		}
	}
	b.StopTimer()
	b.ReportMetric(float64(redisCPU(b, e.admin)-cpu0)/float64(time.Microsecond)/float64(b.N), "redis-µs/op")
}

// BenchmarkRingUnwaited is Ring's cost to the sender for one bell (lookup
// + publish), the path a 1-1 send takes, without waiting for delivery.
func BenchmarkRingUnwaited(b *testing.B) {
	e := newBenchEnv(b)
	sender, _, devs := perNodeSetup(b, e)
	ctx := context.Background()
	b.ResetTimer()
	for i := 0; b.Loop(); i++ {
		if _, err := sender.Ring(ctx, []routing.Bell{{Device: devs[i%len(devs)], ServerID: uint64(i)}}); err != nil {
			b.Fatal(err)
		}
	}
}
