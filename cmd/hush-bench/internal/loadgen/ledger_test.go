package loadgen

import (
	"bytes"
	"testing"
	"time"
)

func TestLedgerCounts(t *testing.T) {
	l := NewLedger(2)
	for seq := range uint64(100) {
		l.Acked(0, seq)
	}
	l.Acked(1, 5)
	l.Acked(1, 5) // a repeated SendAck is one message
	for seq := range uint64(100) {
		if seq == 42 || seq == 77 {
			continue // lost
		}
		if !l.Delivered(0, seq) {
			t.Fatalf("first delivery of %d reported as repeat", seq)
		}
	}
	if l.Delivered(0, 10) {
		t.Fatal("second delivery of 10 reported as first")
	}
	l.Delivered(0, 10) // third
	l.Delivered(1, 5)
	l.Delivered(1, 900) // never acked
	l.Delivered(7, 0)   // unknown stream
	l.Refused(1)
	got := l.Counts()
	want := Counts{Acked: 101, Delivered: 100, Lost: 2, Duplicated: 2, Refused: 1, Unexpected: 2}
	if got != want {
		t.Fatalf("counts = %+v, want %+v", got, want)
	}
	if got.OK() || got.Err() == nil {
		t.Fatal("a ledger with losses reports OK")
	}
	if d, a := l.DeliveredSoFar(); d != 100 || a != 101 {
		t.Fatalf("so far: %d delivered, %d acked", d, a)
	}
}

func TestLedgerClean(t *testing.T) {
	l := NewLedger(1)
	for seq := range uint64(1000) {
		l.Acked(0, seq)
		l.Delivered(0, seq)
	}
	if c := l.Counts(); !c.OK() || c.Err() != nil || c.Delivered != 1000 {
		t.Fatalf("clean run: %+v", c)
	}
}

func TestStampRoundTrip(t *testing.T) {
	p, err := NewPayload(200)
	if err != nil {
		t.Fatal(err)
	}
	tail := bytes.Clone(p[StampSize:])
	s := Stamp{Stream: 7, Seq: 1<<40 + 3, Sent: 1234567 * time.Microsecond}
	s.Put(p)
	got, err := ReadStamp(p)
	if err != nil || got != s {
		t.Fatalf("ReadStamp = %+v, %v; want %+v", got, err, s)
	}
	if !bytes.Equal(p[StampSize:], tail) {
		t.Fatal("Put wrote past the stamp")
	}
	if _, err := ReadStamp(p[:StampSize-1]); err == nil {
		t.Fatal("short payload accepted")
	}
	if _, err := ReadStamp(make([]byte, 64)); err == nil {
		t.Fatal("payload without magic accepted")
	}
	if _, err := NewPayload(StampSize - 1); err == nil {
		t.Fatal("payload smaller than a stamp accepted")
	}
}

func TestClientIDRoundTrip(t *testing.T) {
	b := ClientID(3, 99, 5*time.Second)
	st, seq, sent, ok := ParseClientID(b)
	if !ok || st != 3 || seq != 99 || sent != 5*time.Second {
		t.Fatalf("ParseClientID = %d %d %v %v", st, seq, sent, ok)
	}
	if _, _, _, ok := ParseClientID(b[:15]); ok {
		t.Fatal("15-byte id accepted")
	}
}

func TestPercentiles(t *testing.T) {
	var l Latencies
	for i := 1000; i >= 1; i-- {
		l.Add(time.Duration(i) * time.Millisecond)
	}
	p := l.Percentiles()
	if p.N != 1000 || p.P50 != 500 || p.P90 != 900 || p.P99 != 990 || p.P999 != 999 || p.Max != 1000 || p.Mean != 500.5 {
		t.Fatalf("percentiles = %+v", p)
	}
	if e := PercentilesOf(nil); e.N != 0 || e.P99 != 0 {
		t.Fatalf("empty = %+v", e)
	}
}

func TestNewRefusesRemoteServers(t *testing.T) {
	for _, u := range []string{"http://10.0.0.1:8080", "http://example.org", "ftp://127.0.0.1", "http://"} {
		if _, err := New(Config{Server: u}); err == nil {
			t.Errorf("server %q accepted", u)
		}
	}
	if _, err := New(Config{Server: "http://127.0.0.1:1", Relays: []string{"http://192.168.1.1:1"}}); err == nil {
		t.Error("remote relay accepted")
	}
	e, err := New(Config{Server: "http://127.0.0.1:8080", SourceIPs: 3})
	if err != nil {
		t.Fatal(err)
	}
	seen := map[string]bool{}
	for range 6 {
		seen[e.source().IP.String()] = true
	}
	if len(seen) != 3 || !seen["127.0.0.2"] || !seen["127.0.0.4"] {
		t.Fatalf("source addresses %v, want 127.0.0.2–4", seen)
	}
	if a, b := e.Name("x"), e.Name("x"); a == b || len(a) > 32 {
		t.Fatalf("names %q, %q", a, b)
	}
}

func FuzzReadStamp(f *testing.F) {
	p, _ := NewPayload(StampSize)
	Stamp{Stream: 1, Seq: 2, Sent: 3}.Put(p)
	f.Add(p)
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, b []byte) {
		s, err := ReadStamp(b)
		if err != nil {
			return
		}
		q := make([]byte, StampSize)
		s.Put(q)
		if !bytes.Equal(q, b[:StampSize]) {
			t.Fatalf("stamp %+v does not re-encode to its input", s)
		}
	})
}

func FuzzParseClientID(f *testing.F) {
	f.Add(ClientID(1, 2, 3))
	f.Add([]byte{1, 2})
	f.Fuzz(func(t *testing.T, b []byte) {
		st, seq, sent, ok := ParseClientID(b)
		if ok && !bytes.Equal(ClientID(st, seq, sent), b) {
			t.Fatal("client id does not re-encode to its input")
		}
	})
}
