package server

import (
	"github.com/prometheus/client_golang/prometheus"

	"github.com/hushchat/hush/server/nodeid"
	"github.com/hushchat/hush/server/routing"
)

// metrics are the relay's Prometheus collectors, all prefixed hush_. They
// count events and sizes only: never an account name, never content.
type metrics struct {
	connections  prometheus.Gauge
	connects     *prometheus.CounterVec
	disconnects  *prometheus.CounterVec
	sends        *prometheus.CounterVec
	sendSeconds  prometheus.Histogram
	deliveries   *prometheus.CounterVec
	acks         prometheus.Counter
	redeliveries prometheus.Counter
	rejected     *prometheus.CounterVec
	queueDepth   prometheus.Histogram
	oldest       prometheus.Gauge
	expired      prometheus.Counter
	presence     prometheus.Counter
	late         prometheus.Counter
	ringFailures prometheus.Counter
	bellsRetried prometheus.Counter
	bellsDropped prometheus.Counter
}

func newMetrics(reg prometheus.Registerer, router routing.Router, ids nodeid.Provider) (*metrics, error) {
	m := &metrics{
		connections: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "hush_connections", Help: "Open, authenticated device connections.",
		}),
		connects: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "hush_connects_total", Help: "WebSocket connection attempts by result: accepted, unauthenticated, revoked, bad_request, unavailable, shutting_down.",
		}, []string{"result"}),
		disconnects: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "hush_disconnects_total", Help: "Closed device connections by reason (the close code's name, or error).",
		}, []string{"reason"}),
		sends: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "hush_sends_total", Help: "Send frames by result: ok, duplicate, ephemeral, or the error code.",
		}, []string{"result"}),
		sendSeconds: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "hush_send_duration_seconds",
			Help:    "Time from a Send's arrival to its SendAck (validation, directory, durable store).",
			Buckets: []float64{.0005, .001, .002, .005, .01, .02, .05, .1, .25, .5, 1, 5},
		}),
		deliveries: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "hush_deliveries_total", Help: "Envelopes written to devices, by kind: stored (from the queue or live) and ephemeral.",
		}, []string{"kind"}),
		acks: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "hush_acks_total", Help: "Envelopes deleted by device acks.",
		}),
		redeliveries: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "hush_redeliveries_total", Help: "Envelopes a closing connection had delivered but not seen acked; each is delivered again on the device's next connection.",
		}),
		rejected: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "hush_rejected_frames_total", Help: "Frames refused, by reason (the error code).",
		}, []string{"reason"}),
		queueDepth: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "hush_queue_depth",
			Help:    "Envelopes waiting in a device's queue when it connects.",
			Buckets: []float64{0, 1, 10, 100, 1000, 10000, 100000},
		}),
		oldest: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "hush_queue_oldest_unacked_seconds", Help: "Age of the oldest envelope in any queue (refreshed every sweep).",
		}),
		expired: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "hush_expired_total", Help: "Envelopes deleted unacked because their TTL passed.",
		}),
		presence: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "hush_presence_updates_total", Help: "Presence frames sent to devices.",
		}),
		late: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "hush_late_deliveries_total",
			Help: "Envelopes delivered below a connection's position: stored by another relay under a lower id after higher ids were delivered (clock skew, concurrent stores, or a retry finishing an earlier attempt).",
		}),
		ringFailures: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "hush_doorbell_failures_total",
			Help: "Doorbell batches the router could not ring (Redis unavailable or slow); their bells are kept and rung again once the router is healthy, and their recipients were pushed.",
		}),
		bellsRetried: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "hush_doorbell_retries_total",
			Help: "Doorbells rung again after a failed ring (merged per device).",
		}),
		bellsDropped: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "hush_doorbells_dropped_total",
			Help: "Failed doorbells not kept for a retry because too many devices were waiting for one; their envelopes wait for the recipient's next fetch or reconnect.",
		}),
	}
	cs := []prometheus.Collector{m.connections, m.connects, m.disconnects, m.sends, m.sendSeconds,
		m.deliveries, m.acks, m.redeliveries, m.rejected, m.queueDepth, m.oldest, m.expired, m.presence,
		m.late, m.ringFailures, m.bellsRetried, m.bellsDropped}
	if h, ok := router.(interface{ Healthy() bool }); ok {
		cs = append(cs, prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "hush_router_healthy",
			Help: "1 while the router reaches Redis and every local registration is in place; 0 during an outage (delivery then runs on fallback polling; the relay stays ready).",
		}, func() float64 { return boolGauge(h.Healthy()) }))
	}
	if ids != nil {
		cs = append(cs, prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "hush_node_id_valid",
			Help: "1 while this relay may mint server ids with its node id; 0 while its lease is suspended, warming or lost (Sends are refused with CODE_UNAVAILABLE).",
		}, func() float64 { return boolGauge(ids.Valid() == nil) }))
	}
	if reg != nil {
		for _, c := range cs {
			if err := reg.Register(c); err != nil {
				return nil, err
			}
		}
	}
	return m, nil
}

func boolGauge(b bool) float64 {
	if b {
		return 1
	}
	return 0
}
