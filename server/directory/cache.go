package directory

import (
	"context"
	"errors"
	"slices"
	"sync"
	"time"
)

// CacheOptions tune a Cache. Zero values take the defaults.
type CacheOptions struct {
	// TTL is how long a device list is trusted without a notification
	// (default 10 s). It bounds how long a removed device can still connect
	// when invalidations cannot reach this relay.
	TTL time.Duration
	// NegativeTTL is how long "no such account" is remembered (default 2 s):
	// short, because the name may be registered any moment.
	NegativeTTL time.Duration
	// MaxEntries bounds the memory of the cache (default 100,000 accounts).
	MaxEntries int
	// Now is the clock; nil means time.Now.
	Now func() time.Time
}

// Cache is a Directory that remembers answers of another one for a short
// time. Concurrent misses for one account share a single lookup, and
// Invalidate drops an account at once — including a lookup still in flight,
// whose (possibly stale) answer is then not kept.
type Cache struct {
	src  Directory
	opts CacheOptions

	mu       sync.Mutex
	entries  map[string]cacheEntry
	inflight map[string]*lookup
}

type cacheEntry struct {
	devices []uint32
	unknown bool
	expires time.Time
}

type lookup struct {
	done    chan struct{}
	devices []uint32
	err     error
	stale   bool // invalidated while in flight: do not cache the answer
}

// NewCache wraps src.
func NewCache(src Directory, opts CacheOptions) *Cache {
	if opts.TTL <= 0 {
		opts.TTL = 10 * time.Second
	}
	if opts.NegativeTTL <= 0 {
		opts.NegativeTTL = 2 * time.Second
	}
	if opts.MaxEntries <= 0 {
		opts.MaxEntries = 100_000
	}
	if opts.Now == nil {
		opts.Now = time.Now
	}
	return &Cache{src: src, opts: opts, entries: make(map[string]cacheEntry), inflight: make(map[string]*lookup)}
}

// Devices answers from the cache or asks the source.
func (c *Cache) Devices(ctx context.Context, account string) ([]uint32, error) {
	now := c.opts.Now()
	c.mu.Lock()
	if e, ok := c.entries[account]; ok && now.Before(e.expires) {
		c.mu.Unlock()
		if e.unknown {
			return nil, &UnknownAccountError{Account: account}
		}
		return e.devices, nil
	}
	l, ok := c.inflight[account]
	if !ok {
		l = &lookup{done: make(chan struct{})}
		c.inflight[account] = l
		c.mu.Unlock()
		go c.fill(account, l)
	} else {
		c.mu.Unlock()
	}
	select {
	case <-l.done:
		return l.devices, l.err
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

// fill runs one lookup on behalf of every waiter. It uses its own context
// so that one impatient caller does not fail the others.
func (c *Cache) fill(account string, l *lookup) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	devices, err := c.src.Devices(ctx, account)
	cancel()
	if err == nil {
		devices = slices.Clone(devices)
		slices.Sort(devices)
	}
	l.devices, l.err = devices, err

	c.mu.Lock()
	if c.inflight[account] == l {
		delete(c.inflight, account)
	}
	if !l.stale {
		now := c.opts.Now()
		switch {
		case err == nil:
			c.put(account, cacheEntry{devices: devices, expires: now.Add(c.opts.TTL)})
		case errors.Is(err, ErrUnknownAccount):
			c.put(account, cacheEntry{unknown: true, expires: now.Add(c.opts.NegativeTTL)})
		}
	}
	c.mu.Unlock()
	close(l.done)
}

// put stores e, first making room if the cache is full: expired entries go,
// then arbitrary ones (map order is random, so no account is favoured).
func (c *Cache) put(account string, e cacheEntry) {
	if len(c.entries) >= c.opts.MaxEntries {
		now := c.opts.Now()
		for k, v := range c.entries {
			if !now.Before(v.expires) {
				delete(c.entries, k)
			}
		}
		for k := range c.entries {
			if len(c.entries) < c.opts.MaxEntries*9/10 {
				break
			}
			delete(c.entries, k)
		}
	}
	c.entries[account] = e
}

// Invalidate forgets account, so the next Devices asks the source. A
// lookup already in flight still answers its waiters but is not cached.
func (c *Cache) Invalidate(account string) {
	c.mu.Lock()
	delete(c.entries, account)
	if l, ok := c.inflight[account]; ok {
		l.stale = true
		delete(c.inflight, account)
	}
	c.mu.Unlock()
}

// Len returns the number of cached accounts.
func (c *Cache) Len() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.entries)
}
