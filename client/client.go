// Package client is hush's client core: everything a hush device does
// except drawing a screen. The terminal UI, the hush CLI and bots are thin
// layers over it.
//
// A Client owns one profile directory (Config.Home) holding one SQLite
// database (package client/store) with the account, the Signal protocol
// state, contacts, conversations, messages, the outbox, groups and
// settings. It does all the cryptography (through package crypto) and all
// the networking: the key server over HTTP (keyserver/ksclient) and the
// relay over one WebSocket.
//
// # Guarantees
//
// Sending is outbox-first: Send commits the message and an outbox row
// before it returns. The row is encrypted for every device of the
// recipient (and for this account's other devices, as a SyncSent, so
// every device shows both sides), and the encrypted Send frame is stored
// in the same transaction as the ratchet step: in Send's own transaction
// when the relay connection is up and every device already has a session
// (receipts likewise, in the receive transaction that owes them),
// otherwise by a background worker (the rows due together share one
// transaction). The worker sends the stored frames in order. A retry — after a
// reconnect, a crash, a relay restart — resends the same frame with the
// same client id until the relay's SendAck, and the relay deduplicates by
// that id, so a message is never stored twice. A refused send (a device
// list that changed: CODE_DEVICE_MISMATCH) is re-encrypted for the current
// devices under a fresh id, since the relay stored nothing.
//
// Receiving is commit-then-ACK: an envelope's decryption (with its
// session update), the message it carries, the event announcing it, the
// delivery receipt it owes and the record that its server id was
// processed commit in one transaction — one per batch of envelopes that
// arrived together, with one receipt per sender — and only then is the
// envelope acknowledged. A crash in between makes the
// relay deliver it again, and the processed-id table turns the redelivery
// into a bare ACK: nothing lost, nothing shown twice. A message that cannot
// be decrypted is stored as a visible placeholder and answered with a
// RetryRequest, so the sender re-sends it on a fresh session.
//
// Conversations are ordered by each sender device's counter, carried
// inside the ciphertext, not by arrival or server time.
//
// Identity keys are trusted on first use. A changed key is recorded and
// reported (IdentityChangedEvent); under the Strict policy the contact's
// new messages are held and sending to the contact is refused until the
// user accepts the change (Trust). Safety numbers (SafetyNumber) are
// Signal's, per device pair.
//
// Groups use sender keys: one ciphertext per group message, shared by all
// member devices, with each member's key handed out pairwise. Membership
// lives only with the clients, in encrypted GroupUpdate messages whose
// highest revision wins. When a member is removed every remaining member
// rotates its sender key, so the removed member can read nothing sent
// afterwards.
//
// # Events
//
// Events arrive on Events() (a channel) or through Run (a handler with
// at-least-once delivery of durable events, for bots). Everything else is
// a query on the local database (History, Conversations, Contacts, Groups,
// Search) that never touches the network.
//
// The package prints nothing; it logs through log/slog, and never logs
// message text, keys or tokens. All timers run on Config.Clock with
// configurable intervals, so tests are fast and deterministic.
package client

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"os"
	"path/filepath"
	"sync"
	"syscall"
	"time"

	"github.com/hushchat/hush/client/store"
	"github.com/hushchat/hush/crypto"
	"github.com/hushchat/hush/keyserver/ksclient"
)

// Client is one device's hush client. Its methods are safe for concurrent
// use.
type Client struct {
	cfg      Config
	log      *slog.Logger
	clock    Clock
	db       *store.DB
	lockFile *os.File

	ctx       context.Context // canceled by Close
	cancel    context.CancelFunc
	wg        sync.WaitGroup
	closeOnce sync.Once
	closeErr  error

	events *dispatcher

	rndMu sync.Mutex
	rnd   *rand.Rand

	// mu guards everything below.
	mu           sync.Mutex
	acct         *store.Account // nil before registration
	identity     *crypto.IdentityKeyPair
	proto        *crypto.Protocol
	ks           *ksclient.Client
	started      bool
	state        ConnState
	stateErr     string
	sess         *session
	sessCh       chan struct{} // closed and replaced when sess changes
	syncedCh     chan struct{} // closed on QueueEmpty of the current connection
	statusCh     chan struct{} // closed and replaced when a message status changes
	ownDevices   []uint32      // this account's other devices, nil until known
	active       bool
	hideLastSeen bool
	presence     map[string]PresenceEvent
	retried      map[uint64]bool // retry requests answered, by server id
	retryBudgets map[crypto.Address]*budget
	lastReset    map[crypto.Address]time.Time
	// linkWatchUntil: a link code was issued; look for the new device.
	linkWatchUntil time.Time

	outboxWake chan struct{}
	keysWake   chan struct{}
	subWake    chan struct{}
	sweepWake  chan struct{}
}

// Open opens the profile in cfg.Home (creating it) and, when the profile
// has an account and cfg.Offline is false, starts connecting in the
// background. A new profile has no account: call Register or LinkDevice.
func Open(ctx context.Context, cfg Config) (*Client, error) {
	if cfg.Home == "" {
		return nil, errors.New("open profile: Config.Home is empty")
	}
	cfg.setDefaults()
	if err := os.MkdirAll(cfg.Home, 0o700); err != nil {
		return nil, fmt.Errorf("open profile: %w", err)
	}
	if err := os.Chmod(cfg.Home, 0o700); err != nil {
		return nil, fmt.Errorf("open profile: %w", err)
	}
	lf, err := lockProfile(filepath.Join(cfg.Home, "lock"))
	if err != nil {
		return nil, err
	}
	db, err := store.Open(ctx, filepath.Join(cfg.Home, "hush.db"))
	if err != nil {
		lf.Close()
		return nil, err
	}
	c := &Client{
		cfg:          cfg,
		log:          cfg.Logger.With("component", "client"),
		clock:        cfg.Clock,
		db:           db,
		lockFile:     lf,
		rnd:          rand.New(rand.NewPCG(rand.Uint64(), rand.Uint64())),
		sessCh:       make(chan struct{}),
		syncedCh:     make(chan struct{}),
		statusCh:     make(chan struct{}),
		active:       true,
		presence:     map[string]PresenceEvent{},
		retried:      map[uint64]bool{},
		retryBudgets: map[crypto.Address]*budget{},
		lastReset:    map[crypto.Address]time.Time{},
		outboxWake:   make(chan struct{}, 1),
		keysWake:     make(chan struct{}, 1),
		subWake:      make(chan struct{}, 1),
		sweepWake:    make(chan struct{}, 1),
	}
	c.ctx, c.cancel = context.WithCancel(context.WithoutCancel(ctx))
	c.events = newDispatcher(c)
	if v, ok, err := db.Setting(ctx, settingHideLastSeen); err != nil {
		c.Close()
		return nil, err
	} else if ok {
		c.hideLastSeen = v == "1"
	}
	acct, err := db.LoadAccount(ctx)
	switch {
	case errors.Is(err, store.ErrNotFound):
	case err != nil:
		c.Close()
		return nil, err
	case acct.DeviceID == 0:
		// A registration that crashed before the server answered: the
		// keys are here; Register or LinkDevice will finish it.
	default:
		if err := c.useAccount(acct); err != nil {
			c.Close()
			return nil, err
		}
		c.start()
	}
	return c, nil
}

const settingHideLastSeen = "presence.hide_last_seen"

// lockProfile takes an exclusive, non-blocking lock on path, so two
// processes never drive one profile (they would be one device twice, and
// the relay would keep only one connection).
func lockProfile(path string) (*os.File, error) {
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, fmt.Errorf("open profile lock: %w", err)
	}
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		f.Close()
		if errors.Is(err, syscall.EWOULDBLOCK) {
			return nil, fmt.Errorf("%w (%s)", ErrProfileLocked, filepath.Dir(path))
		}
		return nil, fmt.Errorf("lock profile: %w", err)
	}
	return f, nil
}

// useAccount sets up the protocol engine and the key server client for a
// registered account.
func (c *Client) useAccount(a *store.Account) error {
	id, err := crypto.ParseIdentityKeyPair(a.IdentityPrivate)
	if err != nil {
		return fmt.Errorf("load identity: %w", err)
	}
	p, err := crypto.New(crypto.Config{
		Address:        crypto.Address{Name: a.Name, DeviceID: a.DeviceID},
		Identity:       id,
		RegistrationID: a.RegistrationID,
		Store:          c.db,
		Logger:         c.cfg.Logger,
	})
	if err != nil {
		return fmt.Errorf("load protocol state: %w", err)
	}
	ks, err := ksclient.New(a.ServerURL, ksclient.WithHTTPClient(c.cfg.HTTPClient))
	if err != nil {
		return err
	}
	c.mu.Lock()
	c.acct, c.identity, c.proto, c.ks = a, id, p, ks
	c.mu.Unlock()
	return nil
}

// start launches the background workers once.
func (c *Client) start() {
	c.mu.Lock()
	if c.started || c.cfg.Offline || c.acct == nil {
		c.mu.Unlock()
		return
	}
	c.started = true
	c.mu.Unlock()
	c.goBackground(c.connLoop)
	c.goBackground(c.outboxLoop)
	c.goBackground(c.keysLoop)
	c.goBackground(c.sweepLoop)
}

func (c *Client) goBackground(fn func()) {
	c.wg.Add(1)
	go func() {
		defer c.wg.Done()
		fn()
	}()
}

// Close stops the client: it closes the connection, waits for the
// background work to stop (an envelope being processed is either committed
// or rolled back, never half-stored), closes the Events channel and the
// database, and releases the profile.
func (c *Client) Close() error {
	c.closeOnce.Do(func() {
		c.cancel()
		c.mu.Lock()
		if s := c.sess; s != nil {
			s.close()
		}
		c.mu.Unlock()
		c.wg.Wait()
		if c.cfg.ownHTTP {
			c.cfg.HTTPClient.CloseIdleConnections()
		}
		c.closeErr = errors.Join(c.db.Close(), c.lockFile.Close())
	})
	return c.closeErr
}

func (c *Client) rand() *rand.Rand {
	c.rndMu.Lock()
	defer c.rndMu.Unlock()
	// A child generator, so callers need no lock.
	return rand.New(rand.NewPCG(c.rnd.Uint64(), c.rnd.Uint64()))
}

// account returns the registered account, or ErrNotRegistered.
func (c *Client) account() (*store.Account, *crypto.Protocol, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.acct == nil {
		return nil, nil, ErrNotRegistered
	}
	return c.acct, c.proto, nil
}

// AccountInfo describes this device's account.
type AccountInfo struct {
	Name      string `json:"name"`
	DeviceID  uint32 `json:"device"`
	ServerURL string `json:"server"`
	RelayURL  string `json:"relay"`
	// IdentityKey is this device's 33-byte identity public key.
	IdentityKey []byte `json:"identity_key"`
}

// Account returns this device's account, or false before registration.
func (c *Client) Account() (AccountInfo, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.acct == nil {
		return AccountInfo{}, false
	}
	return AccountInfo{Name: c.acct.Name, DeviceID: c.acct.DeviceID, ServerURL: c.acct.ServerURL,
		RelayURL: c.acct.RelayURL, IdentityKey: c.identity.PublicKey()}, true
}

// wakeup signals a worker without blocking.
func wakeup(ch chan struct{}) {
	select {
	case ch <- struct{}{}:
	default:
	}
}

// statusChanged wakes WaitSent callers.
func (c *Client) statusChanged() {
	c.mu.Lock()
	close(c.statusCh)
	c.statusCh = make(chan struct{})
	c.mu.Unlock()
}

// tx runs fn in one database transaction and, after it committed, tells
// the event dispatcher about durable events fn appended.
func (c *Client) tx(ctx context.Context, fn func(ctx context.Context, t *txn) error) error {
	t := &txn{}
	err := c.db.Atomic(ctx, func(ctx context.Context) error {
		t.events, t.ephemeral, t.after = t.events[:0], t.ephemeral[:0], t.after[:0]
		t.status = false
		clear(t.receipts)
		return fn(ctx, t)
	})
	if err != nil {
		return err
	}
	if len(t.events) > 0 {
		c.events.committed(t.events[len(t.events)-1])
	}
	for _, ev := range t.ephemeral {
		c.events.emit(ev)
	}
	if t.status {
		c.statusChanged()
	}
	for _, fn := range t.after {
		fn()
	}
	return nil
}

// txn collects what a transaction must announce once it committed. fn
// may run twice (see store.DB.Atomic); c.tx empties it before each run.
type txn struct {
	events    []int64 // durable event seqs appended
	ephemeral []Event
	status    bool
	after     []func()
	// receipts: delivery receipts owed for the messages stored, by
	// sender. Whoever runs the transaction queues (queueReceipts) or
	// records (oweReceipts) them before it commits.
	receipts receipts
}

// owe notes a delivery receipt owed to sender for message id.
func (t *txn) owe(sender string, id []byte) {
	if t.receipts == nil {
		t.receipts = receipts{}
	}
	t.receipts[sender] = append(t.receipts[sender], id)
}

// emit appends a durable event in the transaction.
func (c *Client) emitDurable(ctx context.Context, t *txn, ev Event) error {
	data, err := jsonMarshal(ev)
	if err != nil {
		return fmt.Errorf("encode %s event: %w", ev.Type(), err)
	}
	seq, err := c.db.AppendEvent(ctx, ev.Type(), data, c.clock.Now())
	if err != nil {
		return err
	}
	t.events = append(t.events, seq)
	return nil
}
