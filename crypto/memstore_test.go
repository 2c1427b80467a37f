package crypto

import (
	"bytes"
	"context"
	"errors"
	"testing"
)

func TestMemoryStoreAtomicRollback(t *testing.T) {
	ctx := context.Background()
	s := NewMemoryStore()
	a := Address{"a", 1}
	if err := s.StoreSession(ctx, a, []byte("v1")); err != nil {
		t.Fatal(err)
	}
	boom := errors.New("boom")
	err := s.Atomic(ctx, func(ctx context.Context) error {
		_ = s.StoreSession(ctx, a, []byte("v2"))
		_ = s.StoreSession(ctx, Address{"b", 1}, []byte("new"))
		_ = s.StorePreKey(ctx, 5, []byte("pk"))
		_ = s.StoreIdentity(ctx, a, IdentityRecord{Key: []byte{5}})
		_ = s.StoreSenderKey(ctx, "g", a, []byte("sk"))
		if got, _ := s.LoadSession(ctx, a); !bytes.Equal(got, []byte("v2")) {
			t.Errorf("own write not visible inside Atomic: %q", got)
		}
		// Nested Atomic joins the outer one.
		return s.Atomic(ctx, func(ctx context.Context) error {
			_ = s.DeleteSession(ctx, a)
			return boom
		})
	})
	if !errors.Is(err, boom) {
		t.Fatalf("got %v", err)
	}
	if got, _ := s.LoadSession(ctx, a); !bytes.Equal(got, []byte("v1")) {
		t.Fatalf("session not rolled back: %q", got)
	}
	for _, err := range []error{
		func() error { _, err := s.LoadSession(ctx, Address{"b", 1}); return err }(),
		func() error { _, err := s.LoadPreKey(ctx, 5); return err }(),
		func() error { _, err := s.LoadIdentity(ctx, a); return err }(),
		func() error { _, err := s.LoadSenderKey(ctx, "g", a); return err }(),
	} {
		if !errors.Is(err, ErrNotFound) {
			t.Fatalf("write survived rollback: %v", err)
		}
	}
	// Returned records are copies.
	got, _ := s.LoadSession(ctx, a)
	got[0] = 'X'
	if again, _ := s.LoadSession(ctx, a); !bytes.Equal(again, []byte("v1")) {
		t.Fatal("store aliased a returned record")
	}
	ids, _ := s.SessionDeviceIDs(ctx, "a")
	if len(ids) != 1 || ids[0] != 1 {
		t.Fatalf("device ids %v", ids)
	}
	cctx, cancel := context.WithCancel(ctx)
	cancel()
	if err := s.Atomic(cctx, func(context.Context) error { return nil }); !errors.Is(err, context.Canceled) {
		t.Fatalf("cancelled context: %v", err)
	}
}

func TestAddressValidate(t *testing.T) {
	for a, ok := range map[Address]bool{{"a", 1}: true, {"a", 127}: true, {"", 1}: false, {"a", 0}: false, {"a", 128}: false} {
		if err := a.Validate(); (err == nil) != ok {
			t.Errorf("%v: %v", a, err)
		}
	}
}
