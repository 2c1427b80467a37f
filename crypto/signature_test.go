package crypto

import (
	"bytes"
	"errors"
	"testing"

	"go.mau.fi/libsignal/ecc"
)

func TestVerifySignature(t *testing.T) {
	kp, err := ecc.GenerateKeyPair()
	if err != nil {
		t.Fatal(err)
	}
	pub := kp.PublicKey().Serialize()
	msg := []byte("signed prekey bytes")
	sig := ecc.CalculateSignature(kp.PrivateKey(), msg)

	if err := VerifySignature(pub, msg, sig[:]); err != nil {
		t.Fatalf("valid signature rejected: %v", err)
	}

	flipped := bytes.Clone(sig[:])
	flipped[10] ^= 1
	wrongType := bytes.Clone(pub)
	wrongType[0] = 0x06
	for _, tc := range []struct {
		name          string
		key, msg, sig []byte
		want          error
	}{
		{"bad signature", pub, msg, flipped, ErrBadSignature},
		{"other message", pub, []byte("other"), sig[:], ErrBadSignature},
		{"short key", pub[:32], msg, sig[:], ErrPublicKeySize},
		{"empty key", nil, msg, sig[:], ErrPublicKeySize},
		{"key type", wrongType, msg, sig[:], ErrPublicKeyType},
		{"short signature", pub, msg, sig[:63], ErrSignatureSize},
		{"long signature", pub, msg, append(bytes.Clone(sig[:]), 0), ErrSignatureSize},
	} {
		err := VerifySignature(tc.key, tc.msg, tc.sig)
		if !errors.Is(err, tc.want) {
			t.Errorf("%s: got %v, want %v", tc.name, err, tc.want)
		}
	}
}

func FuzzVerifySignature(f *testing.F) {
	kp, _ := ecc.GenerateKeyPair()
	pub := kp.PublicKey().Serialize()
	sig := ecc.CalculateSignature(kp.PrivateKey(), []byte("m"))
	f.Add(pub, []byte("m"), sig[:])
	f.Add([]byte{5}, []byte{}, []byte{1, 2})
	f.Fuzz(func(t *testing.T, key, msg, sig []byte) {
		_ = VerifySignature(key, msg, sig)
	})
}
