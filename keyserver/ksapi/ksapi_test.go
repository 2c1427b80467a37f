package ksapi

import (
	"bytes"
	"crypto/ed25519"
	"testing"
)

func TestProofMessages(t *testing.T) {
	key := ed25519.PublicKey(bytes.Repeat([]byte{0xAA}, 32))
	nonce := bytes.Repeat([]byte{0x11}, 32)
	// Expected layouts written out by hand (docs/api.md).
	want := func(domain string, tail ...byte) []byte {
		var b []byte
		b = append(b, domain...)
		b = append(b, 0)
		b = append(b, bytes.Repeat([]byte{0xAA}, 32)...)
		b = append(b, bytes.Repeat([]byte{0x11}, 32)...)
		b = append(b, 5, 'a', 'l', 'i', 'c', 'e')
		return append(b, tail...)
	}
	reg, err := RegisterMessage(key, nonce, "alice")
	if err != nil || !bytes.Equal(reg, want("hush-keyserver-register-v1")) {
		t.Fatalf("register message %q, %v", reg, err)
	}
	add, err := AddDeviceMessage(key, nonce, "alice")
	if err != nil || !bytes.Equal(add, want("hush-keyserver-add-device-v1")) {
		t.Fatalf("add-device message %q, %v", add, err)
	}
	login, err := LoginMessage(key, nonce, "alice", 7)
	if err != nil || !bytes.Equal(login, want("hush-keyserver-login-v1", 7)) {
		t.Fatalf("login message %q, %v", login, err)
	}
	for _, bad := range []func() error{
		func() error { _, err := RegisterMessage(key[:31], nonce, "alice"); return err },
		func() error { _, err := RegisterMessage(key, nonce[:31], "alice"); return err },
		func() error { _, err := RegisterMessage(key, nonce, ""); return err },
		func() error { _, err := LoginMessage(key, nonce, "alice", 0); return err },
		func() error { _, err := LoginMessage(key, nonce, "alice", 128); return err },
	} {
		if bad() == nil {
			t.Error("invalid input accepted")
		}
	}
}
