package client

import (
	"bytes"
	"context"
	"fmt"
	"strings"

	"github.com/hushchat/hush/client/store"
	"github.com/hushchat/hush/crypto"
	"github.com/hushchat/hush/protocol"
)

// Identity trust. Every device of an account has its own identity key
// (hush devices do not share one), recorded on first use per device. A
// different key for a device already recorded is a change: it is recorded
// as pending, IdentityChangedEvent is raised, and under Strict the
// contact's messages made with the new key are held and sends to the
// contact refused until Trust. A new device of a contact is trusted on its
// first use like the first one; compare its safety number to be sure.

// identityChanged applies the identity policy to a changed key. It reports
// whether the key was accepted (WarnOnly).
func (c *Client) identityChanged(ctx context.Context, t *txn, addr crypto.Address, known, key []byte) (bool, error) {
	now := c.clock.Now()
	if c.cfg.IdentityPolicy == WarnOnly {
		c.log.Warn("identity key changed; accepted (warn-only policy)", "peer", addr.String())
		if err := c.protocol().TrustIdentity(ctx, addr, key, false); err != nil {
			return false, err
		}
		return true, c.emitDurable(ctx, t, &IdentityChangedEvent{Account: addr.Name, Device: addr.DeviceID, Accepted: true, At: now})
	}
	prev, err := c.db.IdentityChanges(ctx, addr.Name)
	if err != nil {
		return false, err
	}
	for _, p := range prev {
		if p.Device == addr.DeviceID && bytes.Equal(p.NewKey, key) {
			return false, nil // already recorded and announced
		}
	}
	c.log.Warn("identity key changed; holding messages and sends until it is accepted", "peer", addr.String())
	err = c.db.RecordIdentityChange(ctx, store.IdentityChange{Name: addr.Name, Device: addr.DeviceID, OldKey: known, NewKey: key, Seen: now})
	if err != nil {
		return false, err
	}
	t.status = true
	return false, c.emitDurable(ctx, t, &IdentityChangedEvent{Account: addr.Name, Device: addr.DeviceID, At: now})
}

// Trust accepts name's changed identity keys: they replace the recorded
// ones (not verified), held messages from name are processed and blocked
// sends go out (a session still built on an old key is replaced by a new
// one from a fresh bundle on the next send). It is a no-op when nothing
// changed.
func (c *Client) Trust(ctx context.Context, name string) error {
	name, err := protocol.NormalizeAccountName(name)
	if err != nil {
		return fmt.Errorf("trust: %w", err)
	}
	if _, _, err := c.account(); err != nil {
		return err
	}
	if err := c.acceptChanges(ctx, name); err != nil {
		return fmt.Errorf("trust %s: %w", name, err)
	}
	return nil
}

func (c *Client) acceptChanges(ctx context.Context, name string) error {
	changes, err := c.db.IdentityChanges(ctx, name)
	if err != nil || len(changes) == 0 {
		return err
	}
	p := c.protocol()
	err = c.tx(ctx, func(ctx context.Context, t *txn) error {
		for _, ch := range changes {
			addr := crypto.Address{Name: ch.Name, DeviceID: ch.Device}
			if err := p.TrustIdentity(ctx, addr, ch.NewKey, false); err != nil {
				return err
			}
		}
		if err := c.db.ClearIdentityChanges(ctx, name); err != nil {
			return err
		}
		if _, err := c.db.UnblockOutbox(ctx, name); err != nil {
			return err
		}
		t.status = true
		return nil
	})
	if err != nil {
		return err
	}
	c.log.Info("identity change accepted", "peer", name)
	c.reprocessHeld(ctx, name, holdIdentity)
	wakeup(c.outboxWake)
	return nil
}

// Verify marks name's identity keys as verified: the user compared safety
// numbers (out of band, or by scanning). A pending change is accepted
// first, since the numbers compared were the new key's.
func (c *Client) Verify(ctx context.Context, name string) error {
	name, err := protocol.NormalizeAccountName(name)
	if err != nil {
		return fmt.Errorf("verify: %w", err)
	}
	if _, _, err := c.account(); err != nil {
		return err
	}
	ids, err := c.db.Identities(ctx, name)
	if err != nil {
		return err
	}
	changes, err := c.db.IdentityChanges(ctx, name)
	if err != nil {
		return err
	}
	if len(ids) == 0 && len(changes) == 0 {
		return fmt.Errorf("verify %s: %w (exchange a message first)", name, ErrNoContact)
	}
	if err := c.acceptChanges(ctx, name); err != nil {
		return fmt.Errorf("verify %s: %w", name, err)
	}
	return c.db.SetVerified(ctx, name, true)
}

// SafetyNumber is the safety number of this device with one device of a
// contact: 60 digits that both sides see alike, and a scannable form.
type SafetyNumber struct {
	Account string `json:"account"`
	Device  uint32 `json:"device"`
	// Digits is the 60-digit number.
	Digits string `json:"digits"`
	// Scannable is the bytes to put into a QR code.
	Scannable []byte `json:"scannable"`
	Verified  bool   `json:"verified"`
	// Changed: the key is a pending change (not accepted yet).
	Changed bool `json:"changed"`
}

// Grouped returns the digits in twelve groups of five.
func (s *SafetyNumber) Grouped() string {
	var b strings.Builder
	for i := 0; i < len(s.Digits); i += 5 {
		if i > 0 {
			b.WriteByte(' ')
		}
		b.WriteString(s.Digits[i:min(i+5, len(s.Digits))])
	}
	return b.String()
}

// SafetyNumbers returns the safety numbers of this device with each known
// device of name (for a pending change, with the new key).
func (c *Client) SafetyNumbers(ctx context.Context, name string) ([]SafetyNumber, error) {
	name, err := protocol.NormalizeAccountName(name)
	if err != nil {
		return nil, fmt.Errorf("safety number: %w", err)
	}
	a, _, err := c.account()
	if err != nil {
		return nil, err
	}
	c.mu.Lock()
	myKey := c.identity.PublicKey()
	c.mu.Unlock()
	ids, err := c.db.Identities(ctx, name)
	if err != nil {
		return nil, err
	}
	changes, err := c.db.IdentityChanges(ctx, name)
	if err != nil {
		return nil, err
	}
	pending := map[uint32][]byte{}
	for _, ch := range changes {
		pending[ch.Device] = ch.NewKey
	}
	if len(ids) == 0 {
		return nil, fmt.Errorf("safety number with %s: %w (exchange a message first)", name, ErrNoContact)
	}
	var out []SafetyNumber
	for _, id := range ids {
		key, changed := id.Key, false
		if k, ok := pending[id.Device]; ok {
			key, changed = k, true
		}
		sn, err := crypto.NewSafetyNumber(a.Name, myKey, name, key)
		if err != nil {
			return nil, fmt.Errorf("safety number with %s.%d: %w", name, id.Device, err)
		}
		out = append(out, SafetyNumber{Account: name, Device: id.Device, Digits: sn.Digits, Scannable: sn.Scannable(),
			Verified: id.Verified && !changed, Changed: changed})
	}
	return out, nil
}

// SafetyNumber returns the safety number with name's first device (see
// SafetyNumbers for all of them).
func (c *Client) SafetyNumber(ctx context.Context, name string) (*SafetyNumber, error) {
	all, err := c.SafetyNumbers(ctx, name)
	if err != nil {
		return nil, err
	}
	return &all[0], nil
}

// Contacts lists the accounts this device talks to, with their trust
// state.
func (c *Client) Contacts(ctx context.Context) ([]Contact, error) {
	cs, err := c.db.Contacts(ctx)
	if err != nil {
		return nil, err
	}
	changes, err := c.db.IdentityChanges(ctx, "")
	if err != nil {
		return nil, err
	}
	changed := map[string]bool{}
	for _, ch := range changes {
		changed[ch.Name] = true
	}
	out := make([]Contact, 0, len(cs))
	for _, sc := range cs {
		ids, err := c.db.Identities(ctx, sc.Name)
		if err != nil {
			return nil, err
		}
		ct := Contact{Name: sc.Name, Since: sc.Created, IdentityChanged: changed[sc.Name], Verified: len(ids) > 0, Devices: []uint32{}}
		for _, id := range ids {
			ct.Devices = append(ct.Devices, id.Device)
			ct.Verified = ct.Verified && id.Verified
		}
		ct.Verified = ct.Verified && !ct.IdentityChanged
		out = append(out, ct)
	}
	return out, nil
}
