package testenv

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"fmt"
	"io"
	"net/http"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/s3"
)

// TestRedisSmoke does a publish/subscribe round trip through go-redis: the
// mechanism hush's relays use to ring each other's doorbells.
func TestRedisSmoke(t *testing.T) {
	t.Parallel()
	r := NeedRedis(t)
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()

	sub := r.Client(t)
	pub := r.Client(t)
	channel := r.Prefix + "doorbell"
	ps := sub.Subscribe(ctx, channel)
	defer ps.Close()
	// Receive's first answer is the subscription confirmation; publishing
	// before it could lose the message (pub/sub is at-most-once).
	if _, err := ps.Receive(ctx); err != nil {
		t.Fatalf("subscribe %s: %v", channel, err)
	}

	n, err := pub.Publish(ctx, channel, "ring 1").Result()
	if err != nil {
		t.Fatalf("publish: %v", err)
	}
	if n != 1 {
		t.Fatalf("publish reached %d subscribers, want 1", n)
	}
	msg, err := ps.ReceiveMessage(ctx)
	if err != nil {
		t.Fatalf("receive: %v", err)
	}
	if msg.Channel != channel || msg.Payload != "ring 1" {
		t.Fatalf("got %q on %q, want %q on %q", msg.Payload, msg.Channel, "ring 1", channel)
	}

	// The prefix namespaces keys too, and cleanup removes them: prove a key
	// written under it is readable now.
	if err := pub.Set(ctx, r.Prefix+"k", "v", time.Minute).Err(); err != nil {
		t.Fatalf("set: %v", err)
	}
	if got, err := pub.Get(ctx, r.Prefix+"k").Result(); err != nil || got != "v" {
		t.Fatalf("get = %q, %v; want \"v\"", got, err)
	}
}

// TestCassandraSmoke exercises what the Cassandra backends rely on through
// gocql: a keyspace of our own, a table, TTL on insert, and a lightweight
// transaction that applies exactly once.
func TestCassandraSmoke(t *testing.T) {
	t.Parallel()
	c := NeedCassandra(t)
	s := c.Session(t)
	ctx, cancel := context.WithTimeout(t.Context(), 2*time.Minute)
	defer cancel()

	var strategy map[string]string
	if err := s.Query(`SELECT replication FROM system_schema.keyspaces WHERE keyspace_name = ?`, c.Keyspace).
		WithContext(ctx).Scan(&strategy); err != nil {
		t.Fatalf("read keyspace %s from system_schema: %v", c.Keyspace, err)
	}
	if strategy["class"] != "org.apache.cassandra.locator.SimpleStrategy" || strategy["replication_factor"] != "1" {
		t.Fatalf("keyspace replication = %v, want SimpleStrategy RF 1", strategy)
	}

	if err := s.Query(`CREATE TABLE queue (
		user text, device int, server_id bigint, payload blob,
		PRIMARY KEY ((user, device), server_id))`).WithContext(ctx).Exec(); err != nil {
		t.Fatalf("create table: %v", err)
	}

	// TTL on insert, read back.
	const ttl = 3600
	payload := []byte("ciphertext")
	if err := s.Query(`INSERT INTO queue (user, device, server_id, payload) VALUES (?, ?, ?, ?) USING TTL ?`,
		"alice", 1, int64(42), payload, ttl).WithContext(ctx).Exec(); err != nil {
		t.Fatalf("insert with TTL: %v", err)
	}
	var got []byte
	var left int
	if err := s.Query(`SELECT payload, TTL(payload) FROM queue WHERE user = ? AND device = ? AND server_id = ?`,
		"alice", 1, int64(42)).WithContext(ctx).Scan(&got, &left); err != nil {
		t.Fatalf("read back: %v", err)
	}
	if !bytes.Equal(got, payload) {
		t.Fatalf("payload = %q, want %q", got, payload)
	}
	// The TTL counts down from 3600; a minute of slack covers a slow box.
	if left <= ttl-60 || left > ttl {
		t.Fatalf("TTL(payload) = %d, want in (%d, %d]", left, ttl-60, ttl)
	}

	// LWT: the first INSERT ... IF NOT EXISTS applies, the second is refused
	// and reports the row that won.
	insert := `INSERT INTO queue (user, device, server_id, payload) VALUES (?, ?, ?, ?) IF NOT EXISTS`
	applied, err := s.Query(insert, "bob", 2, int64(7), []byte("first")).
		WithContext(ctx).MapScanCAS(map[string]any{})
	if err != nil {
		t.Fatalf("first LWT insert: %v", err)
	}
	if !applied {
		t.Fatal("first INSERT IF NOT EXISTS was not applied")
	}
	existing := map[string]any{}
	applied, err = s.Query(insert, "bob", 2, int64(7), []byte("second")).
		WithContext(ctx).MapScanCAS(existing)
	if err != nil {
		t.Fatalf("second LWT insert: %v", err)
	}
	if applied {
		t.Fatal("second INSERT IF NOT EXISTS was applied; want refused")
	}
	if p, _ := existing["payload"].([]byte); string(p) != "first" {
		t.Fatalf("refused LWT reports payload %q, want %q", p, "first")
	}
	var stored []byte
	if err := s.Query(`SELECT payload FROM queue WHERE user = ? AND device = ? AND server_id = ?`,
		"bob", 2, int64(7)).WithContext(ctx).Scan(&stored); err != nil {
		t.Fatalf("read after LWT: %v", err)
	}
	if string(stored) != "first" {
		t.Fatalf("stored payload = %q after refused LWT, want %q", stored, "first")
	}
}

// TestS3Smoke uploads 5 MiB through a presigned PUT URL and downloads it
// through a presigned GET URL with plain net/http, as hush clients move
// attachments, and checks every byte.
func TestS3Smoke(t *testing.T) {
	t.Parallel()
	st := NeedS3(t)
	ctx, cancel := context.WithTimeout(t.Context(), 2*time.Minute)
	defer cancel()

	body := make([]byte, 5<<20)
	if _, err := rand.Read(body); err != nil {
		t.Fatal(err)
	}
	key := "attachments/smoke.bin"
	presign := s3.NewPresignClient(st.Client(), s3.WithPresignExpires(15*time.Minute))

	put, err := presign.PresignPutObject(ctx, &s3.PutObjectInput{Bucket: aws.String(st.Bucket), Key: aws.String(key)})
	if err != nil {
		t.Fatalf("presign PUT: %v", err)
	}
	req, err := http.NewRequestWithContext(ctx, put.Method, put.URL, bytes.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	for k, vs := range put.SignedHeader {
		if k == "Host" {
			continue // net/http sets Host from the URL
		}
		for _, v := range vs {
			req.Header.Add(k, v)
		}
	}
	req.ContentLength = int64(len(body))
	if err := do(req, nil); err != nil {
		t.Fatalf("presigned PUT: %v", err)
	}

	head, err := st.Client().HeadObject(ctx, &s3.HeadObjectInput{Bucket: aws.String(st.Bucket), Key: aws.String(key)})
	if err != nil {
		t.Fatalf("head object: %v", err)
	}
	if aws.ToInt64(head.ContentLength) != int64(len(body)) {
		t.Fatalf("stored size = %d, want %d", aws.ToInt64(head.ContentLength), len(body))
	}

	get, err := presign.PresignGetObject(ctx, &s3.GetObjectInput{Bucket: aws.String(st.Bucket), Key: aws.String(key)})
	if err != nil {
		t.Fatalf("presign GET: %v", err)
	}
	req, err = http.NewRequestWithContext(ctx, get.Method, get.URL, nil)
	if err != nil {
		t.Fatal(err)
	}
	var got bytes.Buffer
	if err := do(req, &got); err != nil {
		t.Fatalf("presigned GET: %v", err)
	}
	if !bytes.Equal(got.Bytes(), body) {
		t.Fatalf("downloaded %d bytes (sha256 %x), want the %d uploaded (sha256 %x)",
			got.Len(), sha256.Sum256(got.Bytes()), len(body), sha256.Sum256(body))
	}

	// A URL signed for one key must not serve another.
	bad, err := http.NewRequestWithContext(ctx, get.Method, get.URL, nil)
	if err != nil {
		t.Fatal(err)
	}
	bad.URL.Path = "/" + st.Bucket + "/attachments/other.bin"
	bad.URL.RawPath = ""
	if err := do(bad, nil); err == nil {
		t.Fatal("a presigned GET URL with a changed path was accepted")
	}
}

// do sends req and copies a 2xx body into w (if not nil); any other status
// is an error carrying the start of the body.
func do(req *http.Request, w io.Writer) error {
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode/100 != 2 {
		msg, _ := io.ReadAll(io.LimitReader(resp.Body, 1024))
		return fmt.Errorf("%s %s: %s: %s", req.Method, req.URL.Path, resp.Status, msg)
	}
	if w == nil {
		_, err = io.Copy(io.Discard, resp.Body)
		return err
	}
	_, err = io.Copy(w, resp.Body)
	return err
}
