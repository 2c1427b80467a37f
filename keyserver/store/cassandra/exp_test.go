package cassandra

import (
	"testing"

	"github.com/gocql/gocql"
	"github.com/hushchat/hush/internal/testenv"
)

func TestExperiment(t *testing.T) {
	c := testenv.NeedCassandra(t)
	s := c.Session(t)
	var v string
	s.Query("SELECT release_version FROM system.local").Scan(&v)
	t.Log("version", v)
	must := func(q string, args ...any) {
		if err := s.Query(q, args...).Exec(); err != nil {
			t.Fatalf("%s: %v", q, err)
		}
	}
	must(`CREATE TABLE a (name text, device int, key_id int, next_device int static, devices set<int> static,
		pk blob, claimed boolean, PRIMARY KEY ((name), device, key_id))`)
	cas := func(label string, b *gocql.Batch) {
		m := map[string]any{}
		applied, iter, err := s.MapExecuteBatchCAS(b, m)
		if iter != nil {
			iter.Close()
		}
		t.Logf("%s: applied=%v err=%v prev=%v", label, applied, err, m)
	}
	b := s.NewBatch(gocql.LoggedBatch)
	b.Query(`UPDATE a SET next_device = 2, devices = {1} WHERE name = ? IF next_device = null`, "x")
	b.Query(`INSERT INTO a (name, device, key_id, pk) VALUES (?, 1, 0, 0x01)`, "x")
	b.Query(`INSERT INTO a (name, device, key_id, pk, claimed) VALUES (?, 1, 5, 0x05, false)`, "x")
	cas("create", b)
	b = s.NewBatch(gocql.LoggedBatch)
	b.Query(`UPDATE a SET next_device = 2, devices = {1} WHERE name = ? IF next_device = null`, "x")
	b.Query(`INSERT INTO a (name, device, key_id, pk) VALUES (?, 1, 0, 0x02)`, "x")
	cas("create again", b)
	b = s.NewBatch(gocql.LoggedBatch)
	b.Query(`INSERT INTO a (name, next_device, devices) VALUES (?, 2, {1}) IF NOT EXISTS`, "y")
	b.Query(`INSERT INTO a (name, device, key_id, pk) VALUES (?, 1, 0, 0x01)`, "y")
	cas("create y via static insert if not exists", b)

	m := map[string]any{}
	ap, err := s.Query(`UPDATE a SET claimed = true WHERE name = ? AND device = 1 AND key_id = 7 IF claimed = false`, "x").MapScanCAS(m)
	t.Logf("claim nonexistent: %v %v %v", ap, err, m)
	m = map[string]any{}
	ap, err = s.Query(`UPDATE a SET claimed = true WHERE name = ? AND device = 1 AND key_id = 5 IF claimed = false`, "x").MapScanCAS(m)
	t.Logf("claim existing: %v %v %v", ap, err, m)
	m = map[string]any{}
	ap, err = s.Query(`UPDATE a SET claimed = true WHERE name = ? AND device = 1 AND key_id = 5 IF claimed = false`, "x").MapScanCAS(m)
	t.Logf("claim again: %v %v %v", ap, err, m)

	// upload: condition on static set + IF NOT EXISTS rows
	b = s.NewBatch(gocql.LoggedBatch)
	b.Query(`UPDATE a SET devices = {1} WHERE name = ? IF devices = {1}`, "x")
	b.Query(`INSERT INTO a (name, device, key_id, pk, claimed) VALUES (?, 1, 6, 0x06, false) IF NOT EXISTS`, "x")
	b.Query(`INSERT INTO a (name, device, key_id, pk, claimed) VALUES (?, 1, 8, 0x08, false) IF NOT EXISTS`, "x")
	cas("upload", b)
	b = s.NewBatch(gocql.LoggedBatch)
	b.Query(`UPDATE a SET devices = {1} WHERE name = ? IF devices = {1}`, "x")
	b.Query(`INSERT INTO a (name, device, key_id, pk, claimed) VALUES (?, 1, 6, 0x06, false) IF NOT EXISTS`, "x")
	b.Query(`INSERT INTO a (name, device, key_id, pk, claimed) VALUES (?, 1, 9, 0x09, false) IF NOT EXISTS`, "x")
	cas("upload dup", b)
	// remove with range delete in conditional batch
	b = s.NewBatch(gocql.LoggedBatch)
	b.Query(`UPDATE a SET devices = devices - {1} WHERE name = ? IF devices = {1}`, "x")
	b.Query(`DELETE FROM a WHERE name = ? AND device = 1`, "x")
	cas("remove range", b)
	var n int
	s.Query(`SELECT count(*) FROM a WHERE name = ?`, "x").Scan(&n)
	t.Log("rows left", n)
	m = map[string]any{}
	ap, err = s.Query(`DELETE FROM a WHERE name = ? AND device = 1 AND key_id = 6 IF claimed = false`, "zz").MapScanCAS(m)
	t.Logf("delete nonexist: %v %v %v", ap, err, m)
}
