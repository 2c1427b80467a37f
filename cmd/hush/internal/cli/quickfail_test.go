package cli

import (
	"context"
	"strings"
	"testing"
	"time"
)

// TestQuickFailure: a command that fails right after opening the profile
// (while the client is still dialing the relay) exits promptly. This once
// hung in client.Close; see closeClient.
func TestQuickFailure(t *testing.T) {
	ts := startServer(t)
	alice := register(t, ts, "alice")
	for i := range 25 {
		done := make(chan result, 1)
		go func() {
			var out, errb strings.Builder
			code := runCLI(context.Background(), []string{"--home", alice.home, "group", "add", "no such group", "bob"},
				strings.NewReader(""), &out, &errb)
			done <- result{code: code, stdout: out.String(), stderr: errb.String()}
		}()
		select {
		case r := <-done:
			if r.code != ExitFailed || !strings.Contains(r.stderr, "no such group") {
				t.Fatalf("run %d: %+v", i, r)
			}
		case <-time.After(60 * time.Second):
			t.Fatalf("run %d: the command did not exit", i)
		}
	}
}
