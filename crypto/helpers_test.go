package crypto

import (
	"context"
	"io"
	"log/slog"
	"testing"
)

// device is one test party: a Protocol over a MemoryStore with published
// keys.
type device struct {
	*Protocol
	store *MemoryStore
	spk   *SignedPreKey
	pks   []*PreKey
	last  *PreKey
}

var quiet = slog.New(slog.NewTextHandler(io.Discard, nil))

func newDevice(tb testing.TB, name string, deviceID uint32, preKeys int) *device {
	tb.Helper()
	ctx := context.Background()
	id, err := GenerateIdentityKeyPair()
	if err != nil {
		tb.Fatal(err)
	}
	reg, err := GenerateRegistrationID()
	if err != nil {
		tb.Fatal(err)
	}
	st := NewMemoryStore()
	p, err := New(Config{Address: Address{name, deviceID}, Identity: id, RegistrationID: reg, Store: st, Logger: quiet})
	if err != nil {
		tb.Fatal(err)
	}
	spk, err := GenerateSignedPreKey(id, 1)
	if err != nil {
		tb.Fatal(err)
	}
	if err := p.StoreSignedPreKey(ctx, spk); err != nil {
		tb.Fatal(err)
	}
	d := &device{Protocol: p, store: st, spk: spk}
	if preKeys > 0 {
		d.pks, _, err = GeneratePreKeys(1, preKeys)
		if err != nil {
			tb.Fatal(err)
		}
		if err := p.StorePreKeys(ctx, d.pks); err != nil {
			tb.Fatal(err)
		}
	}
	d.last, err = GenerateLastResortPreKey()
	if err != nil {
		tb.Fatal(err)
	}
	if err := p.StorePreKeys(ctx, []*PreKey{d.last}); err != nil {
		tb.Fatal(err)
	}
	return d
}

// bundle returns d's bundle with one-time prekey i (or the last-resort key
// when i < 0).
func (d *device) bundle(i int) Bundle {
	pk := d.last
	if i >= 0 {
		pk = d.pks[i]
	}
	return MakeBundle(d.identity, d.registrationID, d.self.DeviceID, d.spk, pk)
}

// connect makes a start a session with b using b's prekey i.
func connect(tb testing.TB, a, b *device, i int) {
	tb.Helper()
	if err := a.ProcessBundle(context.Background(), b.Address(), b.bundle(i)); err != nil {
		tb.Fatal(err)
	}
}
