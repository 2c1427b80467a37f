package store

import (
	"context"
	"encoding/binary"
	"fmt"
	"testing"
	"time"
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
