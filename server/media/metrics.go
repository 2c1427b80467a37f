package media

import (
	"errors"

	"github.com/prometheus/client_golang/prometheus"
)

// metrics are the Service's collectors, registered on the Registerer the
// caller passes (never the global registry), so several services can live
// in one process or test. Labels are bounded: route patterns, status codes
// and fixed reasons, never accounts or keys.
type metrics struct {
	requests   *prometheus.CounterVec   // route, status
	duration   *prometheus.HistogramVec // route
	slots      prometheus.Counter
	slotBytes  prometheus.Counter
	refused    *prometheus.CounterVec // reason
	swept      prometheus.Counter
	sweepFails prometheus.Counter
}

// Refusal reasons (label values of hush_media_refused_total).
var refusalReasons = []string{"unauthenticated", "too_large", "rate_limited", "quota_exceeded", "bad_request", "not_found"}

func newMetrics(reg prometheus.Registerer) (*metrics, error) {
	m := &metrics{
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: "hush", Subsystem: "media", Name: "requests_total",
			Help: "Media API requests by route (slots, object, blob, other) and status code.",
		}, []string{"route", "status"}),
		duration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Namespace: "hush", Subsystem: "media", Name: "request_duration_seconds",
			Help: "Media API request latency by route; blob requests include the whole transfer.",
			// 1 ms to ~17 min: slot requests are fast, blob transfers are not.
			Buckets: prometheus.ExponentialBuckets(0.001, 4, 11),
		}, []string{"route"}),
		slots: prometheus.NewCounter(prometheus.CounterOpts{
			Namespace: "hush", Subsystem: "media", Name: "slots_issued_total",
			Help: "Upload slots issued.",
		}),
		slotBytes: prometheus.NewCounter(prometheus.CounterOpts{
			Namespace: "hush", Subsystem: "media", Name: "slot_bytes_total",
			Help: "Bytes of upload slots issued (the encrypted sizes clients announced).",
		}),
		refused: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: "hush", Subsystem: "media", Name: "refused_total",
			Help: "Slot and download requests refused, by reason.",
		}, []string{"reason"}),
		swept: prometheus.NewCounter(prometheus.CounterOpts{
			Namespace: "hush", Subsystem: "media", Name: "swept_objects_total",
			Help: "Objects removed by the retention sweeper.",
		}),
		sweepFails: prometheus.NewCounter(prometheus.CounterOpts{
			Namespace: "hush", Subsystem: "media", Name: "sweep_errors_total",
			Help: "Retention sweeps that failed.",
		}),
	}
	for _, r := range refusalReasons {
		m.refused.WithLabelValues(r)
	}
	if reg != nil {
		for _, c := range []prometheus.Collector{m.requests, m.duration, m.slots, m.slotBytes, m.refused, m.swept, m.sweepFails} {
			if err := reg.Register(c); err != nil {
				return nil, err
			}
		}
	}
	return m, nil
}

// Register registers c on reg, or returns the collector already registered
// under the same description (so a backend reopened in one process keeps
// counting). Backends use it for their own hush_media_* collectors.
func Register[C prometheus.Collector](reg prometheus.Registerer, c C) (C, error) {
	if reg == nil {
		return c, nil
	}
	if err := reg.Register(c); err != nil {
		var are prometheus.AlreadyRegisteredError
		if errors.As(err, &are) {
			if existing, ok := are.ExistingCollector.(C); ok {
				return existing, nil
			}
		}
		return c, err
	}
	return c, nil
}
