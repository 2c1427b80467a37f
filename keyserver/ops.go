package keyserver

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"strings"

	"github.com/hushchat/hush/keyserver/store/cassandra"
	"github.com/hushchat/hush/keyserver/store/sqlite"
)

// LoadOrCreateSigningKey reads the key server's Ed25519 signing key from
// path (PEM, PKCS #8), or creates it there with mode 0600 if the file does
// not exist. created reports the latter. A key file readable by group or
// others is refused: whoever reads it can mint tokens for every account.
func LoadOrCreateSigningKey(path string) (key ed25519.PrivateKey, created bool, err error) {
	fi, err := os.Stat(path)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		k, err := createSigningKey(path)
		return k, err == nil, err
	case err != nil:
		return nil, false, fmt.Errorf("signing key %s: %w", path, err)
	}
	if fi.Mode().Perm()&0o077 != 0 {
		return nil, false, fmt.Errorf("signing key %s is accessible by group or others (mode %04o); run chmod 600 %s",
			path, fi.Mode().Perm(), path)
	}
	raw, err := os.ReadFile(path)
	if err != nil {
		return nil, false, fmt.Errorf("signing key %s: %w", path, err)
	}
	blk, _ := pem.Decode(raw)
	if blk == nil || blk.Type != "PRIVATE KEY" {
		return nil, false, fmt.Errorf("signing key %s: not a PEM \"PRIVATE KEY\" block", path)
	}
	k, err := x509.ParsePKCS8PrivateKey(blk.Bytes)
	if err != nil {
		return nil, false, fmt.Errorf("signing key %s: %w", path, err)
	}
	ek, ok := k.(ed25519.PrivateKey)
	if !ok {
		return nil, false, fmt.Errorf("signing key %s: %T is not an Ed25519 key", path, k)
	}
	return ek, false, nil
}

func createSigningKey(path string) (ed25519.PrivateKey, error) {
	_, k, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("create signing key: %w", err)
	}
	der, err := x509.MarshalPKCS8PrivateKey(k)
	if err != nil {
		return nil, fmt.Errorf("create signing key: %w", err)
	}
	if dir := filepath.Dir(path); dir != "" {
		if err := os.MkdirAll(dir, 0o700); err != nil {
			return nil, fmt.Errorf("create signing key %s: %w", path, err)
		}
	}
	// O_EXCL: never overwrite a key that appeared meanwhile.
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return nil, fmt.Errorf("create signing key %s: %w", path, err)
	}
	werr := pem.Encode(f, &pem.Block{Type: "PRIVATE KEY", Bytes: der})
	if werr == nil {
		werr = f.Sync()
	}
	if err := errors.Join(werr, f.Close()); err != nil {
		os.Remove(path)
		return nil, fmt.Errorf("create signing key %s: %w", path, err)
	}
	return k, nil
}

// StoreSpec is a parsed --store value.
type StoreSpec struct {
	Kind     string   // "sqlite" or "cassandra"
	Path     string   // sqlite: database file
	Hosts    []string // cassandra: contact points, "host" or "host:port"
	Keyspace string   // cassandra
}

// ParseStoreSpec parses "sqlite:PATH" or "cassandra:HOST1,HOST2/KEYSPACE".
func ParseStoreSpec(spec string) (StoreSpec, error) {
	kind, rest, ok := strings.Cut(spec, ":")
	switch {
	case !ok || rest == "":
		return StoreSpec{}, fmt.Errorf("store %q: want sqlite:PATH or cassandra:HOST1,HOST2/KEYSPACE", spec)
	case kind == "sqlite":
		return StoreSpec{Kind: kind, Path: rest}, nil
	case kind == "cassandra":
		hosts, ks, ok := strings.Cut(rest, "/")
		if !ok || hosts == "" || ks == "" {
			return StoreSpec{}, fmt.Errorf("store %q: want cassandra:HOST1,HOST2/KEYSPACE", spec)
		}
		s := StoreSpec{Kind: kind, Keyspace: ks}
		for _, h := range strings.Split(hosts, ",") {
			if h = strings.TrimSpace(h); h == "" {
				return StoreSpec{}, fmt.Errorf("store %q: empty host", spec)
			}
			s.Hosts = append(s.Hosts, h)
		}
		return s, nil
	default:
		return StoreSpec{}, fmt.Errorf("store %q: unknown kind %q (want sqlite or cassandra)", spec, kind)
	}
}

// StoreOptions tune OpenStore.
type StoreOptions struct {
	// CassandraReplication is the CQL replication map for a keyspace
	// OpenStore creates ("" for SimpleStrategy with one replica).
	CassandraReplication string
	// Logger receives the Cassandra driver's messages (nil: discarded).
	Logger *slog.Logger
}

// OpenStore opens the store a spec names, creating the SQLite file or the
// Cassandra keyspace and schema as needed.
func OpenStore(ctx context.Context, spec StoreSpec, o StoreOptions) (Store, error) {
	switch spec.Kind {
	case "sqlite":
		if dir := filepath.Dir(spec.Path); dir != "" {
			if err := os.MkdirAll(dir, 0o700); err != nil {
				return nil, fmt.Errorf("open store: %w", err)
			}
		}
		return sqlite.Open(ctx, spec.Path)
	case "cassandra":
		return cassandra.Open(ctx, cassandra.Options{
			Hosts: spec.Hosts, Keyspace: spec.Keyspace, Replication: o.CassandraReplication, Logger: o.Logger,
		})
	}
	return nil, fmt.Errorf("open store: unknown kind %q", spec.Kind)
}
