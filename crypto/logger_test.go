package crypto

import (
	"bytes"
	"context"
	"io"
	"log/slog"
	"os"
	"strings"
	"testing"
)

// The library's log output goes to the installed slog logger — never to
// stdout — with Debug lines dropped and raw bytes escaped.
func TestLibraryLogRouting(t *testing.T) {
	ctx := context.Background()
	var buf bytes.Buffer
	l := slog.New(slog.NewTextHandler(&buf, &slog.HandlerOptions{Level: slog.LevelDebug}))

	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	stdout := os.Stdout
	os.Stdout = w
	defer func() { os.Stdout = stdout }()

	alice := newDevice(t, "alice", 1, 0)
	bob := newDevice(t, "bob", 1, 1)
	InstallLogger(l) // after newDevice, whose constructor installed the quiet logger
	defer InstallLogger(quiet)

	connect(t, alice, bob, 0)
	c, _ := alice.Encrypt(ctx, bob.Address(), []byte("secret plaintext"))
	if _, err := bob.Decrypt(ctx, alice.Address(), c); err != nil {
		t.Fatal(err)
	}
	r2, _ := bob.Encrypt(ctx, alice.Address(), []byte("secret plaintext"))
	if _, err := alice.Decrypt(ctx, bob.Address(), r2); err != nil {
		t.Fatal(err)
	}
	// A SignalMessage with a bad MAC makes the library log an error.
	m, _ := alice.Encrypt(ctx, bob.Address(), []byte("secret plaintext"))
	m.Body[len(m.Body)-1] ^= 1
	if _, err := bob.Decrypt(ctx, alice.Address(), m); err == nil {
		t.Fatal("bad MAC accepted")
	}
	// So does an undecodable message handed to the library directly.
	_, _ = serializer.SignalMessage.Deserialize([]byte{0x33, 0xff, 0x00, 1, 2, 3, 4, 5, 6, 7, 8})

	os.Stdout = stdout
	w.Close()
	printed, _ := io.ReadAll(r)
	if len(printed) != 0 {
		t.Fatalf("library printed to stdout: %q", printed)
	}
	out := buf.String()
	if !strings.Contains(out, "component=libsignal") || !strings.Contains(out, "level=WARN") {
		t.Fatalf("library errors not forwarded to slog: %q", out)
	}
	for _, bad := range []string{"level=DEBUG", "cipherKey", "secret plaintext", "Decrypting ciphertext with record"} {
		if strings.Contains(out, bad) {
			t.Fatalf("log contains %q: %s", bad, out)
		}
	}
}

func TestSanitize(t *testing.T) {
	if got := sanitize("plain text"); got != "plain text" {
		t.Fatalf("got %q", got)
	}
	got := sanitize("Input too small: \x00\x01\xff")
	if strings.ContainsAny(got, "\x00\x01") || !strings.Contains(got, `\x00`) {
		t.Fatalf("raw bytes not escaped: %q", got)
	}
	if got := sanitize(strings.Repeat("a", 1000)); len(got) > maxLogMessage+4 {
		t.Fatalf("not capped: %d bytes", len(got))
	}
}
