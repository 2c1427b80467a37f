package keyserver

import (
	"github.com/prometheus/client_golang/prometheus"
)

// metrics are the key server's Prometheus collectors. They are registered
// on the Registerer the caller gives (never the global registry), so several
// servers can live in one process or one test.
type metrics struct {
	requests    *prometheus.CounterVec   // route, status
	duration    *prometheus.HistogramVec // route
	claims      *prometheus.CounterVec   // kind
	low         prometheus.Counter
	rateLimited *prometheus.CounterVec // limit
}

func newMetrics(reg prometheus.Registerer) (*metrics, error) {
	m := &metrics{
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: "hush", Subsystem: "keyserver", Name: "requests_total",
			Help: "HTTP requests by route pattern and status code.",
		}, []string{"route", "status"}),
		duration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Namespace: "hush", Subsystem: "keyserver", Name: "request_duration_seconds",
			Help:    "HTTP request latency by route pattern.",
			Buckets: prometheus.ExponentialBuckets(0.0005, 2, 14),
		}, []string{"route"}),
		claims: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: "hush", Subsystem: "keyserver", Name: "prekey_claims_total",
			Help: "Prekeys handed out in bundles, by kind (one_time, last_resort).",
		}, []string{"kind"}),
		low: prometheus.NewCounter(prometheus.CounterOpts{
			Namespace: "hush", Subsystem: "keyserver", Name: "prekeys_low_total",
			Help: "Bundle fetches that left a device with fewer one-time prekeys than the low-water mark.",
		}),
		rateLimited: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: "hush", Subsystem: "keyserver", Name: "rate_limited_total",
			Help: "Requests refused by a rate limit, by limit (bundle, anonymous).",
		}, []string{"limit"}),
	}
	m.claims.WithLabelValues("one_time")
	m.claims.WithLabelValues("last_resort")
	m.rateLimited.WithLabelValues("bundle")
	m.rateLimited.WithLabelValues("anonymous")
	if reg != nil {
		for _, c := range []prometheus.Collector{m.requests, m.duration, m.claims, m.low, m.rateLimited} {
			if err := reg.Register(c); err != nil {
				return nil, err
			}
		}
	}
	return m, nil
}
