package crypto

import (
	"context"
	"log/slog"
	"strconv"
	"sync"
	"sync/atomic"
	"unicode/utf8"

	"go.mau.fi/libsignal/logger"
)

// libsignal keeps its logger in a package-global variable
// (go.mau.fi/libsignal/logger.Logger) and, left alone, prints to stdout —
// which would corrupt the JSON lines the hush CLI prints there. We cannot
// scope a logger per instance, so the package installs one adapter, once,
// and the adapter forwards to whichever *slog.Logger was installed last.
//
// Debug lines are dropped unread: the library passes whole session records
// and, in one place, a message cipher key to Debug. Info, Warning and Error
// lines carry only error text, but that text may quote raw message bytes, so
// it is length-capped and escaped. Library errors are also returned to the
// caller, which decides how serious they are; they are therefore logged at
// Warn at most, so a peer sending garbage cannot flood a log with errors.
var (
	installOnce sync.Once
	libLogger   atomic.Pointer[slog.Logger]
)

// InstallLogger routes go.mau.fi/libsignal's log output into l (slog.Default
// when l is nil) and never to stdout. It is safe to call many times and from
// many goroutines; the last call wins. New calls it with Config.Logger, and
// every exported entry point that reaches into the library first makes sure
// some adapter is installed, so the library never prints on its own.
func InstallLogger(l *slog.Logger) {
	if l == nil {
		l = slog.Default()
	}
	libLogger.Store(l.With("component", "libsignal"))
	installAdapter()
}

// installAdapter sets the library's global logger exactly once. Every path
// goes through the Once, which also makes every caller wait until Setup has
// finished: a goroutine that skipped it while another was still inside
// Setup would race the library's read of its global logger.
func installAdapter() {
	installOnce.Do(func() {
		var adapter logger.Loggable = slogAdapter{}
		logger.Setup(&adapter)
	})
}

// ensureLogger installs the default adapter when nobody installed one yet.
func ensureLogger() {
	libLogger.CompareAndSwap(nil, slog.Default().With("component", "libsignal"))
	installAdapter()
}

type slogAdapter struct{}

// maxLogMessage caps a forwarded library message.
const maxLogMessage = 200

func (slogAdapter) Debug(caller, msg string) {}

func (slogAdapter) Info(caller, msg string) { forward(slog.LevelInfo, caller, msg) }

func (slogAdapter) Warning(caller, msg string) { forward(slog.LevelWarn, caller, msg) }

func (slogAdapter) Error(caller, msg string) { forward(slog.LevelWarn, caller, msg) }

// Configure is the library's per-file filter for its own logger; the slog
// handler's level is the filter here.
func (slogAdapter) Configure(string) {}

func forward(level slog.Level, caller, msg string) {
	l := libLogger.Load()
	if l == nil || !l.Enabled(context.Background(), level) {
		return
	}
	l.Log(context.Background(), level, "libsignal: "+sanitize(msg), "caller", caller)
}

// sanitize caps msg and escapes anything that is not printable UTF-8, so raw
// bytes that the library pastes into error strings arrive as inert text.
func sanitize(msg string) string {
	truncated := false
	if len(msg) > maxLogMessage {
		msg = msg[:maxLogMessage]
		truncated = true
	}
	if !utf8.ValidString(msg) || needsQuoting(msg) {
		msg = strconv.QuoteToASCII(msg)
	}
	if truncated {
		msg += "…"
	}
	return msg
}

func needsQuoting(s string) bool {
	for _, r := range s {
		if r < 0x20 || r == 0x7f {
			return true
		}
	}
	return false
}
