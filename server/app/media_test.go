package app

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"errors"
	"io"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/aws/aws-sdk-go-v2/aws"
	awss3 "github.com/aws/aws-sdk-go-v2/service/s3"

	"github.com/hushchat/hush/crypto"
	"github.com/hushchat/hush/internal/testenv"
	"github.com/hushchat/hush/keyserver"
	kssqlite "github.com/hushchat/hush/keyserver/store/sqlite"
	"github.com/hushchat/hush/server/media/backend"
	"github.com/hushchat/hush/server/media/mediaapi"
	"github.com/hushchat/hush/server/media/mediaclient"
	"github.com/hushchat/hush/server/media/s3"
)

// hush-server serves an attachment end to end on the disk backend: Alice
// encrypts a file, gets an upload slot, uploads, and sends the pointer,
// key and digest to Bob inside a Signal message through the relay; Bob
// resolves a download URL, downloads, verifies and decrypts.
func TestMediaEndToEndDisk(t *testing.T) {
	dir := dataDir(t)
	a := startMedia(t, dir, MediaOptions{MaxUpload: 4 << 20})
	blob := mediaRoundTrip(t, a)
	// The blob lies under <data>/media, and it is ciphertext only.
	found := false
	filepath.WalkDir(filepath.Join(dir, MediaDir), func(p string, d os.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		b, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		if bytes.Equal(b, blob.cipher) {
			found = true
		}
		if bytes.Contains(b, blob.marker) {
			t.Errorf("%s holds plaintext", p)
		}
		return nil
	})
	if !found {
		t.Fatalf("the uploaded blob is not under %s", filepath.Join(dir, MediaDir))
	}
}

// The same through an S3 bucket (the real S3 server from scripts/testenv),
// with credentials from the standard AWS environment as in production.
func TestMediaEndToEndS3(t *testing.T) {
	s := testenv.NeedS3(t)
	t.Setenv("AWS_ACCESS_KEY_ID", s.AccessKey)
	t.Setenv("AWS_SECRET_ACCESS_KEY", s.SecretKey)
	t.Setenv("AWS_CONFIG_FILE", filepath.Join(t.TempDir(), "none"))
	t.Setenv("AWS_SHARED_CREDENTIALS_FILE", filepath.Join(t.TempDir(), "none"))
	a := startMedia(t, dataDir(t), MediaOptions{
		Kind: backend.S3, MaxUpload: 4 << 20,
		S3: s3.Config{Bucket: s.Bucket, Region: s.Region, Endpoint: s.Endpoint, PathStyle: true},
	})
	blob := mediaRoundTrip(t, a)
	out, err := s.Client().GetObject(context.Background(), &awss3.GetObjectInput{Bucket: aws.String(s.Bucket), Key: aws.String(s3.DefaultPrefix + blob.key)})
	if err != nil {
		t.Fatalf("the blob is not in the bucket: %v", err)
	}
	defer out.Body.Close()
	got, _ := io.ReadAll(out.Body)
	if !bytes.Equal(got, blob.cipher) {
		t.Fatal("the bucket holds other bytes than the uploaded ciphertext")
	}
}

// A misconfigured S3 backend stops hush-server at start-up, not at the
// first upload.
func TestMediaS3MisconfiguredFailsAtStart(t *testing.T) {
	s := testenv.NeedS3(t)
	t.Setenv("AWS_ACCESS_KEY_ID", s.AccessKey)
	t.Setenv("AWS_SECRET_ACCESS_KEY", s.SecretKey)
	_, err := StartAllInOne(context.Background(), AllInOneConfig{
		Listen: "127.0.0.1:0", DataDir: dataDir(t),
		Relay: RelayOptions{Media: MediaOptions{Kind: backend.S3,
			S3: s3.Config{Bucket: s.Bucket + "-missing", Region: s.Region, Endpoint: s.Endpoint, PathStyle: true}}},
	})
	if err == nil || !strings.Contains(err.Error(), "media") {
		t.Fatalf("start with a missing bucket: %v", err)
	}
}

func startMedia(t *testing.T, dir string, m MediaOptions) *App {
	t.Helper()
	a, err := StartAllInOne(context.Background(), AllInOneConfig{
		Listen: "127.0.0.1:0", DataDir: dir, AnonRate: testRate, BundleRate: testRate,
		Relay: RelayOptions{Media: m},
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { shutdown(t, a) })
	return a
}

type uploaded struct {
	key    string
	cipher []byte
	marker []byte
}

func mediaRoundTrip(t *testing.T, a *App) uploaded {
	t.Helper()
	ctx := context.Background()
	alice := register(t, base(a), "alice")
	bob := register(t, base(a), "bob")

	marker := []byte("MEDIA-PLAINTEXT-MARKER-")
	plain := make([]byte, 3<<20)
	rand.Read(plain)
	for i := 0; i+len(marker) < len(plain); i += 64 << 10 {
		copy(plain[i:], marker)
	}
	fileKey, err := crypto.NewAttachmentKey()
	if err != nil {
		t.Fatal(err)
	}
	enc, err := crypto.EncryptAttachment(bytes.NewReader(plain), fileKey)
	if err != nil {
		t.Fatal(err)
	}
	var cipher bytes.Buffer
	mc, err := mediaclient.New(base(a), mediaclient.StaticToken(alice.token), mediaclient.Options{})
	if err != nil {
		t.Fatal(err)
	}
	slot, err := mc.Upload(ctx, crypto.EncryptedSize(int64(len(plain))), io.TeeReader(enc, &cipher), nil)
	if err != nil {
		t.Fatalf("upload: %v", err)
	}
	digest, err := enc.Digest()
	if err != nil {
		t.Fatal(err)
	}

	// Over the per-file limit: a clear refusal naming the limit.
	_, err = mc.RequestSlot(ctx, 5<<20)
	var me *mediaclient.Error
	if !errors.As(err, &me) || me.Code != mediaapi.CodeTooLarge || me.Limit != 4<<20 {
		t.Fatalf("oversize slot: %v, want %s with limit %d", err, mediaapi.CodeTooLarge, 4<<20)
	}

	// The pointer travels end to end encrypted, through the relay.
	pointer := append(append([]byte(slot.ObjectKey), fileKey...), digest...)
	ca, cb := alice.connect(t), bob.connect(t)
	ca.drain()
	cb.drain()
	if ack := ca.sendAck(alice.encryptSend(t, clientID(), pointer, bob.addr())); ack.Error != nil {
		t.Fatal(ack.Error)
	}
	got := bob.decrypt(t, cb.mustNext().GetDeliver().Envelopes[0])
	key, fk, dg := string(got[:mediaapi.ObjectKeyLen]), got[mediaapi.ObjectKeyLen:mediaapi.ObjectKeyLen+crypto.AttachmentKeySize], got[mediaapi.ObjectKeyLen+crypto.AttachmentKeySize:]

	bc, err := mediaclient.New(base(a), mediaclient.StaticToken(bob.token), mediaclient.Options{})
	if err != nil {
		t.Fatal(err)
	}
	var blob bytes.Buffer
	if _, err := bc.Download(ctx, key, &blob, 0, nil); err != nil {
		t.Fatalf("download: %v", err)
	}
	if !bytes.Equal(blob.Bytes(), cipher.Bytes()) {
		t.Fatalf("downloaded %d bytes, not the %d uploaded", blob.Len(), cipher.Len())
	}
	var out bytes.Buffer
	if _, err := crypto.DecryptAttachment(&out, bytes.NewReader(blob.Bytes()), int64(blob.Len()), fk, dg); err != nil {
		t.Fatalf("decrypt: %v", err)
	}
	if sha256.Sum256(out.Bytes()) != sha256.Sum256(plain) {
		t.Fatal("decrypted file differs")
	}
	if bytes.Contains(cipher.Bytes(), marker) {
		t.Fatal("the ciphertext contains the plaintext marker")
	}
	return uploaded{key: key, cipher: cipher.Bytes(), marker: marker}
}

// hush-relay mounts the media service too: a slot, an upload and a
// download through the relay, next to a separate key server.
func TestStandaloneRelayServesMedia(t *testing.T) {
	dir := dataDir(t)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	kst, err := kssqlite.Open(context.Background(), filepath.Join(dir, "keys.db"))
	if err != nil {
		t.Fatal(err)
	}
	defer kst.Close()
	key, _, err := keyserver.LoadOrCreateSigningKey(filepath.Join(dir, "signing.key"))
	if err != nil {
		t.Fatal(err)
	}
	ks, err := keyserver.New(keyserver.Config{SigningKey: key, InternalSecret: "sekret", AnonRate: testRate, BundleRate: testRate}, kst)
	if err != nil {
		t.Fatal(err)
	}
	kss := httptest.NewServer(ks.Handler())
	defer kss.Close()
	r, err := StartRelay(context.Background(), RelayConfig{Listen: "127.0.0.1:0", DataDir: filepath.Join(dir, "relay"), KeyServer: kss.URL,
		InternalSecret: "sekret", Relay: RelayOptions{Media: MediaOptions{MaxUpload: 1 << 20}}})
	if err != nil {
		t.Fatal(err)
	}
	defer shutdown(t, r)
	alice := register(t, kss.URL, "alice")
	mc, err := mediaclient.New(base(r), mediaclient.StaticToken(alice.token), mediaclient.Options{})
	if err != nil {
		t.Fatal(err)
	}
	blob := make([]byte, 100_000)
	rand.Read(blob)
	ctx := context.Background()
	slot, err := mc.Upload(ctx, int64(len(blob)), bytes.NewReader(blob), nil)
	if err != nil {
		t.Fatalf("upload through hush-relay: %v", err)
	}
	var got bytes.Buffer
	if _, err := mc.Download(ctx, slot.ObjectKey, &got, 0, nil); err != nil || !bytes.Equal(got.Bytes(), blob) {
		t.Fatalf("download through hush-relay: %d bytes, %v", got.Len(), err)
	}
	if _, err := os.Stat(filepath.Join(dir, "relay", MediaDir)); err != nil {
		t.Fatalf("no media directory under the relay's data: %v", err)
	}
	var me *mediaclient.Error
	if _, err := mc.RequestSlot(ctx, 2<<20); !errors.As(err, &me) || me.Code != mediaapi.CodeTooLarge {
		t.Fatalf("oversize slot through hush-relay: %v", err)
	}
}
