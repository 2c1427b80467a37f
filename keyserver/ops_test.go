package keyserver_test

import (
	"os"
	"path/filepath"
	"reflect"
	"testing"

	"github.com/hushchat/hush/keyserver"
)

func TestSigningKeyFile(t *testing.T) {
	path := filepath.Join(t.TempDir(), "sub", "signing.key")
	k1, created, err := keyserver.LoadOrCreateSigningKey(path)
	if err != nil || !created {
		t.Fatalf("first start: created=%v err=%v", created, err)
	}
	fi, err := os.Stat(path)
	if err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("key file mode %v, %v; want 0600", fi.Mode().Perm(), err)
	}
	k2, created, err := keyserver.LoadOrCreateSigningKey(path)
	if err != nil || created || !k1.Equal(k2) {
		t.Fatalf("second start: created=%v err=%v same=%v", created, err, k1.Equal(k2))
	}
	os.Chmod(path, 0o644)
	if _, _, err := keyserver.LoadOrCreateSigningKey(path); err == nil {
		t.Fatal("world-readable key accepted")
	}
	bad := filepath.Join(t.TempDir(), "bad.key")
	os.WriteFile(bad, []byte("not a key"), 0o600)
	if _, _, err := keyserver.LoadOrCreateSigningKey(bad); err == nil {
		t.Fatal("garbage key file accepted")
	}
}

func TestParseStoreSpec(t *testing.T) {
	for spec, want := range map[string]keyserver.StoreSpec{
		"sqlite:/var/lib/hush/keys.db":          {Kind: "sqlite", Path: "/var/lib/hush/keys.db"},
		"sqlite:keys.db":                        {Kind: "sqlite", Path: "keys.db"},
		"cassandra:10.0.0.1,10.0.0.2:9043/hush": {Kind: "cassandra", Hosts: []string{"10.0.0.1", "10.0.0.2:9043"}, Keyspace: "hush"},
	} {
		got, err := keyserver.ParseStoreSpec(spec)
		if err != nil || !reflect.DeepEqual(got, want) {
			t.Errorf("%s: %+v, %v; want %+v", spec, got, err, want)
		}
	}
	for _, spec := range []string{"", "sqlite", "sqlite:", "redis:x", "cassandra:hosts", "cassandra:/ks", "cassandra:a,,b/ks", "cassandra:a/"} {
		if _, err := keyserver.ParseStoreSpec(spec); err == nil {
			t.Errorf("%q accepted", spec)
		}
	}
}
