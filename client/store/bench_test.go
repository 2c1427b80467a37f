package store

import (
	"context"
	"encoding/binary"
	"fmt"
	"testing"
	"time"

	"github.com/hushchat/hush/crypto"
)

func BenchmarkInsertMessage(b *testing.B) {
	ctx := context.Background()
	db := openTest(b)
	db.EnsureConversation(ctx, Conversation{ID: "@bob", Peer: "bob", Created: time.Now()})
	b.ResetTimer()
	for i := range b.N {
		id := make([]byte, 16)
		binary.BigEndian.PutUint64(id, uint64(i))
		m := &Message{Conv: "@bob", ID: id, Sender: "bob", SenderDevice: 1, Counter: uint64(i + 1), Kind: KindText,
			Body: fmt.Sprintf("message number %d about nothing much", i), ReceivedAt: time.Now()}
		if _, err := db.InsertMessage(ctx, m); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkSearch(b *testing.B) {
	ctx := context.Background()
	db := openTest(b)
	db.EnsureConversation(ctx, Conversation{ID: "@bob", Peer: "bob", Created: time.Now()})
	words := []string{"apple", "banana", "cherry", "damson", "elder", "fig", "grape"}
	err := db.Atomic(ctx, func(ctx context.Context) error {
		for i := range 10000 {
			id := make([]byte, 16)
			binary.BigEndian.PutUint64(id, uint64(i))
			m := &Message{Conv: "@bob", ID: id, Sender: "bob", SenderDevice: 1, Counter: uint64(i + 1), Kind: KindText,
				Body: fmt.Sprintf("%s and %s number %d", words[i%7], words[(i/7)%7], i), ReceivedAt: time.Now()}
			if _, err := db.InsertMessage(ctx, m); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		b.Fatal(err)
	}
	b.ResetTimer()
	for range b.N {
		res, err := db.Search(ctx, "cherry fi", "", 50)
		if err != nil || len(res) == 0 {
			b.Fatal(len(res), err)
		}
	}
}

// BenchmarkNestedAtomic is one crypto operation's worth of store calls
// (load and store a session) in a nested Atomic inside the client's
// transaction, 64 to a commit, as a batch of received envelopes does:
// without savepoints (what Atomic does) and with one per nested call (what
// it did before, and still does on a second run after a swallowed failure).
func BenchmarkNestedAtomic(b *testing.B) {
	for _, savepoints := range []bool{false, true} {
		b.Run(fmt.Sprintf("savepoints=%v", savepoints), func(b *testing.B) {
			ctx := context.Background()
			db := openTest(b)
			addr := crypto.Address{Name: "bob", DeviceID: 1}
			rec := make([]byte, 1500)
			if err := db.StoreSession(ctx, addr, rec); err != nil {
				b.Fatal(err)
			}
			b.ResetTimer()
			for i := 0; i < b.N; i += 64 {
				_, err := db.atomic(ctx, func(ctx context.Context) error {
					for range min(64, b.N-i) {
						err := db.Atomic(ctx, func(ctx context.Context) error {
							if _, err := db.LoadSession(ctx, addr); err != nil {
								return err
							}
							return db.StoreSession(ctx, addr, rec)
						})
						if err != nil {
							return err
						}
					}
					return nil
				}, savepoints)
				if err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
