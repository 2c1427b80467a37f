package crypto

import (
	"bytes"
	"sync"

	"go.mau.fi/libsignal/state/record"
)

// sessionCache keeps the decoded form of recently stored session records,
// so that the next operation with the same device does not decode the
// whole record again.
//
// The Store stays the only truth. An entry is the pair (bytes stored,
// record those bytes decode to), remembered after an operation that stored
// them succeeded, and it is used only when the Store hands back exactly
// those bytes. So a rolled-back transaction (ours or an enclosing one),
// another Protocol or process writing the same Store, a record deleted and
// re-created, or a restored backup can never make the cache serve a stale
// record: the bytes differ and the record is decoded as before.
//
// An entry is removed when it is used: the operation owns (and mutates) the
// record, and only a successful store puts one back. Two operations can
// therefore never share a record, and a failed operation, which may have
// changed the record it took, leaves nothing behind.
//
// Memory is bounded: at most sessionCacheEntries devices, at most
// sessionCacheBytes of stored bytes in total (the decoded record is a small
// multiple of that), least recently stored evicted first; a record larger
// than sessionCacheMaxRecord is never kept.
type sessionCache struct {
	mu     sync.Mutex
	byKey  map[Address]*cacheNode
	head   cacheNode // sentinel of the LRU ring: head.next is the most recently stored
	live   int       // nodes holding a record
	bytes  int       // stored bytes of those records
	hits   uint64    // takes that found a matching record
	misses uint64    // takes that did not
}

// cacheNode is one device's slot. A take empties it rather than freeing
// it, so the put that follows (the same operation storing the record)
// reuses it and a message costs no cache allocation.
type cacheNode struct {
	addr       Address
	raw        []byte
	rec        *record.Session // nil: empty slot
	prev, next *cacheNode
}

// cachedSession is a record an operation stored, waiting for the
// operation to succeed.
type cachedSession struct {
	addr Address
	raw  []byte
	rec  *record.Session
}

const (
	sessionCacheEntries   = 512
	sessionCacheBytes     = 8 << 20
	sessionCacheMaxRecord = 256 << 10
)

func newSessionCache() *sessionCache {
	c := &sessionCache{byKey: map[Address]*cacheNode{}}
	c.head.prev, c.head.next = &c.head, &c.head
	return c
}

// take returns the record decoded from raw, when the cache has one for
// addr, and empties addr's slot either way.
func (c *sessionCache) take(addr Address, raw []byte) *record.Session {
	c.mu.Lock()
	defer c.mu.Unlock()
	n, ok := c.byKey[addr]
	if !ok || n.rec == nil {
		c.misses++
		return nil
	}
	rec, match := n.rec, bytes.Equal(n.raw, raw)
	c.empty(n)
	if !match {
		c.misses++
		return nil
	}
	c.hits++
	return rec
}

// put remembers rec as the decoding of raw, the bytes just stored for
// addr. The caller gives up rec: it must not change it afterwards.
func (c *sessionCache) put(addr Address, raw []byte, rec *record.Session) {
	// A fresh record (NewSession) differs from its decoding: the library
	// archives the current state of a decoded record before building a new
	// session in it, but not that of a fresh one.
	if rec.IsFresh() || len(raw) > sessionCacheMaxRecord {
		c.drop(addr)
		return
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	n, ok := c.byKey[addr]
	if ok {
		c.empty(n)
		n.unlink()
	} else {
		n = &cacheNode{addr: addr}
		c.byKey[addr] = n
	}
	n.raw, n.rec = raw, rec
	c.live++
	c.bytes += len(raw)
	n.prev, n.next = &c.head, c.head.next
	n.prev.next, n.next.prev = n, n
	for len(c.byKey) > sessionCacheEntries || c.bytes > sessionCacheBytes {
		c.remove(c.head.prev)
	}
}

// drop forgets addr.
func (c *sessionCache) drop(addr Address) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if n, ok := c.byKey[addr]; ok {
		c.remove(n)
	}
}

func (c *sessionCache) empty(n *cacheNode) {
	if n.rec != nil {
		c.live--
		c.bytes -= len(n.raw)
	}
	n.raw, n.rec = nil, nil
}

func (c *sessionCache) remove(n *cacheNode) {
	c.empty(n)
	n.unlink()
	delete(c.byKey, n.addr)
}

func (n *cacheNode) unlink() {
	n.prev.next, n.next.prev = n.next, n.prev
	n.prev, n.next = nil, nil
}

// stats reports the records held, their stored bytes, and the takes that
// hit and missed (for tests).
func (c *sessionCache) stats() (entries, bytes int, hits, misses uint64) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.live, c.bytes, c.hits, c.misses
}
