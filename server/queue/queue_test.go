package queue

import (
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/hushchat/hush/protocol"
)

func TestLimitsFollowTheProtocol(t *testing.T) {
	// Spelled out, so a change of either side is a conscious one.
	if MaxRecipients != 4096 || protocol.MaxRecipients != 4096 {
		t.Errorf("MaxRecipients %d, protocol %d; want 4096", MaxRecipients, protocol.MaxRecipients)
	}
	if MaxPayloadSize != 128<<10 || ClientIDSize != 16 || MaxAccountLen != 32 {
		t.Errorf("MaxPayloadSize %d, ClientIDSize %d, MaxAccountLen %d", MaxPayloadSize, ClientIDSize, MaxAccountLen)
	}
	if (Options{}).DepthLimit() != 10_000 || (Options{MaxDepth: 7}).DepthLimit() != 7 {
		t.Errorf("DepthLimit: default %d, set 7 → %d", (Options{}).DepthLimit(), (Options{MaxDepth: 7}).DepthLimit())
	}
	fixed := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	if got := (Options{Clock: func() time.Time { return fixed }}).Now(); !got.Equal(fixed) {
		t.Errorf("Now with a clock = %v", got)
	}
}

func TestErrors(t *testing.T) {
	qf := &QueueFullError{Device: Device{Account: "bob", ID: 2}, Limit: 10000}
	if got, want := qf.Error(), "queue of bob.2 is full (limit 10000 messages)"; got != want {
		t.Errorf("QueueFullError = %q, want %q", got, want)
	}
	wrapped := fmt.Errorf("send: %w", qf)
	if got, ok := IsQueueFull(wrapped); !ok || got != qf {
		t.Errorf("IsQueueFull(%v) = %v, %v", wrapped, got, ok)
	}
	if IsRetryable(wrapped) {
		t.Error("a full queue is not a storage failure")
	}

	cause := errors.New("disk I/O error")
	u := Unavailable("put", cause)
	if !IsRetryable(u) || !errors.Is(u, ErrUnavailable) || !errors.Is(u, cause) {
		t.Errorf("Unavailable(%v) = %v: retryable %v, is ErrUnavailable %v, is cause %v",
			cause, u, IsRetryable(u), errors.Is(u, ErrUnavailable), errors.Is(u, cause))
	}
	if got, want := u.Error(), "queue put: storage unavailable: disk I/O error"; got != want {
		t.Errorf("Unavailable = %q, want %q", got, want)
	}
	if !IsRetryable(fmt.Errorf("x: %w", ErrClosed)) || IsRetryable(ErrInvalid) || IsRetryable(nil) {
		t.Error("IsRetryable: ErrClosed must be retryable, ErrInvalid and nil not")
	}
}

func validPut() Put {
	now := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	return Put{
		ServerID: 1, Sender: "alice", SenderDevice: 1, ClientID: make([]byte, 16),
		ServerTime: now, ExpiresAt: now.Add(time.Hour),
		Recipients: []Recipient{{Device: Device{Account: "bob", ID: 1}, Payload: []byte("x")}},
	}
}

func TestValidate(t *testing.T) {
	if err := (&Put{}).Validate(); !errors.Is(err, ErrInvalid) {
		t.Errorf("empty put: %v", err)
	}
	p := validPut()
	if err := p.Validate(); err != nil {
		t.Fatalf("valid put: %v", err)
	}
	// Duplicates are found in both the small and the large recipient path.
	for _, n := range []int{2, 16, 17, MaxRecipients} {
		p := validPut()
		p.Recipients = nil
		for i := 0; i < n; i++ {
			p.Recipients = append(p.Recipients, Recipient{Device: Device{Account: "m", ID: uint32(i)}, Payload: []byte("x")})
		}
		if err := p.Validate(); err != nil {
			t.Fatalf("%d distinct recipients: %v", n, err)
		}
		p.Recipients[n-1].Device = p.Recipients[0].Device
		if err := p.Validate(); !errors.Is(err, ErrInvalid) {
			t.Fatalf("%d recipients with a duplicate: %v", n, err)
		}
	}
	long := validPut()
	long.Sender = "a123456789012345678901234567890123" // 34 bytes
	if err := long.Validate(); !errors.Is(err, ErrInvalid) {
		t.Errorf("long sender: %v", err)
	}
	shared := validPut()
	shared.Shared = []byte("group")
	shared.Recipients = append(shared.Recipients, Recipient{Device: Device{Account: "carol", ID: 1}})
	if err := shared.Validate(); err != nil || shared.SharedRefs() != 1 {
		t.Errorf("group put: %v, %d shared refs, want 1", err, shared.SharedRefs())
	}
	if err := ValidateFetch(Device{Account: "bob", ID: 1}, MaxFetch); err != nil {
		t.Errorf("ValidateFetch at the limit: %v", err)
	}
}
