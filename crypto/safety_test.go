package crypto

import (
	"context"
	"encoding/hex"
	"errors"
	"strings"
	"testing"
)

// Test vectors published in signalapp/libsignal, rust/protocol/src/fingerprint.rs
// (fingerprint_test_v1 / fingerprint_test_v2, the same vectors as the Java
// NumericFingerprintGeneratorTest). The expected values come from there, not
// from this package.
const (
	vecAliceIdentity = "0506863bc66d02b40d27b8d49ca7c09e9239236f9d7d25d6fcca5ce13c7064d868"
	vecBobIdentity   = "05f781b6fb32fed9ba1cf2de978d4d5da28dc34046ae814402b5c0dbd96fda907b"
	vecAliceID       = "+14152222222"
	vecBobID         = "+14153333333"
	vecDisplay       = "300354477692869396892869876765458257569162576843440918079131"
	vecAliceScanV1   = "080112220a201e301a0353dce3dbe7684cb8336e85136cdc0ee96219494ada305d62a7bd61df1a220a20d62cbf73a11592015b6b9f1682ac306fea3aaf3885b84d12bca631e9d4fb3a4d"
	vecBobScanV1     = "080112220a20d62cbf73a11592015b6b9f1682ac306fea3aaf3885b84d12bca631e9d4fb3a4d1a220a201e301a0353dce3dbe7684cb8336e85136cdc0ee96219494ada305d62a7bd61df"
	vecAliceScanV2   = "080212220a201e301a0353dce3dbe7684cb8336e85136cdc0ee96219494ada305d62a7bd61df1a220a20d62cbf73a11592015b6b9f1682ac306fea3aaf3885b84d12bca631e9d4fb3a4d"
	vecBobScanV2     = "080212220a20d62cbf73a11592015b6b9f1682ac306fea3aaf3885b84d12bca631e9d4fb3a4d1a220a201e301a0353dce3dbe7684cb8336e85136cdc0ee96219494ada305d62a7bd61df"
)

func mustHex(tb testing.TB, s string) []byte {
	tb.Helper()
	b, err := hex.DecodeString(s)
	if err != nil {
		tb.Fatal(err)
	}
	return b
}

func TestSafetyNumberPublishedVectors(t *testing.T) {
	a, b := mustHex(t, vecAliceIdentity), mustHex(t, vecBobIdentity)
	for _, tc := range []struct {
		version            uint32
		aliceScan, bobScan string
	}{{1, vecAliceScanV1, vecBobScanV1}, {2, vecAliceScanV2, vecBobScanV2}} {
		af, err := newSafetyNumber(tc.version, SafetyNumberIterations, []byte(vecAliceID), a, []byte(vecBobID), b)
		if err != nil {
			t.Fatal(err)
		}
		bf, err := newSafetyNumber(tc.version, SafetyNumberIterations, []byte(vecBobID), b, []byte(vecAliceID), a)
		if err != nil {
			t.Fatal(err)
		}
		if af.Digits != vecDisplay || bf.Digits != vecDisplay {
			t.Errorf("v%d digits: alice %s, bob %s, want %s", tc.version, af.Digits, bf.Digits, vecDisplay)
		}
		if got := hex.EncodeToString(af.Scannable()); got != tc.aliceScan {
			t.Errorf("v%d alice scannable %s, want %s", tc.version, got, tc.aliceScan)
		}
		if got := hex.EncodeToString(bf.Scannable()); got != tc.bobScan {
			t.Errorf("v%d bob scannable %s, want %s", tc.version, got, tc.bobScan)
		}
		if ok, err := af.CompareScannable(bf.Scannable()); !ok || err != nil {
			t.Errorf("v%d alice does not match bob's code: %v %v", tc.version, ok, err)
		}
		// Scanning one's own code is not a match.
		if ok, _ := af.CompareScannable(af.Scannable()); ok {
			t.Errorf("v%d alice matches her own code", tc.version)
		}
	}
	// The exported constructor uses version 2.
	af, err := NewSafetyNumber(vecAliceID, a, vecBobID, b)
	if err != nil {
		t.Fatal(err)
	}
	if got := hex.EncodeToString(af.Scannable()); got != vecAliceScanV2 {
		t.Errorf("NewSafetyNumber scannable %s, want %s", got, vecAliceScanV2)
	}
	v1, _ := newSafetyNumber(1, SafetyNumberIterations, []byte(vecBobID), b, []byte(vecAliceID), a)
	if _, err := af.CompareScannable(v1.Scannable()); !errors.Is(err, ErrScannableVersion) {
		t.Errorf("version mismatch: got %v", err)
	}
	for _, bad := range [][]byte{{0xff, 0xff}, mustHex(t, "0802"), make([]byte, 2000)} {
		if _, err := af.CompareScannable(bad); !errors.Is(err, ErrScannableParse) {
			t.Errorf("malformed code %x: got %v", bad[:min(len(bad), 4)], err)
		}
	}
}

func TestSafetyNumberBothSides(t *testing.T) {
	ctx := context.Background()
	alice := newDevice(t, "alice", 1, 1)
	bob := newDevice(t, "bob", 1, 1)
	connect(t, alice, bob, 0)
	c, err := alice.Encrypt(ctx, bob.Address(), []byte("x"))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := bob.Decrypt(ctx, alice.Address(), c); err != nil {
		t.Fatal(err)
	}
	as, err := alice.SafetyNumber(ctx, bob.Address())
	if err != nil {
		t.Fatal(err)
	}
	bs, err := bob.SafetyNumber(ctx, alice.Address())
	if err != nil {
		t.Fatal(err)
	}
	if as.Digits != bs.Digits {
		t.Fatalf("sides differ: %s vs %s", as.Digits, bs.Digits)
	}
	if len(as.Digits) != SafetyNumberDigits || strings.Trim(as.Digits, "0123456789") != "" {
		t.Fatalf("not 60 digits: %q", as.Digits)
	}
	if ok, err := as.CompareScannable(bs.Scannable()); !ok || err != nil {
		t.Fatalf("scannable compare: %v %v", ok, err)
	}

	// Bob reinstalls: new identity key. Alice's safety number changes.
	mallory, err := GenerateIdentityKeyPair()
	if err != nil {
		t.Fatal(err)
	}
	changed, err := NewSafetyNumber("alice", alice.IdentityKey(), "bob", mallory.PublicKey())
	if err != nil {
		t.Fatal(err)
	}
	if changed.Digits == as.Digits {
		t.Fatal("safety number unchanged after key change")
	}
	if ok, _ := changed.CompareScannable(bs.Scannable()); ok {
		t.Fatal("scannable matches after key change")
	}
	// A different stable id also changes it.
	other, _ := NewSafetyNumber("alice", alice.IdentityKey(), "bob2", bob.IdentityKey())
	if other.Digits == as.Digits {
		t.Fatal("safety number unchanged after id change")
	}
}
