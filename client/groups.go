package client

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/hushchat/hush/client/store"
	"github.com/hushchat/hush/crypto"
	"github.com/hushchat/hush/keyserver/ksclient"
	"github.com/hushchat/hush/protocol"
)

// Groups. A group's state (name, members, admins, revision) lives only
// with its members. Every change is a GroupUpdate carrying the whole new
// state with the next revision, sent pairwise to every member device (the
// members before and after the change, and this account's other devices);
// a device applies an update whose revision is higher than its own, from
// a current member, and refuses a removal of others by a non-admin.
//
// Messages use sender keys: each member device hands its key to the other
// member devices pairwise before its first message to them (the outbox
// tracks who holds it). When a member leaves or is removed, every
// remaining device rotates its own sender key and forgets the departed
// member's, so nothing sent afterwards can be read with keys the departed
// member has.

// CreateGroup creates a group with this account (as admin) and members,
// tells every member, and returns its id.
func (c *Client) CreateGroup(ctx context.Context, name string, members []string) (GroupID, error) {
	a, _, err := c.account()
	if err != nil {
		return GroupID{}, err
	}
	if len(name) > protocol.MaxGroupNameLen {
		return GroupID{}, &protocol.LimitError{What: "group name length", Limit: protocol.MaxGroupNameLen, Got: len(name)}
	}
	names, err := c.checkAccounts(ctx, members)
	if err != nil {
		return GroupID{}, fmt.Errorf("create group: %w", err)
	}
	if len(names)+1 > protocol.MaxGroupMembers {
		return GroupID{}, &protocol.LimitError{What: "group members", Limit: protocol.MaxGroupMembers, Got: len(names) + 1}
	}
	gid := newGroupID()
	now := c.clock.Now()
	g := &store.Group{ID: gid[:], Name: name, Revision: 1, Member: true, Actor: a.Name, Created: now, Updated: now,
		Members: []store.Member{{Account: a.Name, Admin: true}}}
	for _, n := range names {
		g.Members = append(g.Members, store.Member{Account: n})
	}
	err = c.tx(ctx, func(ctx context.Context, t *txn) error {
		if err := c.db.SaveGroup(ctx, g); err != nil {
			return err
		}
		return c.announceGroup(ctx, t, g, protocol.GroupUpdate_ACTION_CREATE, nil, names)
	})
	if err != nil {
		return GroupID{}, fmt.Errorf("create group: %w", err)
	}
	return gid, nil
}

// checkAccounts normalizes names, drops duplicates and this account, and
// checks with the key server that each exists (without using up any of
// their prekeys).
func (c *Client) checkAccounts(ctx context.Context, names []string) ([]string, error) {
	me := c.me()
	var out []string
	for _, n := range names {
		n, err := protocol.NormalizeAccountName(strings.TrimSpace(n))
		if err != nil {
			return nil, err
		}
		if n != me && !slices.Contains(out, n) {
			out = append(out, n)
		}
	}
	for _, n := range out {
		if ids, err := c.protocol().SessionDevices(ctx, n); err == nil && len(ids) > 0 {
			continue
		}
		err := c.withToken(ctx, func(ks *ksclient.Client, tok string) error {
			_, err := ks.Identity(ctx, tok, n)
			return err
		})
		var kerr *ksclient.Error
		if errors.As(err, &kerr) && kerr.Status == 404 {
			return nil, fmt.Errorf("%w: %s", ErrUnknownAccount, n)
		}
		if err != nil {
			return nil, fmt.Errorf("look up %s: %w", n, err)
		}
	}
	return out, nil
}

// AddMembers adds accounts to a group.
func (c *Client) AddMembers(ctx context.Context, id GroupID, names ...string) error {
	add, err := c.checkAccounts(ctx, names)
	if err != nil {
		return fmt.Errorf("add to group: %w", err)
	}
	return c.changeGroup(ctx, id, protocol.GroupUpdate_ACTION_ADD, add, func(g *store.Group) error {
		for _, n := range add {
			if !memberOf(g, n) {
				g.Members = append(g.Members, store.Member{Account: n})
			}
		}
		if len(g.Members) > protocol.MaxGroupMembers {
			return &protocol.LimitError{What: "group members", Limit: protocol.MaxGroupMembers, Got: len(g.Members)}
		}
		return nil
	})
}

// RemoveMembers removes accounts from a group (admins only). Every
// remaining member rotates its sender key.
func (c *Client) RemoveMembers(ctx context.Context, id GroupID, names ...string) error {
	var rm []string
	for _, n := range names {
		n, err := protocol.NormalizeAccountName(strings.TrimSpace(n))
		if err != nil {
			return fmt.Errorf("remove from group: %w", err)
		}
		rm = append(rm, n)
	}
	me := c.me()
	return c.changeGroup(ctx, id, protocol.GroupUpdate_ACTION_REMOVE, rm, func(g *store.Group) error {
		if !isAdmin(g, me) {
			return errors.New("only an admin can remove members")
		}
		for _, n := range rm {
			if n == me {
				return errors.New("use LeaveGroup to leave")
			}
			if !memberOf(g, n) {
				return fmt.Errorf("%s is not a member", n)
			}
		}
		g.Members = slices.DeleteFunc(g.Members, func(m store.Member) bool { return slices.Contains(rm, m.Account) })
		return nil
	})
}

// LeaveGroup leaves a group; the other members rotate their sender keys.
func (c *Client) LeaveGroup(ctx context.Context, id GroupID) error {
	me := c.me()
	return c.changeGroup(ctx, id, protocol.GroupUpdate_ACTION_LEAVE, []string{me}, func(g *store.Group) error {
		wasAdmin := isAdmin(g, me)
		g.Members = slices.DeleteFunc(g.Members, func(m store.Member) bool { return m.Account == me })
		// A group keeps an admin: the longest-standing member takes over.
		if wasAdmin && len(g.Members) > 0 && !slices.ContainsFunc(g.Members, func(m store.Member) bool { return m.Admin }) {
			g.Members[0].Admin = true
		}
		return nil
	})
}

// RenameGroup renames a group.
func (c *Client) RenameGroup(ctx context.Context, id GroupID, name string) error {
	if len(name) > protocol.MaxGroupNameLen {
		return &protocol.LimitError{What: "group name length", Limit: protocol.MaxGroupNameLen, Got: len(name)}
	}
	return c.changeGroup(ctx, id, protocol.GroupUpdate_ACTION_RENAME, nil, func(g *store.Group) error {
		g.Name = name
		return nil
	})
}

func isAdmin(g *store.Group, account string) bool {
	for _, m := range g.Members {
		if m.Account == account {
			return m.Admin
		}
	}
	return false
}

// changeGroup applies a local change and announces it to the members
// before and after the change.
func (c *Client) changeGroup(ctx context.Context, id GroupID, action protocol.GroupUpdate_Action, targets []string, change func(g *store.Group) error) error {
	a, _, err := c.account()
	if err != nil {
		return err
	}
	err = c.tx(ctx, func(ctx context.Context, t *txn) error {
		g, err := c.db.Group(ctx, id[:])
		if errors.Is(err, store.ErrNotFound) {
			return ErrNoGroup
		}
		if err != nil {
			return err
		}
		if !g.Member {
			return ErrNotMember
		}
		before := otherMembers(g, a.Name)
		old := slices.Clone(g.Members)
		if err := change(g); err != nil {
			return err
		}
		g.Revision++
		g.Actor, g.Updated = a.Name, c.clock.Now()
		g.Member = memberOf(g, a.Name)
		if err := c.db.SaveGroup(ctx, g); err != nil {
			return err
		}
		recipients := before
		for _, m := range otherMembers(g, a.Name) {
			if !slices.Contains(recipients, m) {
				recipients = append(recipients, m)
			}
		}
		if err := c.announceGroup(ctx, t, g, action, targets, recipients); err != nil {
			return err
		}
		return c.afterMembershipChange(ctx, g, old)
	})
	if err != nil {
		return fmt.Errorf("%s group: %w", actionName(action), err)
	}
	return nil
}

// afterMembershipChange rotates and forgets sender keys after members
// left (or this account did).
func (c *Client) afterMembershipChange(ctx context.Context, g *store.Group, old []store.Member) error {
	var gone []string
	for _, m := range old {
		if !memberOf(g, m.Account) {
			gone = append(gone, m.Account)
		}
	}
	if len(gone) == 0 {
		return nil
	}
	p := c.protocol()
	if !g.Member {
		// This account is out: nothing to send, nothing more to read.
		for _, m := range old {
			if err := c.db.DeleteSenderKeysOf(ctx, g.ID, m.Account); err != nil {
				return err
			}
		}
		return c.db.ResetSenderKeyHolders(ctx, g.ID)
	}
	for _, name := range gone {
		if err := c.db.DeleteSenderKeysOf(ctx, g.ID, name); err != nil {
			return err
		}
	}
	// A new chain for this device; it is handed to the remaining members
	// before the next message (the holders are reset).
	if _, err := p.RotateSenderKey(ctx, string(g.ID)); err != nil {
		return err
	}
	return c.db.ResetSenderKeyHolders(ctx, g.ID)
}

func actionName(a protocol.GroupUpdate_Action) string {
	switch a {
	case protocol.GroupUpdate_ACTION_CREATE:
		return "create"
	case protocol.GroupUpdate_ACTION_ADD:
		return "add"
	case protocol.GroupUpdate_ACTION_REMOVE:
		return "remove"
	case protocol.GroupUpdate_ACTION_LEAVE:
		return "leave"
	case protocol.GroupUpdate_ACTION_RENAME:
		return "rename"
	}
	return "sync"
}

func updateOf(g *store.Group, actor string, action protocol.GroupUpdate_Action, targets []string) *protocol.GroupUpdate {
	gu := &protocol.GroupUpdate{GroupId: g.ID, Revision: g.Revision, Name: g.Name, Actor: actor, Action: action, Targets: targets}
	for _, m := range g.Members {
		gu.Members = append(gu.Members, &protocol.GroupMember{Account: m.Account, Admin: m.Admin})
	}
	return gu
}

// announceGroup stores the history line for a local change, raises the
// event and queues the update for recipients and this account's other
// devices.
func (c *Client) announceGroup(ctx context.Context, t *txn, g *store.Group, action protocol.GroupUpdate_Action, targets, recipients []string) error {
	a, _, _ := c.account()
	gid, _ := groupIDFrom(g.ID)
	conv := GroupConv(gid)
	now := c.clock.Now()
	if err := c.db.EnsureConversation(ctx, store.Conversation{ID: string(conv), GroupID: g.ID, Created: now}); err != nil {
		return err
	}
	for _, m := range g.Members {
		if m.Account != a.Name {
			if err := c.db.EnsureContact(ctx, m.Account, now); err != nil {
				return err
			}
		}
	}
	counter, err := c.db.NextCounter(ctx, string(conv))
	if err != nil {
		return err
	}
	content := &protocol.Content{MessageId: newMessageIDBytes(), Counter: counter, SentAtMs: now.UnixMilli(), GroupId: g.ID,
		Body: &protocol.Content_GroupUpdate{GroupUpdate: updateOf(g, a.Name, action, targets)}}
	m, err := c.storeGroupLine(ctx, content, conv, a.Name, a.DeviceID, true, now)
	if err != nil {
		return err
	}
	if err := c.enqueuePairwise(ctx, t, content, nil, recipients, true, 0, nil); err != nil {
		return err
	}
	t.after = append(t.after, func() { wakeup(c.subWake) })
	return c.emitDurable(ctx, t, &GroupUpdateEvent{Group: groupFromStore(g), Actor: a.Name, Action: actionName(action),
		Targets: targets, At: m.ReceivedAt})
}

// storeGroupLine records a group change as a line in the conversation.
func (c *Client) storeGroupLine(ctx context.Context, content *protocol.Content, conv ConvID, sender string, device uint32, outgoing bool, now time.Time) (*store.Message, error) {
	m := c.storedMessage(content, conv, sender, device, outgoing, now)
	m.Kind, m.Body, m.Read = store.KindGroupUpdate, describeUpdate(content.GetGroupUpdate(), sender, c.me()), true
	if outgoing {
		m.Status = store.StatusSent
	}
	if _, err := c.db.InsertMessage(ctx, m); err != nil {
		return nil, err
	}
	return m, nil
}

// describeUpdate is the history line of a group update.
func describeUpdate(gu *protocol.GroupUpdate, actor, me string) string {
	who := actor
	if actor == me {
		who = "you"
	}
	list := strings.Join(gu.Targets, ", ")
	switch gu.Action {
	case protocol.GroupUpdate_ACTION_CREATE:
		return fmt.Sprintf("%s created the group %q", who, gu.Name)
	case protocol.GroupUpdate_ACTION_ADD:
		return fmt.Sprintf("%s added %s", who, list)
	case protocol.GroupUpdate_ACTION_REMOVE:
		return fmt.Sprintf("%s removed %s", who, list)
	case protocol.GroupUpdate_ACTION_LEAVE:
		return fmt.Sprintf("%s left", who)
	case protocol.GroupUpdate_ACTION_RENAME:
		return fmt.Sprintf("%s renamed the group to %q", who, gu.Name)
	}
	return fmt.Sprintf("group %q (revision %d)", gu.Name, gu.Revision)
}

// applyGroupUpdate applies a received group update.
func (c *Client) applyGroupUpdate(ctx context.Context, t *txn, e *envelope, content *protocol.Content, gu *protocol.GroupUpdate) error {
	me := c.me()
	fromSelf := e.sender == me
	now := c.clock.Now()
	in := func(account string) bool {
		return slices.ContainsFunc(gu.Members, func(m *protocol.GroupMember) bool { return m.Account == account })
	}
	g, err := c.db.Group(ctx, gu.GroupId)
	known := err == nil
	if err != nil && !errors.Is(err, store.ErrNotFound) {
		return err
	}
	var old []store.Member
	switch {
	case !known:
		if !in(me) || (!fromSelf && !in(e.sender)) {
			return nil // not ours to know, or from an outsider
		}
		g = &store.Group{ID: gu.GroupId, Created: now}
	case gu.Revision <= g.Revision:
		return nil // stale, or already applied
	case !fromSelf && !memberOf(g, e.sender):
		c.log.Warn("ignoring a group update from a non-member", "sender", e.addr().String())
		return nil
	case !fromSelf && !isAdmin(g, e.sender) && removesOthers(g, gu, e.sender):
		c.log.Warn("ignoring a removal by a non-admin", "sender", e.addr().String())
		return nil
	default:
		old = g.Members
	}
	g.Name, g.Revision, g.Actor, g.Updated = gu.Name, gu.Revision, e.sender, now
	g.Members = nil
	for _, m := range gu.Members {
		g.Members = append(g.Members, store.Member{Account: m.Account, Admin: m.Admin})
	}
	g.Member = in(me)
	if err := c.db.SaveGroup(ctx, g); err != nil {
		return err
	}
	gid, _ := groupIDFrom(g.ID)
	conv := GroupConv(gid)
	if err := c.db.EnsureConversation(ctx, store.Conversation{ID: string(conv), GroupID: g.ID, Created: now}); err != nil {
		return err
	}
	for _, m := range g.Members {
		if m.Account != me {
			if err := c.db.EnsureContact(ctx, m.Account, now); err != nil {
				return err
			}
		}
	}
	if known {
		if err := c.afterMembershipChange(ctx, g, old); err != nil {
			return err
		}
	}
	if gu.Action != protocol.GroupUpdate_ACTION_UNSPECIFIED {
		if _, err := c.storeGroupLine(ctx, content, conv, e.sender, e.device, fromSelf, now); err != nil {
			return err
		}
	}
	t.after = append(t.after, func() {
		wakeup(c.subWake)
		c.reprocessHeld(c.ctx, "", holdNoSenderKey)
	})
	return c.emitDurable(ctx, t, &GroupUpdateEvent{Group: groupFromStore(g), Actor: e.sender, Action: actionName(gu.Action),
		Targets: gu.Targets, At: now})
}

// removesOthers reports whether an update drops members other than actor.
func removesOthers(g *store.Group, gu *protocol.GroupUpdate, actor string) bool {
	for _, m := range g.Members {
		if m.Account == actor {
			continue
		}
		if !slices.ContainsFunc(gu.Members, func(n *protocol.GroupMember) bool { return n.Account == m.Account }) {
			return true
		}
	}
	return false
}

// syncGroupsToOwnDevices sends the state of every group this account is
// in to its other devices (a new device learns its groups this way).
func (c *Client) syncGroupsToOwnDevices(ctx context.Context) {
	gs, err := c.db.Groups(ctx)
	if err != nil {
		c.log.Error("sync groups to own devices", "err", err)
		return
	}
	me := c.me()
	err = c.tx(ctx, func(ctx context.Context, t *txn) error {
		for i := range gs {
			g := &gs[i]
			if !g.Member {
				continue
			}
			content := &protocol.Content{MessageId: newMessageIDBytes(), SentAtMs: c.clock.Now().UnixMilli(), GroupId: g.ID,
				Body: &protocol.Content_GroupUpdate{GroupUpdate: updateOf(g, me, protocol.GroupUpdate_ACTION_UNSPECIFIED, nil)}}
			if err := c.enqueuePairwise(ctx, t, content, nil, nil, true, 0, nil); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		c.log.Error("sync groups to own devices", "err", err)
	}
}

// Group returns one group.
func (c *Client) Group(ctx context.Context, id GroupID) (*Group, error) {
	g, err := c.db.Group(ctx, id[:])
	if errors.Is(err, store.ErrNotFound) {
		return nil, fmt.Errorf("%w: %s", ErrNoGroup, id)
	}
	if err != nil {
		return nil, err
	}
	out := groupFromStore(g)
	return &out, nil
}

// Groups lists the groups this device knows, by name (including ones it
// is no longer active in).
func (c *Client) Groups(ctx context.Context) ([]Group, error) {
	gs, err := c.db.Groups(ctx)
	if err != nil {
		return nil, err
	}
	out := make([]Group, len(gs))
	for i := range gs {
		out[i] = groupFromStore(&gs[i])
	}
	return out, nil
}

// FindGroup resolves a group by its id (32 hex digits, or a unique prefix
// of at least 6) or by its exact name among active groups.
func (c *Client) FindGroup(ctx context.Context, ref string) (GroupID, error) {
	if id, err := ParseGroupID(ref); err == nil {
		if _, err := c.Group(ctx, id); err != nil {
			return GroupID{}, err
		}
		return id, nil
	}
	gs, err := c.Groups(ctx)
	if err != nil {
		return GroupID{}, err
	}
	var found []GroupID
	for _, g := range gs {
		if g.Active && g.Name == ref {
			found = append(found, g.ID)
		}
	}
	if len(found) == 0 && len(ref) >= 6 {
		for _, g := range gs {
			if strings.HasPrefix(g.ID.String(), strings.ToLower(ref)) {
				found = append(found, g.ID)
			}
		}
	}
	switch len(found) {
	case 0:
		return GroupID{}, fmt.Errorf("%w: %q", ErrNoGroup, truncate(ref, 40))
	case 1:
		return found[0], nil
	}
	return GroupID{}, fmt.Errorf("%q names %d groups; use the group id", truncate(ref, 40), len(found))
}

// groupDevicesHoldKey reports whether every target device holds this
// device's sender key (typing indicators go only then).
func holdsAll(holders []crypto.Address, targets []target) bool {
	for _, tg := range targets {
		for _, d := range tg.devices {
			if !slices.Contains(holders, crypto.Address{Name: tg.account, DeviceID: d}) {
				return false
			}
		}
	}
	return true
}
