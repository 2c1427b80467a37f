package store

import (
	"context"
	"testing"
)

// A read racing Close (the TUI's background commands can still be in flight
// when the client closes) gets an error, never a panic from the statement
// cache.
func TestUseAfterCloseFails(t *testing.T) {
	db, err := Open(context.Background(), t.TempDir()+"/hush.db")
	if err != nil {
		t.Fatal(err)
	}
	if err := db.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := db.Conversations(context.Background()); err == nil {
		t.Fatal("Conversations on a closed database succeeded")
	}
}

// The race behind it, made deterministic: a statement prepared on a pool
// that is still open, arriving after the cache was closed, must be dropped
// rather than stored in the closed cache.
func TestStmtCacheClosedWhilePreparing(t *testing.T) {
	db, err := Open(context.Background(), t.TempDir()+"/hush.db")
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	c := newStmtCache(db.w)
	c.close()
	if _, err := c.get(context.Background(), "SELECT 1", false); err != errCacheClosed {
		t.Fatalf("get after close: %v, want errCacheClosed", err)
	}
}
