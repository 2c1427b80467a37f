package crypto

import (
	"bytes"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"testing"
)

func TestRegistrationIDRange(t *testing.T) {
	for range 2000 {
		id, err := GenerateRegistrationID()
		if err != nil {
			t.Fatal(err)
		}
		if id < 1 || id > 16380 {
			t.Fatalf("registration id %d out of range", id)
		}
	}
	for id, ok := range map[uint32]bool{0: false, 1: true, 16380: true, 16381: false} {
		if err := ValidateRegistrationID(id); (err == nil) != ok || (err != nil && !errors.Is(err, ErrRegistrationID)) {
			t.Errorf("ValidateRegistrationID(%d) = %v", id, err)
		}
	}
	for id, ok := range map[uint32]bool{0: false, 1: true, 127: true, 128: false} {
		if err := ValidateDeviceID(id); (err == nil) != ok || (err != nil && !errors.Is(err, ErrDeviceID)) {
			t.Errorf("ValidateDeviceID(%d) = %v", id, err)
		}
	}
}

func TestPreKeyIDsWrap(t *testing.T) {
	keys, next, err := GeneratePreKeys(0xFFFFFD, 4)
	if err != nil {
		t.Fatal(err)
	}
	var got []uint32
	for _, k := range keys {
		got = append(got, k.ID())
		if p := k.Public(); p.ID != k.ID() || len(p.PublicKey) != PublicKeySize || p.PublicKey[0] != 5 {
			t.Fatalf("bad public prekey %+v", p)
		}
	}
	if want := []uint32{0xFFFFFD, 0xFFFFFE, 1, 2}; fmt.Sprint(got) != fmt.Sprint(want) || next != 3 {
		t.Fatalf("ids %v next %d, want %v next 3", got, next, want)
	}
	if _, _, err := GeneratePreKeys(0, 1); !errors.Is(err, ErrPreKeyID) {
		t.Fatalf("start 0: %v", err)
	}
	if _, _, err := GeneratePreKeys(LastResortPreKeyID, 1); !errors.Is(err, ErrPreKeyID) {
		t.Fatalf("start at last-resort id: %v", err)
	}
	for _, n := range []int{0, MaxPreKeyBatch + 1} {
		if _, _, err := GeneratePreKeys(1, n); !errors.Is(err, ErrPreKeyCount) {
			t.Fatalf("count %d: %v", n, err)
		}
	}
	last, err := GenerateLastResortPreKey()
	if err != nil || last.ID() != 0xFFFFFF {
		t.Fatalf("last resort id %d, %v", last.ID(), err)
	}
}

func TestIdentityKeyPair(t *testing.T) {
	id, err := GenerateIdentityKeyPair()
	if err != nil {
		t.Fatal(err)
	}
	again, err := ParseIdentityKeyPair(id.PrivateKey())
	if err != nil || !bytes.Equal(again.PublicKey(), id.PublicKey()) {
		t.Fatalf("round trip: %v", err)
	}
	sig, _ := again.Sign([]byte("m"))
	if err := VerifySignature(id.PublicKey(), []byte("m"), sig); err != nil {
		t.Fatal(err)
	}
	if _, err := ParseIdentityKeyPair(make([]byte, 31)); !errors.Is(err, ErrPrivateKeySize) {
		t.Fatalf("short private key: %v", err)
	}
	// Printing or logging never shows the private key.
	priv := hex.EncodeToString(id.PrivateKey())
	var logged strings.Builder
	slog.New(slog.NewTextHandler(&logged, nil)).Info("x", "id", id)
	for _, s := range []string{fmt.Sprint(id), fmt.Sprintf("%v %+v %#v", id, id, id), logged.String()} {
		if strings.Contains(s, priv) || strings.Contains(s, fmt.Sprint(id.PrivateKey())) {
			t.Fatalf("private key printed: %s", s)
		}
	}
	spk, err := GenerateSignedPreKey(id, 7)
	if err != nil {
		t.Fatal(err)
	}
	p := spk.Public()
	if err := VerifySignature(id.PublicKey(), p.PublicKey, p.Signature); err != nil || p.ID != 7 {
		t.Fatalf("signed prekey: %+v %v", p, err)
	}
	if _, err := GenerateSignedPreKey(id, 0); !errors.Is(err, ErrPreKeyID) {
		t.Fatalf("signed prekey id 0: %v", err)
	}
}
