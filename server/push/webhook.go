package push

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/hushchat/hush/server/queue"
)

// Body is what every push carries: a constant, so it says nothing.
const Body = `{"hush":"mail"}`

// WebhookOptions tune a Webhook. Zero values take the defaults.
type WebhookOptions struct {
	// AllowPrivate permits endpoints on loopback and private addresses
	// (a relay and a push distributor on one private network; tests).
	AllowPrivate bool
	// Timeout bounds one POST (default 10 s).
	Timeout time.Duration
	// MaxAttempts bounds the tries of one push (default 6).
	MaxAttempts int
	// Backoff is the wait before the first retry, doubled for each next one
	// up to MaxBackoff (defaults 1 s and 5 min). After the last attempt
	// fails, the device gets no new push for MaxBackoff.
	Backoff, MaxBackoff time.Duration
	// Workers is the number of concurrent POSTs (default 4); Queue bounds
	// the pushes waiting for a worker (default 4096): beyond it a push is
	// dropped (and counted) rather than letting memory grow.
	Workers, Queue int
	// Logger gets one line per failure; endpoints appear only as their host.
	Logger *slog.Logger
	// Registerer gets hush_push_total; nil registers nothing.
	Registerer prometheus.Registerer
	// Transport replaces the guarded transport (tests only; it bypasses the
	// dial-time address check).
	Transport http.RoundTripper
}

// Webhook is the UnifiedPush-style Notifier (see the package doc).
type Webhook struct {
	eps    Endpoints
	opts   WebhookOptions
	client *http.Client
	log    *slog.Logger
	total  *prometheus.CounterVec

	mu      sync.Mutex
	pending map[queue.Device]*pushState
	closed  bool

	jobs chan job
	stop chan struct{}
	wg   sync.WaitGroup
}

type pushState struct {
	attempt int
	timer   *time.Timer
	// quietUntil: while set and in the future, Notify does nothing; zero
	// with sent=true means "until Reset".
	quietUntil time.Time
	sent       bool
	busy       bool // a job for it is queued or running
}

type job struct {
	dev queue.Device
	st  *pushState
}

// NewWebhook starts a webhook notifier over the endpoint store eps.
func NewWebhook(eps Endpoints, opts WebhookOptions) *Webhook {
	if opts.Timeout <= 0 {
		opts.Timeout = 10 * time.Second
	}
	if opts.MaxAttempts <= 0 {
		opts.MaxAttempts = 6
	}
	if opts.Backoff <= 0 {
		opts.Backoff = time.Second
	}
	if opts.MaxBackoff <= 0 {
		opts.MaxBackoff = 5 * time.Minute
	}
	if opts.Workers <= 0 {
		opts.Workers = 4
	}
	if opts.Queue <= 0 {
		opts.Queue = 4096
	}
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	w := &Webhook{
		eps:     eps,
		opts:    opts,
		log:     opts.Logger,
		pending: make(map[queue.Device]*pushState),
		jobs:    make(chan job, opts.Queue),
		stop:    make(chan struct{}),
		total: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "hush_push_total",
			Help: "Push notifications by outcome: sent, retry, failed, gone (endpoint deleted), no_endpoint, dropped (queue full).",
		}, []string{"result"}),
	}
	if opts.Registerer != nil {
		opts.Registerer.MustRegister(w.total)
	}
	tr := opts.Transport
	if tr == nil {
		tr = guardedTransport(opts.AllowPrivate)
	}
	w.client = &http.Client{
		Transport: tr,
		Timeout:   opts.Timeout,
		CheckRedirect: func(*http.Request, []*http.Request) error {
			return http.ErrUseLastResponse // a redirect is an answer, not a hop
		},
	}
	for range opts.Workers {
		w.wg.Add(1)
		go w.worker()
	}
	return w
}

// guardedTransport dials only addresses that pass Internal (unless allowed),
// checked on the resolved address of every connection, and uses no proxy.
func guardedTransport(allowPrivate bool) *http.Transport {
	d := &net.Dialer{Timeout: 5 * time.Second, Control: dialGuard(allowPrivate)}
	return &http.Transport{
		Proxy:                 nil,
		DialContext:           d.DialContext,
		MaxIdleConnsPerHost:   2,
		IdleConnTimeout:       30 * time.Second,
		TLSHandshakeTimeout:   5 * time.Second,
		ResponseHeaderTimeout: 10 * time.Second,
		ForceAttemptHTTP2:     true,
	}
}

func dialGuard(allowPrivate bool) func(network, address string, _ syscall.RawConn) error {
	return func(network, address string, _ syscall.RawConn) error {
		if allowPrivate {
			return nil
		}
		ap, err := netip.ParseAddrPort(address)
		if err != nil {
			return fmt.Errorf("push: refusing to dial %q: %w", address, err)
		}
		if Internal(ap.Addr()) {
			return fmt.Errorf("push: refusing to dial internal address %s", ap.Addr())
		}
		return nil
	}
}

// Register implements Notifier.
func (w *Webhook) Register(ctx context.Context, dev queue.Device, endpoint string) error {
	if endpoint != "" {
		if _, err := ValidateEndpoint(endpoint, w.opts.AllowPrivate); err != nil {
			return err
		}
	}
	return w.eps.Set(ctx, dev, endpoint)
}

// Notify implements Notifier.
func (w *Webhook) Notify(dev queue.Device) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.closed {
		return
	}
	st, ok := w.pending[dev]
	if ok {
		if st.busy || st.timer != nil || (st.sent && st.quietUntil.IsZero()) || time.Now().Before(st.quietUntil) {
			return // one push per device until it connects
		}
		st.attempt, st.sent, st.quietUntil = 0, false, time.Time{}
	} else {
		st = &pushState{}
		w.pending[dev] = st
	}
	w.enqueueLocked(dev, st)
}

func (w *Webhook) enqueueLocked(dev queue.Device, st *pushState) {
	select {
	case w.jobs <- job{dev, st}:
		st.busy = true
	default:
		delete(w.pending, dev)
		w.total.WithLabelValues("dropped").Inc()
	}
}

// Reset implements Notifier: dev connected, so the next envelope queued
// after it goes offline again may push again.
func (w *Webhook) Reset(dev queue.Device) {
	w.mu.Lock()
	if st, ok := w.pending[dev]; ok {
		if st.timer != nil {
			st.timer.Stop()
		}
		delete(w.pending, dev)
	}
	w.mu.Unlock()
}

func (w *Webhook) worker() {
	defer w.wg.Done()
	for {
		select {
		case <-w.stop:
			return
		case j := <-w.jobs:
			w.run(j)
		}
	}
}

type outcome int

const (
	sent outcome = iota
	retry
	failed
	gone
	noEndpoint
)

func (w *Webhook) run(j job) {
	ctx, cancel := context.WithTimeout(context.Background(), w.opts.Timeout)
	res := w.post(ctx, j.dev)
	cancel()

	w.mu.Lock()
	defer w.mu.Unlock()
	j.st.busy = false
	if w.pending[j.dev] != j.st || w.closed {
		return // reset (device connected) or closed meanwhile
	}
	j.st.attempt++
	switch res {
	case sent:
		w.total.WithLabelValues("sent").Inc()
		j.st.sent = true
	case noEndpoint:
		w.total.WithLabelValues("no_endpoint").Inc()
		j.st.sent = true // nothing to do until the device connects
	case gone:
		w.total.WithLabelValues("gone").Inc()
		j.st.sent = true
	case failed:
		w.total.WithLabelValues("failed").Inc()
		j.st.quietUntil = time.Now().Add(w.opts.MaxBackoff)
	case retry:
		if j.st.attempt >= w.opts.MaxAttempts {
			w.total.WithLabelValues("failed").Inc()
			j.st.quietUntil = time.Now().Add(w.opts.MaxBackoff)
			return
		}
		w.total.WithLabelValues("retry").Inc()
		d := w.opts.Backoff << (j.st.attempt - 1)
		if d > w.opts.MaxBackoff || d <= 0 {
			d = w.opts.MaxBackoff
		}
		st, dev := j.st, j.dev
		st.timer = time.AfterFunc(d, func() {
			w.mu.Lock()
			defer w.mu.Unlock()
			st.timer = nil
			if w.pending[dev] == st && !w.closed {
				w.enqueueLocked(dev, st)
			}
		})
	}
}

func (w *Webhook) post(ctx context.Context, dev queue.Device) outcome {
	ep, err := w.eps.Get(ctx, dev)
	if err != nil {
		w.log.Warn("push: endpoint lookup failed", "account", dev.Account, "device", dev.ID, "err", err)
		return retry
	}
	if ep == "" {
		return noEndpoint
	}
	u, err := ValidateEndpoint(ep, w.opts.AllowPrivate)
	if err != nil {
		return failed
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, ep, strings.NewReader(Body))
	if err != nil {
		return failed
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("TTL", "86400")
	req.Header.Set("Urgency", "high")
	resp, err := w.client.Do(req)
	if err != nil {
		w.log.Info("push: POST failed", "account", dev.Account, "device", dev.ID, "host", u.Hostname(), "err", errors.Unwrap(err))
		return retry
	}
	io.Copy(io.Discard, io.LimitReader(resp.Body, 4096))
	resp.Body.Close()
	switch {
	case resp.StatusCode >= 200 && resp.StatusCode < 300:
		return sent
	case resp.StatusCode == http.StatusNotFound || resp.StatusCode == http.StatusGone:
		// The distributor dropped the registration: forget it.
		if err := w.eps.Set(ctx, dev, ""); err != nil {
			w.log.Warn("push: deleting a gone endpoint failed", "account", dev.Account, "device", dev.ID, "err", err)
		}
		w.log.Info("push: endpoint gone, deleted", "account", dev.Account, "device", dev.ID, "host", u.Hostname(), "status", resp.StatusCode)
		return gone
	case resp.StatusCode == http.StatusTooManyRequests || resp.StatusCode >= 500:
		return retry
	default:
		w.log.Info("push: endpoint refused", "account", dev.Account, "device", dev.ID, "host", u.Hostname(), "status", resp.StatusCode)
		return failed
	}
}

// Close implements Notifier: stops the workers (a POST in progress finishes
// or times out) and drops pending retries. It does not close the endpoint
// store.
func (w *Webhook) Close() error {
	w.mu.Lock()
	if w.closed {
		w.mu.Unlock()
		return nil
	}
	w.closed = true
	for _, st := range w.pending {
		if st.timer != nil {
			st.timer.Stop()
		}
	}
	w.mu.Unlock()
	close(w.stop)
	w.wg.Wait()
	return nil
}
