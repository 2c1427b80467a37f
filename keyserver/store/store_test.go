package store_test

import (
	"context"
	"path/filepath"
	"testing"

	"github.com/hushchat/hush/keyserver/store"
	"github.com/hushchat/hush/keyserver/store/sqlite"
	"github.com/hushchat/hush/keyserver/store/storetest"
)

// TestStore runs the conformance suite on every backend, as subtests named
// by backend.
func TestStore(t *testing.T) {
	t.Run("sqlite", func(t *testing.T) {
		storetest.Run(t, func(t *testing.T) store.Store {
			st, err := sqlite.Open(context.Background(), filepath.Join(t.TempDir(), "keys.db"))
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { st.Close() })
			return st
		})
	})
}
