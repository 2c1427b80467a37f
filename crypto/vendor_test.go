package crypto

import (
	"bufio"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestVendoredLibraryPatched guards the patches in
// third_party/libsignal/HUSH-PATCHES.md against a re-vendoring that drops
// them: none of these files may call logger.Debug, which formats session
// records, MACs and message keys into strings on every message.
func TestVendoredLibraryPatched(t *testing.T) {
	for _, f := range []string{
		"session/SessionCipher.go",
		"protocol/SignalMessage.go",
		"serialize/JSONSerializer.go",
		"serialize/ProtoBufferSerializer.go",
		"ecc/Curve.go",
	} {
		fh, err := os.Open(filepath.Join("..", "third_party", "libsignal", f))
		if err != nil {
			t.Fatal(err)
		}
		sc := bufio.NewScanner(fh)
		for n := 1; sc.Scan(); n++ {
			if strings.HasPrefix(strings.TrimSpace(sc.Text()), "logger.Debug(") {
				t.Errorf("%s:%d calls logger.Debug", f, n)
			}
		}
		fh.Close()
	}
}
