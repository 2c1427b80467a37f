package server

import (
	"context"
	"math/rand/v2"
	"sync"
	"time"

	"github.com/hushchat/hush/server/queue"
	"github.com/hushchat/hush/server/routing"
)

// Doorbells that failed to ring.
//
// A bell is only a fast path — the envelope is in the recipient's queue —
// but a bell that is never rung can leave an envelope waiting for an
// unrelated event: the recipient's relay polls its queues only while its
// own router is unhealthy, and a Redis call that timed out on the sending
// relay says nothing to the receiving one. So a Ring that fails keeps its
// bells here, and a retry loop rings them again once the router is healthy
// (as far as it can tell; a router without a Healthy method is always
// tried), with exponential backoff while Ring keeps failing.
//
// Kept bells are merged per device, keeping the lowest server id: a bell
// makes the device's connection fetch after its position, or rescan from
// just below an id it has passed (see deliver.go), so the lowest id covers
// every higher one. At most maxKeptBells devices are kept; bells beyond
// that are counted (hush_doorbells_dropped_total) and left to the
// recipients' next fetch or reconnect, as before this retry existed.

const (
	// maxKeptBells bounds the devices with a bell waiting for a retry.
	maxKeptBells = 100_000
	// retryBatch bounds the bells of one retry Ring, so that one call fits
	// the router's per-call timeout.
	retryBatch = 1000
	// Retry pacing: the first retry after retryMin, doubling (with
	// jitter) up to retryMax while Ring fails; while the router reports
	// itself unhealthy it is asked again every retryMin.
	retryMin = 100 * time.Millisecond
	retryMax = 5 * time.Second
)

// keptBells are the bells waiting for a retry.
type keptBells struct {
	mu    sync.Mutex
	bells map[queue.Device]uint64 // device → lowest server id to ring
	kick  chan struct{}           // buffered(1): something was kept
}

func newKeptBells() *keptBells {
	return &keptBells{bells: make(map[queue.Device]uint64), kick: make(chan struct{}, 1)}
}

// keep adds bells for a retry; it returns how many did not fit.
func (k *keptBells) keep(bells []routing.Bell) (dropped int) {
	k.mu.Lock()
	for _, b := range bells {
		if id, ok := k.bells[b.Device]; ok {
			k.bells[b.Device] = min(id, b.ServerID)
			continue
		}
		if len(k.bells) >= maxKeptBells {
			dropped++
			continue
		}
		k.bells[b.Device] = b.ServerID
	}
	k.mu.Unlock()
	select {
	case k.kick <- struct{}{}:
	default:
	}
	return dropped
}

// take removes and returns up to n kept bells.
func (k *keptBells) take(n int) []routing.Bell {
	k.mu.Lock()
	defer k.mu.Unlock()
	if len(k.bells) == 0 {
		return nil
	}
	out := make([]routing.Bell, 0, min(n, len(k.bells)))
	for dev, id := range k.bells {
		if len(out) == n {
			break
		}
		out = append(out, routing.Bell{Device: dev, ServerID: id})
		delete(k.bells, dev)
	}
	return out
}

func (k *keptBells) len() int {
	k.mu.Lock()
	defer k.mu.Unlock()
	return len(k.bells)
}

// keepBells keeps the bells of a failed Ring for the retry loop.
func (r *Relay) keepBells(bells []routing.Bell) {
	if dropped := r.kept.keep(bells); dropped > 0 {
		r.m.bellsDropped.Add(float64(dropped))
	}
}

// routerHealthy reports whether the router says it can ring now.
func (r *Relay) routerHealthy() bool {
	if h, ok := r.router.(interface{ Healthy() bool }); ok {
		return h.Healthy()
	}
	return true
}

// retryLoop rings kept bells again until none are left, then waits for
// the next failure.
func (r *Relay) retryLoop() {
	defer r.bg.Done()
	t := time.NewTimer(time.Hour)
	t.Stop()
	sleep := func(d time.Duration) bool {
		t.Reset(d)
		select {
		case <-r.stopLoops:
			t.Stop()
			return false
		case <-t.C:
			return true
		}
	}
	for {
		select {
		case <-r.stopLoops:
			r.retryBells(time.Second) // one last try; the queues hold the rest
			return
		case <-r.kept.kick:
		}
		backoff := retryMin
		for r.kept.len() > 0 {
			if !sleep(jitter(backoff)) {
				r.retryBells(time.Second)
				return
			}
			if !r.routerHealthy() {
				backoff = retryMin
				continue
			}
			if r.retryBells(ringTimeout) {
				backoff = retryMin
			} else {
				backoff = min(2*backoff, retryMax)
			}
		}
	}
}

// jitter spreads retries of many relays over ±25% of d.
func jitter(d time.Duration) time.Duration {
	return d*3/4 + rand.N(d/2+1)
}

// retryBells rings the kept bells in batches; a batch that fails is kept
// again and ends the attempt. It reports whether every batch rang.
func (r *Relay) retryBells(timeout time.Duration) bool {
	for {
		bells := r.kept.take(retryBatch)
		if len(bells) == 0 {
			return true
		}
		ctx, cancel := context.WithTimeout(context.Background(), timeout)
		_, err := r.router.Ring(ctx, bells)
		cancel()
		if err != nil {
			r.ringFailed(err)
			r.keepBells(bells)
			return false
		}
		r.ringWorked()
		r.m.bellsRetried.Add(float64(len(bells)))
		// Recipients connected nowhere were pushed when the first Ring
		// failed; they are not pushed twice.
	}
}
