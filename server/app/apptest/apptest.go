// Package apptest runs hush-server in process for other packages' tests:
// the wiring `make run` uses (app.StartAllInOne), on a loopback port, with
// its data directory in the test's temporary directory and the key
// server's per-IP limits lifted, since every test client comes from
// 127.0.0.1. A Server can be stopped and started again on the same
// address and data, as a restarted server would be.
package apptest

import (
	"context"
	"log/slog"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/hushchat/hush/keyserver/ratelimit"
	"github.com/hushchat/hush/server/app"
)

// Server is an in-process hush-server.
type Server struct {
	t   testing.TB
	cfg app.AllInOneConfig

	mu  sync.Mutex
	app *app.App
}

// Start starts a server, with opts applied to its config after the test
// defaults, and stops it when the test ends.
func Start(t testing.TB, opts ...func(*app.AllInOneConfig)) *Server {
	t.Helper()
	lifted := ratelimit.Rate{Burst: 1 << 30, Per: time.Second}
	s := &Server{t: t, cfg: app.AllInOneConfig{
		Listen:        "127.0.0.1:0",
		DataDir:       filepath.Join(t.TempDir(), "server"),
		AnonRate:      lifted,
		BundleRate:    lifted,
		ShutdownGrace: 5 * time.Second,
		Logger:        slog.New(slog.DiscardHandler),
	}}
	for _, o := range opts {
		o(&s.cfg)
	}
	s.Restart()
	t.Cleanup(s.Stop)
	return s
}

// Restart starts the server again after Stop, on the same address and
// data directory.
func (s *Server) Restart() {
	s.t.Helper()
	s.mu.Lock()
	cfg := s.cfg
	s.mu.Unlock()
	a, err := app.StartAllInOne(context.Background(), cfg)
	if err != nil {
		s.t.Fatalf("start hush-server: %v", err)
	}
	s.mu.Lock()
	s.app, s.cfg.Listen = a, a.Addr()
	s.mu.Unlock()
}

// Stop shuts the server down gracefully and logs a failure; a stopped
// server is left alone.
func (s *Server) Stop() {
	if err := s.Shutdown(); err != nil {
		s.t.Logf("shutdown hush-server: %v", err)
	}
}

// Shutdown is Stop for a test that checks the shutdown itself.
func (s *Server) Shutdown() error {
	s.mu.Lock()
	a := s.app
	s.app = nil
	s.mu.Unlock()
	if a == nil {
		return nil
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	return a.Shutdown(ctx)
}

// URL is the server's base URL.
func (s *Server) URL() string { return "http://" + s.Addr() }

// Addr is the server's host:port.
func (s *Server) Addr() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.cfg.Listen
}

// DataDir is the server's data directory.
func (s *Server) DataDir() string { return s.cfg.DataDir }

// App is the running server, nil while stopped.
func (s *Server) App() *app.App {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.app
}
