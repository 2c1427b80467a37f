// Package loadgen is hush-bench's side of the wire: virtual devices that
// register at the key server with real Signal identity keys, hold relay
// WebSockets, and speak the protocol frame by frame (package protocol),
// without the client core, so that one process can drive tens of thousands
// of connections or tens of thousands of messages per second on the same
// two cores as the server it measures.
//
// # Loopback only
//
// The load generator never leaves the machine: Env refuses a server whose
// host is not a loopback address, and spreads its outgoing TCP connections
// (HTTP and WebSocket) over several 127.0.0.x source addresses
// (net.Dialer.LocalAddr), because one source address has only ~28,000
// ephemeral ports towards one server port and a run of 20,000 idle
// connections, repeated, would otherwise exhaust them (TIME_WAIT).
//
// # Counting every message
//
// Every payload the generator sends carries a stamp (Stamp): the stream it
// belongs to, its sequence number in that stream and the time it was
// (meant to be) sent. A Ledger records, per stream, which sequence numbers
// the relay acknowledged (SendAck without error) and which arrived, so a
// run ends with exact counts: lost (acknowledged, never delivered) and
// duplicated (delivered more than once on live connections). Latencies
// are kept whole (Latencies) and reduced to percentiles at the end; there
// is no sampling.
//
// The rest of the payload is random bytes, so the relay stores what real
// ciphertext would cost it. The relay never parses payloads; the stamp is
// meaningful only to the generator.
package loadgen

import (
	"context"
	"crypto/rand"
	"encoding/base32"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hushchat/hush/crypto"
	"github.com/hushchat/hush/keyserver/ksclient"
	"github.com/hushchat/hush/protocol"
)

// DefaultSourceIPs is how many 127.0.0.x source addresses an Env spreads
// its connections over when Config.SourceIPs is 0.
const DefaultSourceIPs = 16

// Config configures an Env.
type Config struct {
	// Server is hush-server's (or a relay's) base URL, e.g.
	// http://127.0.0.1:8080. Its host must be a loopback address.
	Server string
	// KeyServer is the key server's base URL; empty means Server (as in
	// hush-server, which serves both).
	KeyServer string
	// Relays are the base URLs of the relays devices connect to; empty
	// means Server. With several (hush-relay nodes sharing Redis and
	// Cassandra), scenarios put a message's sender and recipients on
	// different relays, so every message crosses between nodes.
	Relays []string
	// SourceIPs is the number of source addresses, 127.0.0.2 upwards
	// (default DefaultSourceIPs, at most 250).
	SourceIPs int
}

// Env is a connection to one hush deployment on this machine.
type Env struct {
	base   *url.URL
	wsURLs []string
	ks     *ksclient.Client
	http   *http.Client
	srcs   []*net.TCPAddr
	next   atomic.Uint64
	runTag string
	names  atomic.Int64
}

// New checks cfg and returns an Env. It does not contact the server.
func New(cfg Config) (*Env, error) {
	base, err := parseLoopbackURL("server", cfg.Server)
	if err != nil {
		return nil, err
	}
	ksURL := cfg.KeyServer
	if ksURL == "" {
		ksURL = cfg.Server
	} else if _, err := parseLoopbackURL("key server", ksURL); err != nil {
		return nil, err
	}
	n := cfg.SourceIPs
	if n == 0 {
		n = DefaultSourceIPs
	}
	if n < 1 || n > 250 {
		return nil, fmt.Errorf("source addresses: %d outside 1–250", n)
	}
	e := &Env{base: base}
	for i := range n {
		e.srcs = append(e.srcs, &net.TCPAddr{IP: net.IPv4(127, 0, 0, byte(2+i))})
	}
	if base.Hostname() == "::1" || strings.HasPrefix(base.Hostname(), "[") {
		// An IPv6 loopback server: there is only one loopback address.
		e.srcs = []*net.TCPAddr{{IP: net.IPv6loopback}}
	}
	relays := cfg.Relays
	if len(relays) == 0 {
		relays = []string{cfg.Server}
	}
	for _, r := range relays {
		u, err := parseLoopbackURL("relay", r)
		if err != nil {
			return nil, err
		}
		u.Scheme = map[string]string{"http": "ws", "https": "wss"}[u.Scheme]
		u.Path = strings.TrimSuffix(u.Path, "/") + protocol.WSPath
		e.wsURLs = append(e.wsURLs, u.String())
	}
	e.http = &http.Client{
		Timeout: 60 * time.Second,
		Transport: &http.Transport{
			DialContext:         e.dialTCP,
			MaxIdleConnsPerHost: 64,
			IdleConnTimeout:     30 * time.Second,
		},
	}
	if e.ks, err = ksclient.New(ksURL, ksclient.WithHTTPClient(e.http)); err != nil {
		return nil, err
	}
	// go.mau.fi/libsignal keeps its logger in a global that crypto
	// installs lazily; installing it here, before any goroutine generates
	// keys, keeps concurrent first uses from racing on that global.
	crypto.InstallLogger(slog.New(slog.DiscardHandler))
	tag := make([]byte, 5)
	rand.Read(tag)
	e.runTag = strings.ToLower(base32.StdEncoding.WithPadding(base32.NoPadding).EncodeToString(tag))
	return e, nil
}

// parseLoopbackURL parses an http(s) URL whose host is a loopback address
// (or "localhost").
func parseLoopbackURL(what, raw string) (*url.URL, error) {
	u, err := url.Parse(raw)
	if err != nil {
		return nil, fmt.Errorf("%s URL: %w", what, err)
	}
	if u.Scheme != "http" && u.Scheme != "https" || u.Host == "" {
		return nil, fmt.Errorf("%s URL %q: want http(s)://host:port", what, raw)
	}
	h := u.Hostname()
	if h == "localhost" {
		return u, nil
	}
	ip := net.ParseIP(h)
	if ip == nil || !ip.IsLoopback() {
		return nil, fmt.Errorf("%s URL %q: hush-bench only drives a server on this machine's loopback (127.0.0.0/8 or ::1)", what, raw)
	}
	return u, nil
}

// Base is the server's base URL.
func (e *Env) Base() *url.URL { return e.base }

// HTTP is the Env's HTTP client (connections spread over the source
// addresses; 60 s timeout per request).
func (e *Env) HTTP() *http.Client { return e.http }

// Transport is the HTTP client's transport, for clients that bound their
// requests by context only (large transfers).
func (e *Env) Transport() http.RoundTripper { return e.http.Transport }

// Relays is the number of relays devices are spread over.
func (e *Env) Relays() int { return len(e.wsURLs) }

// RunTag is a random tag unique to this Env; account names start with it,
// so runs against the same server never collide.
func (e *Env) RunTag() string { return e.runTag }

// Name builds a fresh account name from the run tag, a role and a counter
// of the Env ("b" + tag + role + n, at most 32 characters), so no two
// calls return the same name.
func (e *Env) Name(role string) string {
	return fmt.Sprintf("b%s%s%d", e.runTag, role, e.names.Add(1))
}

// source picks the next source address, round robin.
func (e *Env) source() *net.TCPAddr {
	return e.srcs[int(e.next.Add(1)%uint64(len(e.srcs)))]
}

func (e *Env) dialTCP(ctx context.Context, network, addr string) (net.Conn, error) {
	d := net.Dialer{LocalAddr: e.source(), Timeout: 30 * time.Second, KeepAlive: -1}
	c, err := d.DialContext(ctx, network, addr)
	if err != nil {
		return nil, fmt.Errorf("dial %s from %s: %w", addr, d.LocalAddr, err)
	}
	return c, nil
}

// Device is a registered device: a real identity key pair and the token the
// key server issued for it.
type Device struct {
	Account  string
	ID       uint32
	Token    string
	Identity *crypto.IdentityKeyPair
}

// Register creates account name with one device, whose keys are real
// Signal keys from package crypto: an identity key pair, a signed prekey and
// a last-resort prekey (no one-time prekeys: nobody starts a session with a
// generator device). The key server verifies the signatures as for any
// client.
func (e *Env) Register(ctx context.Context, name string) (*Device, error) {
	id, err := crypto.GenerateIdentityKeyPair()
	if err != nil {
		return nil, err
	}
	reg, err := crypto.GenerateRegistrationID()
	if err != nil {
		return nil, err
	}
	spk, err := crypto.GenerateSignedPreKey(id, 1)
	if err != nil {
		return nil, err
	}
	lr, err := crypto.GenerateLastResortPreKey()
	if err != nil {
		return nil, err
	}
	sp, lp := spk.Public(), lr.Public()
	keys := ksclient.DeviceKeys{
		IdentityKey:    id.PublicKey(),
		RegistrationID: reg,
		SignedPreKey:   ksclient.SignedPreKey{ID: sp.ID, PublicKey: sp.PublicKey, Signature: sp.Signature},
		LastResort:     ksclient.PreKey{ID: lp.ID, PublicKey: lp.PublicKey},
	}
	s, err := e.ks.Register(ctx, name, "", keys, id.Sign)
	if err != nil {
		var kerr *ksclient.Error
		if errors.As(err, &kerr) && kerr.Status == http.StatusTooManyRequests {
			return nil, fmt.Errorf("register %s: %w (start the bench server with a high --anon-rate, e.g. --anon-rate 100000000)", name, err)
		}
		return nil, fmt.Errorf("register %s: %w", name, err)
	}
	return &Device{Account: s.Account, ID: s.Device, Token: s.Token, Identity: id}, nil
}

// RegisterMany registers n accounts named by e.Name(role) with workers
// registrations in flight. progress, if set, is called after each.
func (e *Env) RegisterMany(ctx context.Context, role string, n, workers int, progress func(done int)) ([]*Device, error) {
	devs := make([]*Device, n)
	if workers < 1 {
		workers = 1
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var (
		wg       sync.WaitGroup
		next     atomic.Int64
		done     atomic.Int64
		errOnce  sync.Once
		firstErr error
	)
	for range min(workers, n) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				i := int(next.Add(1) - 1)
				if i >= n || ctx.Err() != nil {
					return
				}
				d, err := e.Register(ctx, e.Name(role))
				if err != nil {
					errOnce.Do(func() { firstErr = err; cancel() })
					return
				}
				devs[i] = d
				if k := done.Add(1); progress != nil {
					progress(int(k))
				}
			}
		}()
	}
	wg.Wait()
	if firstErr != nil {
		return nil, firstErr
	}
	return devs, ctx.Err()
}
