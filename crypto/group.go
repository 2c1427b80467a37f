package crypto

import (
	"bytes"
	"context"
	"errors"
	"fmt"

	"go.mau.fi/libsignal/groups"
	"go.mau.fi/libsignal/protocol"
)

// Sender-key groups (Signal's "sender keys"): each member device has its own
// sending chain per group, hands the chain's seed and signing key to every
// other member once (a SenderKeyDistributionMessage, sent over the pairwise
// sessions), and then encrypts each group message once for everybody. The
// relay stores one copy.
//
// Removing a member: every remaining member calls RotateSenderKey and sends
// the new distribution message pairwise to the remaining members only, and
// calls ForgetSenderKey for the removed member's devices. The removed member
// keeps the old chains — it can read what was sent while it was a member —
// but never receives the new ones.

// MaxGroupIDSize bounds a group id.
const MaxGroupIDSize = 256

// ErrGroupID is returned for an empty or oversized group id.
var ErrGroupID = errors.New("group id must be 1–256 bytes")

func checkGroupID(id string) error {
	if len(id) == 0 || len(id) > MaxGroupIDSize {
		return fmt.Errorf("%w, got %d", ErrGroupID, len(id))
	}
	return nil
}

func senderKeyName(groupID string, sender Address) *protocol.SenderKeyName {
	return protocol.NewSenderKeyName(groupID, sender.signal())
}

// GroupDistribution returns this device's sender-key distribution message
// for groupID, creating the sender key on first use. Send it to each member
// device over the pairwise session (Content.sender_key_distribution). It
// carries the chain at its current position, so a member added later cannot
// read earlier messages.
func (p *Protocol) GroupDistribution(ctx context.Context, groupID string) ([]byte, error) {
	if err := checkGroupID(groupID); err != nil {
		return nil, fmt.Errorf("group distribution: %w", err)
	}
	defer p.lockGroupSender(groupID, p.self).Unlock()
	var out []byte
	err := p.atomic(ctx, "group distribution", func(ctx context.Context) error {
		l := p.lib()
		msg, err := groups.NewGroupSessionBuilder(l, serializer).Create(ctx, senderKeyName(groupID, p.self))
		if err != nil {
			return p.mapErr("group distribution", err, l)
		}
		out = msg.Serialize()
		return nil
	})
	return out, err
}

// RotateSenderKey replaces this device's sender key for groupID with a new
// chain (new id, seed and signing key) and returns its distribution
// message. Call it when a member leaves or is removed, and send the result
// to the remaining members only.
func (p *Protocol) RotateSenderKey(ctx context.Context, groupID string) ([]byte, error) {
	if err := checkGroupID(groupID); err != nil {
		return nil, fmt.Errorf("rotate sender key: %w", err)
	}
	defer p.lockGroupSender(groupID, p.self).Unlock()
	var out []byte
	err := p.atomic(ctx, "rotate sender key", func(ctx context.Context) error {
		if err := p.store.DeleteSenderKey(ctx, groupID, p.self); err != nil {
			return fmt.Errorf("rotate sender key: %w", err)
		}
		l := p.lib()
		msg, err := groups.NewGroupSessionBuilder(l, serializer).Create(ctx, senderKeyName(groupID, p.self))
		if err != nil {
			return p.mapErr("rotate sender key", err, l)
		}
		out = msg.Serialize()
		return nil
	})
	return out, err
}

// ProcessDistribution stores a member's sender key for groupID. sender must
// be the device whose pairwise session delivered the message — that is what
// authenticates it. Processing the same distribution message again is a
// no-op (it cannot rewind the chain and re-open used message keys); a
// different signing key under an existing chain id is refused.
func (p *Protocol) ProcessDistribution(ctx context.Context, groupID string, sender Address, distribution []byte) error {
	what := fmt.Sprintf("process sender key of %s", sender)
	if err := checkGroupID(groupID); err != nil {
		return fmt.Errorf("%s: %w", what, err)
	}
	if err := sender.Validate(); err != nil {
		return fmt.Errorf("%s: %w", what, err)
	}
	msg, err := parseDistributionMessage(distribution)
	if err != nil {
		return fmt.Errorf("%s: %w", what, err)
	}
	defer p.lockGroupSender(groupID, sender).Unlock()
	return p.atomic(ctx, what, func(ctx context.Context) error {
		l := p.lib()
		name := senderKeyName(groupID, sender)
		rec, err := l.LoadSenderKey(ctx, name)
		if err != nil {
			return fmt.Errorf("%s: %w", what, err)
		}
		if st, err := rec.GetSenderKeyStateByID(msg.ID()); err == nil {
			if bytes.Equal(st.SigningKey().PublicKey().Serialize(), msg.SignatureKey().Serialize()) {
				return nil
			}
			return fmt.Errorf("%s: %w: chain %d already known with another signing key", what, ErrInvalidMessage, msg.ID())
		}
		if err := groups.NewGroupSessionBuilder(l, serializer).Process(ctx, name, msg); err != nil {
			return p.mapErr(what, err, l)
		}
		return nil
	})
}

// ForgetSenderKey deletes the sender key of sender for groupID (the member
// left or was removed); its later messages fail with ErrNoSenderKey.
func (p *Protocol) ForgetSenderKey(ctx context.Context, groupID string, sender Address) error {
	defer p.lockGroupSender(groupID, sender).Unlock()
	if err := p.store.DeleteSenderKey(ctx, groupID, sender); err != nil {
		return fmt.Errorf("forget sender key of %s: %w", sender, err)
	}
	return nil
}

// GroupEncrypt encrypts plaintext once for every member holding this
// device's current sender key for groupID. ErrNoSenderKey means
// GroupDistribution was never called for the group.
func (p *Protocol) GroupEncrypt(ctx context.Context, groupID string, plaintext []byte) ([]byte, error) {
	if err := checkGroupID(groupID); err != nil {
		return nil, fmt.Errorf("group encrypt: %w", err)
	}
	if len(plaintext) > MaxMessageSize {
		return nil, fmt.Errorf("group encrypt: %w: %d bytes (limit %d)", ErrMessageTooLarge, len(plaintext), MaxMessageSize)
	}
	defer p.lockGroupSender(groupID, p.self).Unlock()
	var out []byte
	err := p.atomic(ctx, "group encrypt", func(ctx context.Context) error {
		l := p.lib()
		if _, err := p.store.LoadSenderKey(ctx, groupID, p.self); err != nil {
			if errors.Is(err, ErrNotFound) {
				return fmt.Errorf("group encrypt: %w: call GroupDistribution first", ErrNoSenderKey)
			}
			return fmt.Errorf("group encrypt: %w", err)
		}
		name := senderKeyName(groupID, p.self)
		c := groups.NewGroupCipher(groups.NewGroupSessionBuilder(l, serializer), name, l)
		msg, err := c.Encrypt(ctx, plaintext)
		if err != nil {
			return p.mapErr("group encrypt", err, l)
		}
		out = msg.SignedSerialize()
		return nil
	})
	return out, err
}

// GroupDecrypt decrypts a group message from sender. Failures change
// nothing; the typed errors are ErrDuplicateMessage, ErrNoSenderKey (no
// key, or a chain this device was never given — e.g. after it was removed),
// ErrTooFarInFuture, ErrMessageTooLarge and ErrInvalidMessage.
func (p *Protocol) GroupDecrypt(ctx context.Context, groupID string, sender Address, message []byte) ([]byte, error) {
	what := fmt.Sprintf("group decrypt from %s", sender)
	if err := checkGroupID(groupID); err != nil {
		return nil, fmt.Errorf("%s: %w", what, err)
	}
	if err := sender.Validate(); err != nil {
		return nil, fmt.Errorf("%s: %w", what, err)
	}
	msg, err := parseSenderKeyMessage(message)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", what, err)
	}
	defer p.lockGroupSender(groupID, sender).Unlock()
	var pt []byte
	err = p.atomic(ctx, what, func(ctx context.Context) error {
		l := p.lib()
		name := senderKeyName(groupID, sender)
		c := groups.NewGroupCipher(groups.NewGroupSessionBuilder(l, serializer), name, l)
		var err error
		pt, err = c.Decrypt(ctx, msg)
		if err != nil {
			return p.mapErr(what, err, l)
		}
		return nil
	})
	return pt, err
}
