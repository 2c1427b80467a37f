package authtoken

import (
	"crypto/ed25519"
	"crypto/rand"
	"encoding/base64"
	"errors"
	"strings"
	"testing"
	"time"
)

func newKey(t testing.TB) (ed25519.PublicKey, ed25519.PrivateKey) {
	t.Helper()
	pub, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return pub, priv
}

var t0 = time.Date(2026, 11, 26, 12, 0, 0, 0, time.UTC)

func claims() Claims {
	return Claims{Account: "alice", Device: 3, IssuedAt: t0, Expiry: t0.Add(24 * time.Hour)}
}

func TestRoundTrip(t *testing.T) {
	pub, priv := newKey(t)
	c := claims()
	c.IssuedAt = c.IssuedAt.Add(1234567 * time.Nanosecond) // truncated to 1 ms
	tok, err := Issue(priv, c)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(tok, "v1.") || strings.Count(tok, ".") != 2 {
		t.Fatalf("token %q is not v1.<payload>.<sig>", tok)
	}
	got, err := Verify(pub, tok, t0.Add(time.Hour))
	if err != nil {
		t.Fatal(err)
	}
	want := Claims{Account: "alice", Device: 3, IssuedAt: t0.Add(time.Millisecond), Expiry: t0.Add(24 * time.Hour)}
	if got != want {
		t.Fatalf("claims = %+v, want %+v", got, want)
	}
}

func TestExpiry(t *testing.T) {
	pub, priv := newKey(t)
	tok, err := Issue(priv, claims())
	if err != nil {
		t.Fatal(err)
	}
	exp := t0.Add(24 * time.Hour)
	if _, err := Verify(pub, tok, exp.Add(-time.Millisecond)); err != nil {
		t.Fatalf("1 ms before expiry: %v", err)
	}
	for _, now := range []time.Time{exp, exp.Add(time.Second), exp.Add(1000 * time.Hour)} {
		if _, err := Verify(pub, tok, now); !errors.Is(err, ErrExpired) {
			t.Errorf("at %v: err = %v, want ErrExpired", now, err)
		}
	}
}

func TestForgedAndTampered(t *testing.T) {
	pub, priv := newKey(t)
	otherPub, otherPriv := newKey(t)
	tok, err := Issue(priv, claims())
	if err != nil {
		t.Fatal(err)
	}
	now := t0.Add(time.Minute)

	// Signed by another key: refused by ours, accepted by its own.
	forged, err := Issue(otherPriv, claims())
	if err != nil {
		t.Fatal(err)
	}
	if _, err := Verify(pub, forged, now); !errors.Is(err, ErrBadSignature) {
		t.Errorf("forged: err = %v, want ErrBadSignature", err)
	}
	if _, err := Verify(otherPub, forged, now); err != nil {
		t.Errorf("forged token under its own key: %v", err)
	}

	// Any change to any character is refused (never accepted).
	for i := range len(tok) {
		for _, r := range []byte{'A', 'z', '0', '_', '.'} {
			if tok[i] == r {
				continue
			}
			bad := tok[:i] + string(r) + tok[i+1:]
			if _, err := Verify(pub, bad, now); err == nil {
				t.Fatalf("tampered token (pos %d -> %q) accepted", i, r)
			} else if !errors.Is(err, ErrBadSignature) && !errors.Is(err, ErrMalformed) {
				t.Fatalf("tampered token: unexpected error %v", err)
			}
		}
	}

	// Claims re-encoded with a different account but the original signature.
	parts := strings.Split(tok, ".")
	c := claims()
	c.Account = "mallory"
	swapped := "v1." + base64.RawURLEncoding.EncodeToString(c.payload()) + "." + parts[2]
	if _, err := Verify(pub, swapped, now); !errors.Is(err, ErrBadSignature) {
		t.Errorf("swapped payload: err = %v, want ErrBadSignature", err)
	}
	// Wrong-sized public key.
	if _, err := Verify(pub[:31], tok, now); !errors.Is(err, ErrBadSignature) {
		t.Errorf("short public key: err = %v, want ErrBadSignature", err)
	}
}

func TestMalformed(t *testing.T) {
	pub, priv := newKey(t)
	tok, err := Issue(priv, claims())
	if err != nil {
		t.Fatal(err)
	}
	parts := strings.Split(tok, ".")
	sig := parts[2]
	enc := base64.RawURLEncoding.EncodeToString
	withPayload := func(p []byte) string { return "v1." + enc(p) + "." + sig }
	good := claims().payload()

	cases := map[string]string{
		"empty":            "",
		"no prefix":        strings.TrimPrefix(tok, "v1."),
		"v2":               "v2." + parts[1] + "." + parts[2],
		"no sig":           "v1." + parts[1],
		"extra part":       tok + ".AA",
		"padded base64":    "v1." + base64.URLEncoding.EncodeToString(good) + "." + sig,
		"std base64":       "v1." + strings.ReplaceAll(parts[1], "-", "+") + "+/." + sig,
		"short sig":        "v1." + parts[1] + "." + sig[:40],
		"too long":         "v1." + strings.Repeat("A", MaxTokenLen) + "." + sig,
		"empty payload":    withPayload(nil),
		"trailing byte":    withPayload(append(append([]byte{}, good...), 0)),
		"short payload":    withPayload(good[:len(good)-1]),
		"zero account":     withPayload(append([]byte{0}, good[1+len("alice"):]...)),
		"device 0":         withPayload(Claims{Account: "alice", Device: 0, IssuedAt: t0, Expiry: t0.Add(time.Hour)}.payload()),
		"device 128":       withPayload(Claims{Account: "alice", Device: 128, IssuedAt: t0, Expiry: t0.Add(time.Hour)}.payload()),
		"expiry<=issued":   withPayload(Claims{Account: "alice", Device: 1, IssuedAt: t0, Expiry: t0}.payload()),
		"account with NUL": withPayload(Claims{Account: "al\x00ce", Device: 1, IssuedAt: t0, Expiry: t0.Add(time.Hour)}.payload()),
		"bad utf8":         withPayload(Claims{Account: "al\xffce", Device: 1, IssuedAt: t0, Expiry: t0.Add(time.Hour)}.payload()),
	}
	// Non-canonical base64: flip the unused low bits of the last character.
	last := parts[2][len(parts[2])-1]
	idx := strings.IndexByte("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_", last)
	alt := "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"[idx^1]
	cases["non-canonical base64"] = "v1." + parts[1] + "." + parts[2][:len(parts[2])-1] + string(alt)

	for name, s := range cases {
		if _, err := Verify(pub, s, t0); !errors.Is(err, ErrMalformed) {
			t.Errorf("%s: err = %v, want ErrMalformed", name, err)
		}
	}
}

func TestIssueRefusesBadClaims(t *testing.T) {
	_, priv := newKey(t)
	for name, c := range map[string]Claims{
		"empty account": {Account: "", Device: 1, IssuedAt: t0, Expiry: t0.Add(time.Hour)},
		"long account":  {Account: strings.Repeat("a", MaxAccountLen+1), Device: 1, IssuedAt: t0, Expiry: t0.Add(time.Hour)},
		"device 0":      {Account: "a", Device: 0, IssuedAt: t0, Expiry: t0.Add(time.Hour)},
		"device 128":    {Account: "a", Device: 128, IssuedAt: t0, Expiry: t0.Add(time.Hour)},
		"no lifetime":   {Account: "a", Device: 1, IssuedAt: t0, Expiry: t0},
	} {
		if _, err := Issue(priv, c); err == nil {
			t.Errorf("%s: issued", name)
		}
	}
	if _, err := Issue(priv[:10], claims()); err == nil {
		t.Error("short private key accepted")
	}
	// The longest allowed claims still fit in MaxTokenLen.
	pub := priv.Public().(ed25519.PublicKey)
	c := Claims{Account: strings.Repeat("é", MaxAccountLen/2), Device: MaxDevice, IssuedAt: t0, Expiry: t0.Add(time.Hour)}
	tok, err := Issue(priv, c)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := Verify(pub, tok, t0); err != nil {
		t.Fatalf("longest token (%d bytes) refused: %v", len(tok), err)
	}
}

func FuzzVerify(f *testing.F) {
	pub, priv := newKey(f)
	tok, _ := Issue(priv, claims())
	f.Add(tok)
	f.Add("v1..")
	f.Add("v1.AAAA.AAAA")
	f.Add("")
	f.Fuzz(func(t *testing.T, s string) {
		c, err := Verify(pub, s, t0)
		if err != nil {
			if !errors.Is(err, ErrMalformed) && !errors.Is(err, ErrBadSignature) && !errors.Is(err, ErrExpired) {
				t.Fatalf("untyped error %v", err)
			}
			return
		}
		// Anything accepted must be exactly what we issued: re-issuing the
		// same claims with the same key gives the same string (Ed25519 is
		// deterministic), so no second encoding of a token verifies.
		again, err := Issue(priv, c)
		if err != nil {
			t.Fatalf("accepted claims cannot be re-issued: %v", err)
		}
		if again != s {
			t.Fatalf("accepted %q, canonical form is %q", s, again)
		}
	})
}

func BenchmarkIssue(b *testing.B) {
	_, priv := newKey(b)
	c := claims()
	for b.Loop() {
		if _, err := Issue(priv, c); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkVerify(b *testing.B) {
	pub, priv := newKey(b)
	tok, _ := Issue(priv, claims())
	for b.Loop() {
		if _, err := Verify(pub, tok, t0); err != nil {
			b.Fatal(err)
		}
	}
}
