package presence

import (
	"context"
	"sync"
	"time"

	"github.com/hushchat/hush/server/queue"
)

// Options tune a Memory tracker.
type Options struct {
	// OnlineWindow: how long a heartbeat keeps an account online (default
	// DefaultOnlineWindow).
	OnlineWindow time.Duration
	// CheckInterval: how often online accounts are checked for going
	// offline (default OnlineWindow/10, at least 10 ms). An offline event
	// comes at most this late.
	CheckInterval time.Duration
	// Now is the clock; nil means time.Now.
	Now func() time.Time
}

// Memory is an in-process Tracker.
type Memory struct {
	opts Options

	mu       sync.Mutex
	lastSeen map[string]time.Time             // account → latest heartbeat
	online   map[string]struct{}              // accounts currently online
	hidden   map[string]struct{}              // accounts hiding last-seen
	subs     map[queue.Device]map[string]bool // device → accounts it follows
	devices  map[string]map[uint32]struct{}   // account → its devices with subscriptions
	watch    func(Event)

	stop chan struct{}
	done chan struct{}
}

// NewMemory starts an in-process tracker; Close stops its timer.
func NewMemory(opts Options) *Memory {
	if opts.OnlineWindow <= 0 {
		opts.OnlineWindow = DefaultOnlineWindow
	}
	if opts.CheckInterval <= 0 {
		opts.CheckInterval = max(opts.OnlineWindow/10, 10*time.Millisecond)
	}
	if opts.Now == nil {
		opts.Now = time.Now
	}
	m := &Memory{
		opts:     opts,
		lastSeen: make(map[string]time.Time),
		online:   make(map[string]struct{}),
		hidden:   make(map[string]struct{}),
		subs:     make(map[queue.Device]map[string]bool),
		devices:  make(map[string]map[uint32]struct{}),
		stop:     make(chan struct{}),
		done:     make(chan struct{}),
	}
	go m.expireLoop()
	return m
}

func (m *Memory) expireLoop() {
	defer close(m.done)
	t := time.NewTicker(m.opts.CheckInterval)
	defer t.Stop()
	for {
		select {
		case <-m.stop:
			return
		case <-t.C:
			m.expire()
		}
	}
}

// expire marks accounts whose last heartbeat left the window as offline.
func (m *Memory) expire() {
	now := m.opts.Now()
	var went []string
	m.mu.Lock()
	for a := range m.online {
		if now.Sub(m.lastSeen[a]) >= m.opts.OnlineWindow {
			delete(m.online, a)
			went = append(went, a)
		}
	}
	fn := m.watch
	m.mu.Unlock()
	if fn != nil {
		for _, a := range went {
			fn(Event{Subject: a})
		}
	}
}

// Heartbeat implements Tracker.
func (m *Memory) Heartbeat(_ context.Context, account string) error {
	m.mu.Lock()
	m.lastSeen[account] = m.opts.Now()
	_, was := m.online[account]
	m.online[account] = struct{}{}
	fn := m.watch
	m.mu.Unlock()
	if !was && fn != nil {
		fn(Event{Subject: account})
	}
	return nil
}

// SetHidden implements Tracker.
func (m *Memory) SetHidden(_ context.Context, account string, hidden bool) error {
	m.mu.Lock()
	_, was := m.hidden[account]
	if hidden {
		m.hidden[account] = struct{}{}
	} else {
		delete(m.hidden, account)
	}
	fn := m.watch
	m.mu.Unlock()
	if was != hidden && fn != nil {
		fn(Event{Subject: account}) // what others see of account
		fn(Event{Viewer: account})  // what account sees of others
	}
	return nil
}

// Subscribe implements Tracker.
func (m *Memory) Subscribe(_ context.Context, d queue.Device, accounts []string) error {
	set := make(map[string]bool, len(accounts))
	for _, a := range accounts {
		if a != d.Account {
			set[a] = true
		}
	}
	m.mu.Lock()
	before := m.followsLocked(d.Account)
	if len(set) == 0 {
		m.dropLocked(d)
	} else {
		m.subs[d] = set
		if m.devices[d.Account] == nil {
			m.devices[d.Account] = make(map[uint32]struct{})
		}
		m.devices[d.Account][d.ID] = struct{}{}
	}
	after := m.followsLocked(d.Account)
	fn := m.watch
	m.mu.Unlock()
	if fn == nil {
		return nil
	}
	// Consent between d.Account and S changed for every S the account
	// started or stopped following: S's view of d.Account may change.
	for s := range after {
		if !before[s] {
			fn(Event{Subject: d.Account, Viewer: s})
		}
	}
	for s := range before {
		if !after[s] {
			fn(Event{Subject: d.Account, Viewer: s})
		}
	}
	return nil
}

func (m *Memory) dropLocked(d queue.Device) {
	delete(m.subs, d)
	if devs := m.devices[d.Account]; devs != nil {
		delete(devs, d.ID)
		if len(devs) == 0 {
			delete(m.devices, d.Account)
		}
	}
}

// Forget implements Tracker.
func (m *Memory) Forget(ctx context.Context, d queue.Device) error {
	return m.Subscribe(ctx, d, nil)
}

// followsLocked returns the union of the account's devices' subscriptions.
func (m *Memory) followsLocked(account string) map[string]bool {
	out := make(map[string]bool)
	for id := range m.devices[account] {
		for s := range m.subs[queue.Device{Account: account, ID: id}] {
			out[s] = true
		}
	}
	return out
}

func (m *Memory) followsOneLocked(account, subject string) bool {
	for id := range m.devices[account] {
		if m.subs[queue.Device{Account: account, ID: id}][subject] {
			return true
		}
	}
	return false
}

// View implements Tracker.
func (m *Memory) View(_ context.Context, viewer string, subjects []string) ([]Status, error) {
	var out []Status
	m.mu.Lock()
	defer m.mu.Unlock()
	_, viewerHides := m.hidden[viewer]
	for _, s := range subjects {
		if s == viewer || !m.followsOneLocked(viewer, s) || !m.followsOneLocked(s, viewer) {
			continue
		}
		_, online := m.online[s]
		_, subjectHides := m.hidden[s]
		st := Status{Account: s, Online: online, Hidden: viewerHides || subjectHides}
		if !st.Hidden {
			st.LastSeen = m.lastSeen[s]
		}
		out = append(out, st)
	}
	return out, nil
}

// Watch implements Tracker. Events are delivered synchronously from the
// goroutine that caused them (or the expiry timer); fn must not block.
func (m *Memory) Watch(fn func(Event)) {
	m.mu.Lock()
	m.watch = fn
	m.mu.Unlock()
}

// Close stops the expiry timer.
func (m *Memory) Close() error {
	select {
	case <-m.stop:
	default:
		close(m.stop)
	}
	<-m.done
	return nil
}
