package crypto

import (
	"context"
	"errors"
	"fmt"
	"testing"

	"go.mau.fi/libsignal/protocol"
)

// pairwise carries a distribution message from one device to another over
// their 1-1 session, as the client does, and processes it on arrival.
func pairwise(t *testing.T, from, to *device, group string, skdm []byte) {
	t.Helper()
	ctx := context.Background()
	if ok, _ := from.HasSession(ctx, to.Address()); !ok {
		connect(t, from, to, -1)
	}
	c, err := from.Encrypt(ctx, to.Address(), skdm)
	if err != nil {
		t.Fatal(err)
	}
	pt, err := to.Decrypt(ctx, from.Address(), c)
	if err != nil {
		t.Fatal(err)
	}
	if err := to.ProcessDistribution(ctx, group, from.Address(), pt); err != nil {
		t.Fatal(err)
	}
}

func TestGroupRotationAfterRemoval(t *testing.T) {
	ctx := context.Background()
	const group = "group-1"
	alice := newDevice(t, "alice", 1, 0)
	bob := newDevice(t, "bob", 1, 0)
	carol := newDevice(t, "carol", 1, 0)
	members := []*device{alice, bob, carol}

	distribute := func(to []*device) {
		for _, from := range to {
			skdm, err := from.GroupDistribution(ctx, group)
			if err != nil {
				t.Fatal(err)
			}
			for _, r := range to {
				if r != from {
					pairwise(t, from, r, group, skdm)
				}
			}
		}
	}
	distribute(members)

	// Everyone sends; everyone else reads, out of order too.
	for round := range 3 {
		for _, from := range members {
			var msgs [][]byte
			for i := range 3 {
				m, err := from.GroupEncrypt(ctx, group, []byte(fmt.Sprintf("%s r%d m%d", from.self.Name, round, i)))
				if err != nil {
					t.Fatal(err)
				}
				msgs = append(msgs, m)
			}
			for _, r := range members {
				if r == from {
					continue
				}
				for _, i := range []int{2, 0, 1} {
					pt, err := r.GroupDecrypt(ctx, group, from.Address(), msgs[i])
					if err != nil {
						t.Fatalf("%s reads %s: %v", r.self.Name, from.self.Name, err)
					}
					if want := fmt.Sprintf("%s r%d m%d", from.self.Name, round, i); string(pt) != want {
						t.Fatalf("got %q, want %q", pt, want)
					}
				}
				if _, err := r.GroupDecrypt(ctx, group, from.Address(), msgs[0]); !errors.Is(err, ErrDuplicateMessage) {
					t.Fatalf("duplicate group message: %v", err)
				}
			}
		}
	}
	before, _ := alice.GroupEncrypt(ctx, group, []byte("before removal"))

	// Carol is removed: alice and bob rotate, distribute to each other only,
	// and forget carol's key.
	remaining := []*device{alice, bob}
	for _, from := range remaining {
		skdm, err := from.RotateSenderKey(ctx, group)
		if err != nil {
			t.Fatal(err)
		}
		for _, r := range remaining {
			if r != from {
				pairwise(t, from, r, group, skdm)
			}
		}
		for _, r := range remaining {
			if err := r.ForgetSenderKey(ctx, group, carol.Address()); err != nil {
				t.Fatal(err)
			}
		}
	}
	for _, from := range remaining {
		m, err := from.GroupEncrypt(ctx, group, []byte("after removal"))
		if err != nil {
			t.Fatal(err)
		}
		for _, r := range remaining {
			if r == from {
				continue
			}
			if pt, err := r.GroupDecrypt(ctx, group, from.Address(), m); err != nil || string(pt) != "after removal" {
				t.Fatalf("%s reads %s after rotation: %q %v", r.self.Name, from.self.Name, pt, err)
			}
		}
		pt, err := carol.GroupDecrypt(ctx, group, from.Address(), m)
		if !errors.Is(err, ErrNoSenderKey) || pt != nil {
			t.Fatalf("removed member read %s's new message: %q, %v", from.self.Name, pt, err)
		}
	}
	// Carol can still read what was sent while she was a member.
	if pt, err := carol.GroupDecrypt(ctx, group, alice.Address(), before); err != nil || string(pt) != "before removal" {
		t.Fatalf("carol lost pre-removal message: %q %v", pt, err)
	}
	// Carol's later messages are refused by the remaining members.
	m, err := carol.GroupEncrypt(ctx, group, []byte("still here?"))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := alice.GroupDecrypt(ctx, group, carol.Address(), m); !errors.Is(err, ErrNoSenderKey) {
		t.Fatalf("forgotten member's message: %v", err)
	}
}

func TestGroupDistributionReplayIsNoOp(t *testing.T) {
	ctx := context.Background()
	const group = "g"
	alice := newDevice(t, "alice", 1, 0)
	bob := newDevice(t, "bob", 1, 0)
	skdm, _ := alice.GroupDistribution(ctx, group)
	if err := bob.ProcessDistribution(ctx, group, alice.Address(), skdm); err != nil {
		t.Fatal(err)
	}
	m, _ := alice.GroupEncrypt(ctx, group, []byte("one"))
	if _, err := bob.GroupDecrypt(ctx, group, alice.Address(), m); err != nil {
		t.Fatal(err)
	}
	// Replaying the old distribution must not rewind bob's chain.
	if err := bob.ProcessDistribution(ctx, group, alice.Address(), skdm); err != nil {
		t.Fatal(err)
	}
	if _, err := bob.GroupDecrypt(ctx, group, alice.Address(), m); !errors.Is(err, ErrDuplicateMessage) {
		t.Fatalf("message readable twice after a replayed distribution: %v", err)
	}
	// The same chain id under another signing key is refused.
	mallory := newDevice(t, "mallory", 1, 0)
	forged, _ := mallory.GroupDistribution(ctx, group)
	fm, err := parseDistributionMessage(forged)
	if err != nil {
		t.Fatal(err)
	}
	am, _ := parseDistributionMessage(skdm)
	if fm.ID() != am.ID() {
		// Re-encode mallory's key under alice's chain id.
		forged = rebuildDistribution(t, am.ID(), fm)
	}
	if err := bob.ProcessDistribution(ctx, group, alice.Address(), forged); !errors.Is(err, ErrInvalidMessage) {
		t.Fatalf("forged signing key: %v", err)
	}
	// A group message signed by someone else is refused.
	mm, _ := mallory.GroupEncrypt(ctx, group, []byte("forged"))
	if _, err := bob.GroupDecrypt(ctx, group, alice.Address(), mm); err == nil {
		t.Fatal("message from another sender's chain accepted")
	}
	if _, err := bob.GroupEncrypt(ctx, group, []byte("x")); !errors.Is(err, ErrNoSenderKey) {
		t.Fatalf("encrypt without own sender key: %v", err)
	}
}

// rebuildDistribution re-encodes m's chain and signing key under chain id.
func rebuildDistribution(t *testing.T, id uint32, m *protocol.SenderKeyDistributionMessage) []byte {
	t.Helper()
	return protocol.NewSenderKeyDistributionMessage(id, m.Iteration(), m.ChainKey(), m.SignatureKey(), serializer.SenderKeyDistributionMessage).Serialize()
}
