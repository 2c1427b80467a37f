package crypto

import (
	"bytes"
	"container/list"
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
// Memory is bounded: at most sessionCacheEntries records, at most
// sessionCacheBytes of stored bytes in total (the decoded record is a small
// multiple of that), least recently stored evicted first; a record larger
// than sessionCacheMaxRecord is never kept.
type sessionCache struct {
	mu    sync.Mutex
	lru   list.List // of *cachedSession, most recently stored first
	byKey map[Address]*list.Element
	bytes int

	hits, misses uint64 // takes that found a matching entry, or not
}

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
	return &sessionCache{byKey: map[Address]*list.Element{}}
}

// take returns the record decoded from raw, when the cache has one for
// addr, and removes addr's entry either way.
func (c *sessionCache) take(addr Address, raw []byte) *record.Session {
	c.mu.Lock()
	defer c.mu.Unlock()
	e, ok := c.byKey[addr]
	if !ok {
		c.misses++
		return nil
	}
	s := c.remove(e)
	if !bytes.Equal(s.raw, raw) {
		c.misses++
		return nil
	}
	c.hits++
	return s.rec
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
	if e, ok := c.byKey[addr]; ok {
		c.remove(e)
	}
	c.byKey[addr] = c.lru.PushFront(&cachedSession{addr: addr, raw: raw, rec: rec})
	c.bytes += len(raw)
	for c.lru.Len() > sessionCacheEntries || c.bytes > sessionCacheBytes {
		c.remove(c.lru.Back())
	}
}

// drop forgets addr.
func (c *sessionCache) drop(addr Address) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if e, ok := c.byKey[addr]; ok {
		c.remove(e)
	}
}

func (c *sessionCache) remove(e *list.Element) *cachedSession {
	s := c.lru.Remove(e).(*cachedSession)
	delete(c.byKey, s.addr)
	c.bytes -= len(s.raw)
	return s
}

// stats reports the number of entries, their stored bytes, and the takes
// that hit and missed (for tests).
func (c *sessionCache) stats() (entries, bytes int, hits, misses uint64) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.lru.Len(), c.bytes, c.hits, c.misses
}
