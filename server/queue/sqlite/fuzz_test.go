package sqlite

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"testing"
	"time"

	"github.com/hushchat/hush/server/queue"
	"github.com/hushchat/hush/server/queue/queuetest"
)

// FuzzStoreAgainstModel decodes the input into a sequence of store
// operations (puts to full queues, retries, group sends, acks of own and
// foreign ids, clock jumps across expiry and the idempotency window, sweeps,
// restarts) and checks every result against a plain in-memory model of the
// queue.Store contract, then checks the database's invariants.
func FuzzStoreAgainstModel(f *testing.F) {
	f.Add([]byte{0, 1, 2, 3, 0, 4, 1, 2, 3, 2, 0, 0, 3, 1, 5, 7})
	f.Add([]byte{0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 3, 0, 0})          // fill a queue to its cap
	f.Add([]byte{1, 3, 7, 1, 3, 7, 2, 0, 0, 2, 1, 0, 2, 2, 0, 7, 7, 7})                   // group sends, acks
	f.Add([]byte{0, 9, 1, 4, 30, 5, 0, 9, 1, 3, 0, 0, 6, 3, 0, 0, 4, 200, 5, 7, 7, 7, 7}) // expiry, sweep, reopen
	f.Fuzz(func(t *testing.T, in []byte) {
		if len(in) > 512 {
			in = in[:512] // bound the work per input
		}
		m := newModel(t)
		defer func() { m.s.Close() }() // the store open at the end: a restart replaces m.s
		r := bytes.NewReader(in)
		next := func() int {
			b, err := r.ReadByte()
			if err != nil {
				return 0
			}
			return int(b)
		}
		for r.Len() > 0 {
			m.step(next(), next)
		}
		if err := m.s.Check(context.Background()); err != nil {
			t.Fatal(err)
		}
		m.compareAll()
	})
}

const modelCap = 4

var modelDevices = []queue.Device{{Account: "bob", ID: 1}, {Account: "bob", ID: 2}, {Account: "carol", ID: 1}, {Account: "dave", ID: 9}}

type modelMsg struct {
	sender    string
	sdev      uint32
	typ       int32
	payload   string
	st, exp   time.Time
	sharedRef bool
}

type idemKey struct {
	sender string
	sdev   uint32
	cid    byte
}

type idemRec struct {
	id uint64
	st time.Time
}

type model struct {
	t      *testing.T
	path   string
	clock  *queuetest.Clock
	s      *Store
	nextID uint64
	ids    []uint64 // every id handed out, for acks to pick from
	queues map[queue.Device]map[uint64]modelMsg
	idem   map[idemKey]idemRec
}

func newModel(t *testing.T) *model {
	m := &model{
		t:      t,
		path:   filepath.Join(fastTempDir(t), "queue.db"),
		clock:  queuetest.NewClock(time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)),
		nextID: 1 << 30,
		queues: map[queue.Device]map[uint64]modelMsg{},
		idem:   map[idemKey]idemRec{},
	}
	for _, d := range modelDevices {
		m.queues[d] = map[uint64]modelMsg{}
	}
	m.open()
	return m
}

// fastTempDir is a temporary directory on tmpfs when there is one: the
// model test is about logic, and fsyncs to a real disk would make fuzzing
// crawl. (Durability has its own test, on a real disk.)
func fastTempDir(t *testing.T) string {
	if fi, err := os.Stat("/dev/shm"); err == nil && fi.IsDir() {
		if dir, err := os.MkdirTemp("/dev/shm", "hush-queue-fuzz-"); err == nil {
			t.Cleanup(func() { os.RemoveAll(dir) })
			return dir
		}
	}
	return t.TempDir()
}

func (m *model) open() {
	s, err := Open(m.path, Options{MaxDepth: modelCap, Clock: m.clock.Now})
	if err != nil {
		m.t.Fatal(err)
	}
	m.s = s
}

func (m *model) step(kind int, next func() int) {
	ctx := context.Background()
	t := m.t
	switch kind % 8 {
	case 0, 1: // put: 1-1 (0) or group (1)
		now := m.clock.Now()
		cid := byte(next() % 6)
		sdev := uint32(next()%2 + 1)
		n := next()%3 + 1
		first := next()
		ttl := time.Duration(next()%48+1) * time.Hour
		m.nextID += 7
		p := queue.Put{
			ServerID: m.nextID, Sender: "alice", SenderDevice: sdev,
			ClientID:   bytes.Repeat([]byte{cid}, queue.ClientIDSize),
			ServerTime: now, ExpiresAt: now.Add(ttl),
		}
		if kind%8 == 1 {
			p.Shared, p.SharedType = []byte(fmt.Sprintf("shared %d", p.ServerID)), 3
		}
		for i := 0; i < n; i++ {
			d := modelDevices[(first+i)%len(modelDevices)]
			rc := queue.Recipient{Device: d, Type: 2}
			if p.Shared == nil || i == 1 { // in a group send, the second recipient has its own copy
				rc.Payload = []byte(fmt.Sprintf("%d for %s", p.ServerID, d))
			}
			p.Recipients = append(p.Recipients, rc)
		}
		m.ids = append(m.ids, p.ServerID)
		got, err := m.s.Put(ctx, p)
		want, wantErr := m.put(p, cid)
		switch {
		case wantErr != nil:
			var qf *queue.QueueFullError
			if !errors.As(err, &qf) || qf.Device != wantErr.Device || qf.Limit != modelCap {
				t.Fatalf("put %d: got %+v, %v; want %v", p.ServerID, got, err, wantErr)
			}
		case err != nil:
			t.Fatalf("put %d: %v, want %+v", p.ServerID, err, want)
		case got != want:
			t.Fatalf("put %d: got %+v, want %+v", p.ServerID, got, want)
		}
	case 2: // ack a few ids handed out (own, foreign, gone) and a bogus one
		d := modelDevices[next()%len(modelDevices)]
		var ids []uint64
		for i := next() % 4; i >= 0; i-- {
			if len(m.ids) > 0 {
				ids = append(ids, m.ids[next()%len(m.ids)])
			}
		}
		ids = append(ids, uint64(next()))
		got, err := m.s.Ack(ctx, d, ids)
		if err != nil {
			t.Fatal(err)
		}
		want := 0
		for _, id := range ids {
			if _, ok := m.queues[d][id]; ok {
				delete(m.queues[d], id)
				want++
			}
		}
		if got != want {
			t.Fatalf("ack %s %v deleted %d, want %d", d, ids, got, want)
		}
	case 3: // fetch a page
		d := modelDevices[next()%len(modelDevices)]
		limit := next()%5 + 1
		var after uint64
		if len(m.ids) > 0 && next()%2 == 0 {
			after = m.ids[next()%len(m.ids)]
		}
		got, err := m.s.Fetch(ctx, d, after, limit)
		if err != nil {
			t.Fatal(err)
		}
		m.compareFetch(d, after, limit, got)
	case 4: // time passes: up to ~25 hours
		m.clock.Advance(time.Duration(next()*6) * time.Minute)
	case 5: // sweep
		now := m.clock.Now()
		got, err := m.s.Sweep(ctx, now)
		if err != nil {
			t.Fatal(err)
		}
		want := 0
		for _, q := range m.queues {
			for id, msg := range q {
				if !msg.exp.After(now) {
					delete(q, id)
					want++
				}
			}
		}
		for k, r := range m.idem {
			if !r.st.After(now.Add(-queue.IdempotencyWindow)) {
				delete(m.idem, k)
			}
		}
		if got != want {
			t.Fatalf("sweep removed %d, want %d", got, want)
		}
	case 6: // restart
		if err := m.s.Close(); err != nil {
			t.Fatal(err)
		}
		m.open()
	case 7:
		m.compareAll()
	}
}

// put applies p to the model and returns what the store must answer.
func (m *model) put(p queue.Put, cid byte) (queue.PutResult, *queue.QueueFullError) {
	now := m.clock.Now()
	k := idemKey{p.Sender, p.SenderDevice, cid}
	if r, ok := m.idem[k]; ok && r.st.After(now.Add(-queue.IdempotencyWindow)) {
		return queue.PutResult{ServerID: r.id, Duplicate: true, ServerTime: r.st}, nil
	}
	for _, rc := range p.Recipients {
		if len(m.queues[rc.Device]) >= modelCap {
			return queue.PutResult{}, &queue.QueueFullError{Device: rc.Device, Limit: modelCap}
		}
	}
	for _, rc := range p.Recipients {
		msg := modelMsg{sender: p.Sender, sdev: p.SenderDevice, typ: rc.Type, payload: string(rc.Payload), st: p.ServerTime, exp: p.ExpiresAt}
		if len(rc.Payload) == 0 {
			msg.typ, msg.payload, msg.sharedRef = p.SharedType, string(p.Shared), true
		}
		m.queues[rc.Device][p.ServerID] = msg
	}
	m.idem[k] = idemRec{p.ServerID, p.ServerTime}
	return queue.PutResult{ServerID: p.ServerID, ServerTime: p.ServerTime}, nil
}

func (m *model) compareFetch(d queue.Device, after uint64, limit int, got []queue.Message) {
	now := m.clock.Now()
	var want []uint64
	for id, msg := range m.queues[d] {
		if id > after && msg.exp.After(now) {
			want = append(want, id)
		}
	}
	sort.Slice(want, func(i, j int) bool { return want[i] < want[j] })
	if len(want) > limit {
		want = want[:limit]
	}
	if len(got) != len(want) {
		m.t.Fatalf("fetch %s after %d limit %d: got %d messages, want %v", d, after, limit, len(got), want)
	}
	for i, g := range got {
		w := m.queues[d][want[i]]
		if g.ServerID != want[i] || g.Sender != w.sender || g.SenderDevice != w.sdev || g.Type != w.typ ||
			string(g.Payload) != w.payload || !g.ServerTime.Equal(w.st) {
			m.t.Fatalf("fetch %s: message %d = %+v, want id %d %+v", d, i, g, want[i], w)
		}
	}
}

// compareAll compares every queue, depth, the shared payload count and
// Oldest.
func (m *model) compareAll() {
	ctx := context.Background()
	shared := map[uint64]bool{}
	var oldest time.Time
	for _, d := range modelDevices {
		m.compareFetch(d, 0, queue.MaxFetch, must(m.s.Fetch(ctx, d, 0, queue.MaxFetch)))
		if got := must(m.s.Depth(ctx, d)); got != len(m.queues[d]) {
			m.t.Fatalf("Depth(%s) = %d, want %d", d, got, len(m.queues[d]))
		}
		for id, msg := range m.queues[d] {
			if msg.sharedRef {
				shared[id] = true
			}
			if oldest.IsZero() || msg.st.Before(oldest) {
				oldest = msg.st
			}
		}
	}
	if got := must(m.s.Payloads(ctx)); got != len(shared) {
		m.t.Fatalf("Payloads = %d, want %d", got, len(shared))
	}
	if got := must(m.s.Oldest(ctx)); !got.Equal(oldest) {
		m.t.Fatalf("Oldest = %v, want %v", got, oldest)
	}
}

func must[T any](v T, err error) T {
	if err != nil {
		panic(err)
	}
	return v
}
