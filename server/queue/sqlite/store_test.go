package sqlite

import (
	"context"
	"errors"
	"path/filepath"
	"sync"
	"testing"

	"github.com/hushchat/hush/server/queue"
	"github.com/hushchat/hush/server/queue/queuetest"
)

// opener opens one database file per test (reopening the same file when a
// test opens again) and, after the test, checks the file's invariants.
func opener() queuetest.Opener {
	var mu sync.Mutex
	paths := map[*testing.T]string{}
	return func(t *testing.T, opts queue.Options) queue.Store {
		t.Helper()
		mu.Lock()
		path, again := paths[t]
		if !again {
			path = filepath.Join(t.TempDir(), "queue.db")
			paths[t] = path
		}
		mu.Unlock()
		s, err := Open(path, opts)
		if err != nil {
			t.Fatalf("Open: %v", err)
		}
		if !again {
			// Registered before the suite's Close, so it runs after it.
			t.Cleanup(func() { checkFile(t, path, opts) })
		}
		return checked{s, t}
	}
}

// checked checks the live store (including the writer's in-memory counts)
// before each Close.
type checked struct {
	*Store
	t *testing.T
}

func (c checked) Close() error {
	if err := c.Check(context.Background()); err != nil && !errors.Is(err, queue.ErrClosed) {
		c.t.Errorf("before Close: %v", err)
	}
	return c.Store.Close()
}

// checkFile reopens a closed database and verifies its invariants.
func checkFile(t *testing.T, path string, opts queue.Options) {
	t.Helper()
	s, err := Open(path, opts)
	if err != nil {
		t.Errorf("reopen for check: %v", err)
		return
	}
	defer s.Close()
	if err := s.Check(context.Background()); err != nil {
		t.Error(err)
	}
}

func TestStore(t *testing.T) {
	t.Run("sqlite", func(t *testing.T) { queuetest.Run(t, opener()) })
}
