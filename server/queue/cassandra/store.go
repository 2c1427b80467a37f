package cassandra

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/gocql/gocql"

	"github.com/hushchat/hush/server/queue"
)

// Defaults of Config.
const (
	DefaultTimeout       = 10 * time.Second
	DefaultMaxBatchBytes = 40 << 10
	DefaultClaimTimeout  = 10 * time.Second
)

// Config configures Open and New.
type Config struct {
	// Hosts are the contact points, "host" or "host:port" (Open only).
	Hosts []string
	// Port is the CQL port for hosts given without one (default 9042).
	Port int
	// Keyspace holds the tables; Open creates the tables in it.
	Keyspace string
	// Replication, when set, makes Open create the keyspace if it is
	// missing, with this CQL replication map, e.g.
	// "{'class': 'NetworkTopologyStrategy', 'dc1': 3}". When empty the
	// keyspace must exist: a production keyspace is the operator's choice,
	// never a silent replication factor of 1.
	Replication string
	// LocalDC, when set, keeps requests in this data centre (DC-aware
	// round robin under the token-aware policy); LOCAL_* consistency then
	// means this DC.
	LocalDC string
	// Consistency of reads and writes (default LOCAL_QUORUM; ANY, the zero
	// value, is not accepted and means the default).
	Consistency gocql.Consistency
	// SerialConsistency of the idempotency claims (default LOCAL_SERIAL).
	SerialConsistency gocql.SerialConsistency
	// Timeout bounds each request to a node (default DefaultTimeout).
	Timeout time.Duration
	// Retries is how often an idempotent request is retried on another
	// host after a timeout or an unavailable node (default 2; -1: never).
	Retries int
	// MaxBatchBytes bounds the estimated size of one logged batch; it
	// must stay below the cluster's batch_size_fail_threshold (50 KiB by
	// default). Larger Puts take the staged path (see the package doc).
	MaxBatchBytes int
	// ClaimTimeout is how long an idempotency claim may stay pending
	// before a retry of the same message takes it over (default
	// DefaultClaimTimeout), and the longest a retry waits for a
	// concurrent attempt of the same message before answering
	// retryable. Taking over a live but slow attempt is safe (both write
	// the same rows under the same timestamp), only wasted work.
	ClaimTimeout time.Duration
	// Options are the options common to all queue backends (cap, clock).
	Options queue.Options
	// Logger receives the driver's messages at warn level and the store's
	// own warnings (nil: discarded). Neither ever contains a payload.
	Logger *slog.Logger
}

func (c *Config) setDefaults() {
	if c.Consistency == gocql.Any {
		c.Consistency = gocql.LocalQuorum
	}
	if c.SerialConsistency == 0 {
		c.SerialConsistency = gocql.LocalSerial
	}
	if c.Timeout <= 0 {
		c.Timeout = DefaultTimeout
	}
	if c.Retries == 0 {
		c.Retries = 2
	}
	if c.MaxBatchBytes <= 0 {
		c.MaxBatchBytes = DefaultMaxBatchBytes
	}
	if c.ClaimTimeout <= 0 {
		c.ClaimTimeout = DefaultClaimTimeout
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
}

// Store is the Cassandra queue store. It implements queue.Store and
// queue.PayloadCounter.
type Store struct {
	s     *gocql.Session
	owned bool
	cfg   Config
	opts  queue.Options
	log   *slog.Logger
	retry gocql.RetryPolicy

	// lastTS makes write timestamps strictly increasing within a process.
	lastTS atomic.Int64

	mu       sync.RWMutex // guards closed; held shared by every operation
	closed   bool
	closing  chan struct{}
	inflight sync.WaitGroup
}

var (
	_ queue.Store          = (*Store)(nil)
	_ queue.PayloadCounter = (*Store)(nil)
)

// Open connects to the cluster (token-aware host selection), creates the
// keyspace when cfg.Replication asks for it, and creates or migrates the
// tables.
func Open(ctx context.Context, cfg Config) (*Store, error) {
	if len(cfg.Hosts) == 0 || cfg.Keyspace == "" {
		return nil, errors.New("open cassandra queue store: need hosts and a keyspace")
	}
	if !validIdent(cfg.Keyspace) {
		return nil, fmt.Errorf("open cassandra queue store: keyspace %q must be 1–48 of [a-z0-9_], starting with a letter", cfg.Keyspace)
	}
	cfg.setDefaults()
	cc := gocql.NewCluster(cfg.Hosts...)
	if cfg.Port != 0 {
		cc.Port = cfg.Port
	}
	cc.Timeout = cfg.Timeout
	cc.ConnectTimeout = cfg.Timeout
	cc.Consistency = cfg.Consistency
	cc.SerialConsistency = cfg.SerialConsistency
	fallback := gocql.RoundRobinHostPolicy()
	if cfg.LocalDC != "" {
		fallback = gocql.DCAwareRoundRobinPolicy(cfg.LocalDC)
	}
	cc.PoolConfig.HostSelectionPolicy = gocql.TokenAwareHostPolicy(fallback)
	// Statements opt in to retries one by one (see idem); the default is
	// none, so nothing that is not idempotent is ever sent twice.
	cc.RetryPolicy = nil
	cc.Logger = driverLogger(cfg.Logger)
	if cfg.Replication != "" {
		admin, err := cc.CreateSession()
		if err != nil {
			return nil, fmt.Errorf("open cassandra queue store %v: %w", cfg.Hosts, err)
		}
		err = admin.Query(fmt.Sprintf("CREATE KEYSPACE IF NOT EXISTS %s WITH replication = %s", cfg.Keyspace, cfg.Replication)).
			WithContext(ctx).Exec()
		admin.Close()
		if err != nil {
			return nil, fmt.Errorf("open cassandra queue store: create keyspace %s: %w", cfg.Keyspace, err)
		}
	}
	cc.Keyspace = cfg.Keyspace
	sess, err := cc.CreateSession()
	if err != nil {
		return nil, fmt.Errorf("open cassandra queue store %v/%s: %w", cfg.Hosts, cfg.Keyspace, err)
	}
	st, err := New(ctx, sess, cfg)
	if err != nil {
		sess.Close()
		return nil, err
	}
	st.owned = true
	return st, nil
}

func driverLogger(l *slog.Logger) gocql.StdLogger {
	if l == nil {
		return log.New(io.Discard, "", 0)
	}
	return slog.NewLogLogger(l.Handler(), slog.LevelWarn)
}

func validIdent(s string) bool {
	if len(s) == 0 || len(s) > 48 || s[0] < 'a' || s[0] > 'z' {
		return false
	}
	for _, c := range []byte(s) {
		if !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '_') {
			return false
		}
	}
	return true
}

// New uses an existing session, whose keyspace must be set, and creates or
// migrates the tables there. Of cfg it uses everything but Hosts, Port,
// Keyspace, Replication and LocalDC (the session's own settings). Close
// does not close a session passed to New.
func New(ctx context.Context, sess *gocql.Session, cfg Config) (*Store, error) {
	cfg.setDefaults()
	st := &Store{
		s:       sess,
		cfg:     cfg,
		opts:    cfg.Options,
		log:     cfg.Logger,
		closing: make(chan struct{}),
	}
	if cfg.Retries > 0 {
		st.retry = &retryPolicy{retries: cfg.Retries, min: 20 * time.Millisecond, max: 500 * time.Millisecond}
	}
	if err := st.migrate(ctx); err != nil {
		return nil, fmt.Errorf("open cassandra queue store: %w", err)
	}
	return st, nil
}

// Close makes every method return queue.ErrClosed, waits for the
// operations in progress, and closes the session if Open created it.
func (s *Store) Close() error {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return nil
	}
	s.closed = true
	close(s.closing)
	s.mu.Unlock()
	s.inflight.Wait()
	if s.owned {
		s.s.Close()
	}
	return nil
}

// enter registers an operation; it fails once Close has begun.
func (s *Store) enter(op string) error {
	s.mu.RLock()
	defer s.mu.RUnlock()
	if s.closed {
		return fmt.Errorf("queue %s: %w", op, queue.ErrClosed)
	}
	s.inflight.Add(1)
	return nil
}

func (s *Store) leave() { s.inflight.Done() }

// now is the store clock (expiry, idempotency window, claim leases).
func (s *Store) now() time.Time { return s.opts.Now() }

// writeTS returns a write timestamp in microseconds of real time —
// Cassandra resolves conflicts by it, so it must never come from a test
// clock — strictly increasing within the process.
func (s *Store) writeTS() int64 {
	now := time.Now().UnixMicro()
	for {
		last := s.lastTS.Load()
		next := max(now, last+1)
		if s.lastTS.CompareAndSwap(last, next) {
			return next
		}
	}
}

// query builds an idempotent statement at the configured consistency:
// retried by the retry policy, and eligible for speculative execution.
func (s *Store) query(ctx context.Context, stmt string, args ...any) *gocql.Query {
	q := s.s.Query(stmt, args...).WithContext(ctx).Consistency(s.cfg.Consistency).Idempotent(true)
	if s.retry != nil {
		q = q.RetryPolicy(s.retry)
	}
	return q
}

// lwt builds a lightweight transaction. Every LWT here names the claim's
// owner id, so a retry after a timeout recognises its own earlier success:
// that makes them safe to retry too.
func (s *Store) lwt(ctx context.Context, stmt string, args ...any) *gocql.Query {
	return s.query(ctx, stmt, args...).SerialConsistency(s.cfg.SerialConsistency)
}

// serialRead reads rows written by LWTs at serial consistency, so the read
// sees every committed (and completes every in-flight) transaction.
func (s *Store) serialRead(ctx context.Context, stmt string, args ...any) *gocql.Query {
	return s.query(ctx, stmt, args...).Consistency(gocql.Consistency(s.cfg.SerialConsistency))
}

// batch returns a batch of idempotent statements (all of ours are: fixed
// timestamps, no counters, no list appends).
func (s *Store) batch(ctx context.Context, typ gocql.BatchType, ts int64) *gocql.Batch {
	b := s.s.NewBatch(typ).WithContext(ctx)
	b.SetConsistency(s.cfg.Consistency)
	b.WithTimestamp(ts)
	if s.retry != nil {
		b.RetryPolicy(s.retry)
	}
	return b
}

func add(b *gocql.Batch, stmt string, args ...any) {
	b.Entries = append(b.Entries, gocql.BatchEntry{Stmt: stmt, Args: args, Idempotent: true})
}

// fail maps an error of the driver to the queue package's errors: the
// caller's context ending is returned as is (wrapped with op), a node or
// network failure becomes retryable (queue.Unavailable), and a request the
// cluster refused as malformed stays a plain error — a bug, not a reason
// for the client to retry.
func (s *Store) fail(ctx context.Context, op string, err error) error {
	if err == nil {
		return nil
	}
	if ctx.Err() != nil && (errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) || errors.Is(err, ctx.Err())) {
		return fmt.Errorf("queue %s: %w", op, ctx.Err())
	}
	if errors.Is(err, queue.ErrClosed) || errors.Is(err, queue.ErrUnavailable) || errors.Is(err, queue.ErrInvalid) {
		return err
	}
	if retryable(err) {
		return queue.Unavailable(op, err)
	}
	return fmt.Errorf("queue %s: cassandra: %w", op, err)
}

// retryable reports whether err is a failure of the cluster or the network
// rather than of the request itself.
func retryable(err error) bool {
	var re gocql.RequestError
	if errors.As(err, &re) {
		switch re.Code() {
		case gocql.ErrCodeSyntax, gocql.ErrCodeInvalid, gocql.ErrCodeUnauthorized,
			gocql.ErrCodeConfig, gocql.ErrCodeAlreadyExists, gocql.ErrCodeProtocol,
			gocql.ErrCodeCredentials, gocql.ErrCodeFunctionFailure:
			return false
		}
		return true // unavailable, overloaded, timeouts, read/write failures, server errors
	}
	var me gocql.MarshalError
	var ue gocql.UnmarshalError
	if errors.As(err, &me) || errors.As(err, &ue) || errors.Is(err, gocql.ErrQueryArgLength) {
		return false
	}
	// Everything else the driver reports is the transport: no host in the
	// pool, a closed session or connection, a request with no answer in
	// time, a reset socket.
	return true
}

// definitelyNotApplied reports whether a write that failed with err can
// not have been applied, now or later: the coordinator refused it before
// writing anything, or it was never sent. A timeout, a lost connection or a
// cancelled wait leave the outcome unknown.
func definitelyNotApplied(err error) bool {
	var ue *gocql.RequestErrUnavailable
	var re gocql.RequestError
	switch {
	case errors.As(err, &ue):
		return true
	case errors.As(err, &re):
		switch re.Code() {
		case gocql.ErrCodeSyntax, gocql.ErrCodeInvalid, gocql.ErrCodeUnauthorized,
			gocql.ErrCodeConfig, gocql.ErrCodeOverloaded, gocql.ErrCodeBootstrapping,
			gocql.ErrCodeUnprepared:
			return true
		}
		return false
	}
	return errors.Is(err, gocql.ErrNoConnections) || errors.Is(err, gocql.ErrSessionClosed) ||
		errors.Is(err, gocql.ErrNoStreams) || errors.Is(err, queue.ErrClosed)
}

// retryPolicy retries a statement on the next host after a transient
// failure, with exponential backoff that honours the statement's context.
// Only statements built by Store.query/batch (all idempotent) carry it.
type retryPolicy struct {
	retries  int
	min, max time.Duration
}

func (r *retryPolicy) Attempt(q gocql.RetryableQuery) bool {
	n := q.Attempts()
	if n > r.retries {
		return false
	}
	d := r.min << (n - 1)
	if n < 1 || d > r.max || d <= 0 {
		d = r.max
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-q.Context().Done():
		return false
	}
}

func (r *retryPolicy) GetRetryType(err error) gocql.RetryType {
	if !retryable(err) {
		return gocql.Rethrow
	}
	return gocql.RetryNextHost
}
