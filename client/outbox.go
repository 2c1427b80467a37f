package client

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/hushchat/hush/client/store"
	"github.com/hushchat/hush/crypto"
	"github.com/hushchat/hush/keyserver/ksapi"
	"github.com/hushchat/hush/keyserver/ksclient"
	"github.com/hushchat/hush/protocol"
)

// Sending. Everything that goes to other devices — messages, receipts,
// group updates, sender keys, retry requests — is an outbox row first. A
// pairwise row queued while connected, to devices with sessions, is
// encrypted in the transaction that queues it (sealNow). The outbox
// worker takes due rows in order, encrypts each row not yet encrypted for
// the devices it addresses (fetching bundles and building sessions on
// demand) and stores the resulting Send frame in the row in the same
// transaction as the ratchet steps, then sends it. Up to SendWindow frames are in flight; a
// row is deleted when its SendAck arrives. After a reconnect or a restart
// an unacknowledged row is sent again byte for byte, with its client id,
// so the relay answers the original SendAck instead of storing a copy.

// maxAccountsPerSend splits pairwise fan-outs (a group update to 1,024
// members) into Sends that stay well under the frame size limit.
const maxAccountsPerSend = 100

// maxSendAttempts bounds re-encryptions of one row after refusals.
const maxSendAttempts = 6

// enqueuePairwise queues content for every device of accounts (and, with
// own, for this account's other devices, which get sync instead when it is
// set). msg links the row to a stored message; distGroup marks a sender-key
// distribution for that group.
func (c *Client) enqueuePairwise(ctx context.Context, t *txn, content, sync *protocol.Content, accounts []string, own bool, msg int64, distGroup []byte) error {
	_, err := c.enqueuePairwiseSeq(ctx, t, content, sync, accounts, own, msg, distGroup)
	return err
}

func (c *Client) enqueuePairwiseSeq(ctx context.Context, t *txn, content, sync *protocol.Content, accounts []string, own bool, msg int64, distGroup []byte) (int64, error) {
	return c.enqueuePairwiseRows(ctx, t, content, sync, accounts, own, msg, distGroup, false)
}

// enqueuePairwiseRows is enqueuePairwiseSeq; trusted says the caller has
// checked accounts against pending identity changes in this transaction.
func (c *Client) enqueuePairwiseRows(ctx context.Context, t *txn, content, sync *protocol.Content, accounts []string, own bool, msg int64, distGroup []byte, trusted bool) (int64, error) {
	me := c.me()
	accounts = slices.DeleteFunc(slices.Clone(accounts), func(a string) bool { return a == me })
	if len(accounts) == 0 && !own {
		return 0, nil
	}
	padded, err := protocol.EncodeContent(content)
	if err != nil {
		return 0, fmt.Errorf("encode %T: %w", content.Body, err)
	}
	var syncPadded []byte
	if sync != nil {
		if syncPadded, err = protocol.EncodeContent(sync); err != nil {
			return 0, fmt.Errorf("encode sync: %w", err)
		}
	}
	now := c.clock.Now()
	var last int64
	for first := true; first || len(accounts) > 0; first = false {
		n := min(len(accounts), maxAccountsPerSend)
		it := &store.OutboxItem{Kind: store.OutboxPairwise, Message: msg, GroupID: distGroup, Accounts: accounts[:n],
			OwnDevices: own && first, Content: padded, SyncContent: syncPadded, Created: now}
		if err := c.sealNow(ctx, it, trusted); err != nil {
			return 0, err
		}
		if err := c.db.Enqueue(ctx, it); err != nil {
			return 0, err
		}
		last = it.Seq
		accounts = accounts[n:]
	}
	t.after = append(t.after, func() { wakeup(c.outboxWake) })
	return last, nil
}

// sealNowMaxDevices bounds the devices a row may address to be encrypted
// by sealNow; a larger fan-out is left to the outbox worker, which splits
// a row whose frame grows too big.
const sealNowMaxDevices = 8

// sealNow encrypts a new pairwise row in the transaction that queues it,
// when that needs nothing from the network: the relay connection is up,
// every device the row addresses has a session already, and the list of
// this account's other devices is known. The ratchet steps and the Send
// frame then commit with the row (and with the message, for Send), and
// the outbox worker only sends the stored frame: one commit per row
// fewer. The worker would have addressed the same devices (devicesOf
// fetches bundles only for an account without sessions).
//
// Anything else leaves the row to the worker, which handles each case
// (fetching bundles, blocking on an identity change, deferring, failing):
// no connection (a row that waits may go to a changed device list), a
// device without a session, a pending identity change, more than
// sealNowMaxDevices devices, an encryption that fails. A failure after the
// encryption wrote ratchet state is undone by the enclosing Atomic (see
// store.DB.Atomic). Only a failure of the store is returned.
//
// trusted: the caller checked it.Accounts against pending identity
// changes in this transaction.
func (c *Client) sealNow(ctx context.Context, it *store.OutboxItem, trusted bool) error {
	if s, _ := c.currentSession(); s == nil {
		return nil
	}
	if !trusted {
		tc, err := c.newTrustCheck(ctx)
		if err != nil {
			return err
		}
		if tc.check(it.Accounts) != nil {
			return nil
		}
	}
	targets, ok, err := c.localTargets(ctx, it.Accounts, it.OwnDevices)
	if err != nil || !ok {
		return err
	}
	n := 0
	for _, tg := range targets {
		n += len(tg.devices)
	}
	if n == 0 || n > sealNowMaxDevices {
		return nil
	}
	sealed := *it
	err = c.db.Atomic(ctx, func(ctx context.Context) error {
		_, err := c.sealPairwise(ctx, &sealed, targets)
		return err
	})
	if err != nil {
		if ctx.Err() != nil {
			return ctx.Err()
		}
		c.log.Debug("outbox row left to the worker", "err", err)
		return nil
	}
	*it = sealed
	return nil
}

// localTargets is targets from the sessions this device holds, without
// asking the key server; false when that is not enough.
func (c *Client) localTargets(ctx context.Context, accounts []string, own bool) ([]target, bool, error) {
	me := c.me()
	p := c.protocol()
	var out []target
	for _, a := range accounts {
		if a == me {
			continue
		}
		devs, err := p.SessionDevices(ctx, a)
		if err != nil || len(devs) == 0 {
			return nil, false, err
		}
		out = append(out, target{account: a, devices: devs})
	}
	if own {
		c.mu.Lock()
		known := c.ownDevices
		c.mu.Unlock()
		if known == nil {
			return nil, false, nil
		}
		if len(known) > 0 {
			have, err := p.SessionDevices(ctx, me)
			if err != nil {
				return nil, false, err
			}
			for _, d := range known {
				if !slices.Contains(have, d) {
					return nil, false, nil
				}
			}
			out = append(out, target{account: me, devices: known, sync: true})
		}
	}
	return out, true, nil
}

// enqueueGroup queues content for every member device of a group, as one
// sender-key ciphertext.
func (c *Client) enqueueGroup(ctx context.Context, t *txn, gid GroupID, content *protocol.Content, msg int64) error {
	padded, err := protocol.EncodeContent(content)
	if err != nil {
		return fmt.Errorf("encode %T: %w", content.Body, err)
	}
	it := &store.OutboxItem{Kind: store.OutboxGroup, Message: msg, GroupID: gid[:], Content: padded, Created: c.clock.Now()}
	if err := c.db.Enqueue(ctx, it); err != nil {
		return err
	}
	t.after = append(t.after, func() { wakeup(c.outboxWake) })
	return nil
}

// flight is a Send in flight.
type flight struct {
	item  store.OutboxItem
	addrs []crypto.Address
	sent  time.Time
}

// Outcomes of prepare other than a frame to send.
var (
	errNotNow = errors.New("not sendable now") // deferred, blocked, waiting or finished; look again later
)

// transientError is a failure worth retrying later.
type transientError struct {
	err   error
	after time.Duration
}

func (e *transientError) Error() string { return e.err.Error() }
func (e *transientError) Unwrap() error { return e.err }

// outboxLoop runs the send pipeline on each connection in turn.
func (c *Client) outboxLoop() {
	for {
		s, changed := c.currentSession()
		if s == nil {
			select {
			case <-changed:
				continue
			case <-c.ctx.Done():
				return
			}
		}
		c.pump(c.ctx, s)
		if c.ctx.Err() != nil {
			return
		}
	}
}

// pump sends outbox rows on session s until it ends.
func (c *Client) pump(ctx context.Context, s *session) {
	inflight := map[string]*flight{} // by client id
	bySeq := map[int64]bool{}
	for {
		if len(inflight) < c.cfg.SendWindow {
			var items []*store.OutboxItem
			var trust *trustCheck
			err := c.db.Snapshot(ctx, func(ctx context.Context) error {
				seqs, err := c.db.PendingOutbox(ctx, c.clock.Now(), c.cfg.SendWindow+len(inflight))
				if err != nil {
					return err
				}
				for _, seq := range seqs {
					if bySeq[seq] || len(inflight)+len(items) >= c.cfg.SendWindow {
						continue
					}
					it, err := c.db.OutboxItem(ctx, seq)
					if err != nil {
						return err
					}
					items = append(items, it)
				}
				if len(items) > 0 {
					trust, err = c.newTrustCheck(ctx)
				}
				return err
			})
			if err != nil {
				if ctx.Err() == nil {
					c.log.Error("read outbox", "err", err)
				}
				s.fail(err)
				return
			}
			fls, err := c.prepareBatch(ctx, items, trust)
			if err != nil {
				if ctx.Err() != nil {
					return
				}
				c.log.Error("prepare send", "err", err)
				s.fail(err)
				return
			}
			if hook := c.cfg.testHookBeforeSend; hook != nil && len(fls) > 0 && hook(len(fls)) {
				s.fail(errCrashTest)
				return
			}
			for _, fl := range fls {
				if err := s.send(fl.item.Frame); err != nil {
					return
				}
				fl.sent = c.clock.Now()
				inflight[string(fl.item.ClientID)] = fl
				bySeq[fl.item.Seq] = true
			}
		}

		// Wake for: an ack, new rows, the next deferred row, a send that
		// waited too long for its ack.
		var due <-chan time.Time
		wait := time.Duration(-1)
		if next, ok, err := c.db.NextOutboxDue(ctx, c.clock.Now()); err == nil && ok {
			wait = next.Sub(c.clock.Now())
		}
		var oldest time.Time
		for _, fl := range inflight {
			if oldest.IsZero() || fl.sent.Before(oldest) {
				oldest = fl.sent
			}
		}
		if !oldest.IsZero() {
			if w := oldest.Add(c.cfg.SendTimeout).Sub(c.clock.Now()); wait < 0 || w < wait {
				wait = w
			}
		}
		var timer Timer
		if wait >= 0 {
			timer = c.clock.NewTimer(max(wait, time.Millisecond))
			due = timer.C()
		}
		select {
		case ack := <-s.acks:
			// Every ack already waiting is handled with this one: the
			// successful ones in one transaction.
			var done []*flight
			var doneAcks []*protocol.SendAck
			for ack != nil {
				if fl := inflight[string(ack.ClientId)]; fl != nil {
					delete(inflight, string(ack.ClientId))
					delete(bySeq, fl.item.Seq)
					if ack.Error == nil {
						done, doneAcks = append(done, fl), append(doneAcks, ack)
					} else if err := c.handleAck(ctx, fl, ack); err != nil {
						if ctx.Err() == nil {
							c.log.Error("handle send ack", "err", err)
						}
						s.fail(err)
					}
				}
				select {
				case ack = <-s.acks:
				default:
					ack = nil
				}
			}
			if len(done) > 0 {
				if err := c.handleAcks(ctx, done, doneAcks); err != nil {
					if ctx.Err() == nil {
						c.log.Error("handle send acks", "err", err)
					}
					s.fail(err)
				}
			}
		case <-c.outboxWake:
		case <-due:
			if !oldest.IsZero() && c.clock.Now().Sub(oldest) >= c.cfg.SendTimeout {
				s.fail(fmt.Errorf("no answer to a send within %v", c.cfg.SendTimeout))
			}
		case <-s.done:
		case <-ctx.Done():
		}
		if timer != nil {
			timer.Stop()
		}
		select {
		case <-s.done:
			return
		case <-ctx.Done():
			return
		default:
		}
	}
}

// prepareBatch returns the rows of items that are ready to send, in
// order. Pairwise rows without a stored frame are encrypted together: the
// devices they address are resolved first (which may fetch bundles from
// the key server, so outside any transaction), then every row's ratchet
// steps and Send frame commit in one transaction, instead of one commit
// per row. When that transaction fails, each of its rows goes through
// prepare on its own, which files each row's problem with that row
// (deferred, blocked, split, failed). Every other row goes through prepare
// too. An error is a failure of the store.
//
// trust, when not nil, holds the pending identity changes read with items.
func (c *Client) prepareBatch(ctx context.Context, items []*store.OutboxItem, trust *trustCheck) ([]*flight, error) {
	type job struct {
		i       int
		it      *store.OutboxItem
		targets []target
	}
	var jobs []job
	var single []int // rows for prepare, by index
	devices := map[string][]uint32{}
	for i, it := range items {
		if it.Frame != nil || it.Kind != store.OutboxPairwise {
			single = append(single, i)
			continue
		}
		if trust == nil {
			var err error
			if trust, err = c.newTrustCheck(ctx); err != nil {
				return nil, err
			}
		}
		if trust.check(it.Accounts) != nil {
			single = append(single, i)
			continue
		}
		tg, err := c.targetsCached(ctx, it.Accounts, it.OwnDevices, devices)
		if err != nil || len(tg) == 0 {
			single = append(single, i)
			continue
		}
		jobs = append(jobs, job{i: i, it: it, targets: tg})
	}
	out := make([]*flight, len(items))
	if len(jobs) > 0 {
		fls := make([]*flight, len(jobs))
		err := c.db.Atomic(ctx, func(ctx context.Context) error {
			for k, j := range jobs {
				it := *j.it // a copy: a failed batch leaves the row as it was
				fl, err := c.encryptPairwise(ctx, &it, j.targets)
				if err != nil {
					return fmt.Errorf("outbox row %d: %w", it.Seq, err)
				}
				fls[k] = fl
				if hook := c.cfg.testHookInSendBatch; hook != nil && hook(k, len(jobs)) {
					return errCrashTest
				}
			}
			return nil
		})
		switch {
		case err == nil:
			for k, j := range jobs {
				out[j.i] = fls[k]
			}
		case ctx.Err() != nil:
			return nil, err
		default:
			if len(jobs) > 1 {
				c.log.Info("a batch of sends failed; preparing them one by one", "rows", len(jobs), "err", err)
			}
			for _, j := range jobs {
				single = append(single, j.i)
			}
			slices.Sort(single)
		}
	}
	for _, i := range single {
		fl, err := c.prepare(ctx, items[i])
		if errors.Is(err, errNotNow) {
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("outbox row %d: %w", items[i].Seq, err)
		}
		out[i] = fl
	}
	return slices.DeleteFunc(out, func(fl *flight) bool { return fl == nil }), nil
}

// prepare returns row it ready to send: its stored frame, or a new one.
// errNotNow means the row was deferred, blocked, finished or is waiting.
func (c *Client) prepare(ctx context.Context, it *store.OutboxItem) (*flight, error) {
	if it.Frame != nil {
		if f, err := protocol.DecodeFrame(it.Frame); err == nil {
			if s, ok := f.Body.(*protocol.Frame_Send); ok {
				return &flight{item: *it, addrs: recipientsOf(s.Send)}, nil
			}
		}
		c.log.Warn("re-encrypting an outbox row whose stored frame is unreadable", "outbox", it.Seq)
	}
	var fl *flight
	var err error
	switch it.Kind {
	case store.OutboxPairwise:
		fl, err = c.preparePairwise(ctx, it)
	case store.OutboxGroup:
		fl, err = c.prepareGroup(ctx, it)
	default:
		err = fmt.Errorf("outbox row of unknown kind %d", it.Kind)
	}
	if err == nil || errors.Is(err, errNotNow) || ctx.Err() != nil {
		return fl, err
	}
	return nil, c.sendProblem(ctx, it, err)
}

// sendProblem files a failure to prepare a row: transient ones defer it,
// a changed identity blocks it, anything else fails it for good. It
// returns errNotNow, or an error of the store.
func (c *Client) sendProblem(ctx context.Context, it *store.OutboxItem, err error) error {
	var te *transientError
	var ice *IdentityChangedError
	switch {
	case errors.As(err, &ice):
		c.log.Info("send blocked until the identity change is accepted", "outbox", it.Seq, "accounts", ice.Accounts)
		it.State, it.Error, it.Frame, it.ClientID = store.OutboxBlocked, err.Error(), nil, nil
		if err := c.db.UpdateOutbox(ctx, it); err != nil {
			return err
		}
		c.statusChanged()
		return errNotNow
	case errors.As(err, &te):
		it.Attempts++
		d := te.after
		if d <= 0 {
			d = backoff(it.Attempts, c.cfg.BackoffMin, c.cfg.BackoffMax, c.rand())
		}
		c.log.Info("send deferred", "outbox", it.Seq, "retry_in", d, "err", err)
		it.NotBefore, it.Error, it.Frame, it.ClientID = c.clock.Now().Add(d), err.Error(), nil, nil
		if err := c.db.UpdateOutbox(ctx, it); err != nil {
			return err
		}
		return errNotNow
	}
	if ferr := c.failItem(ctx, it, err); ferr != nil {
		return ferr
	}
	return errNotNow
}

// failItem gives up on a row: it is deleted and its message marked failed.
func (c *Client) failItem(ctx context.Context, it *store.OutboxItem, cause error) error {
	c.log.Warn("send failed", "outbox", it.Seq, "err", cause)
	return c.tx(ctx, func(ctx context.Context, t *txn) error {
		if err := c.db.DeleteOutbox(ctx, it.Seq); err != nil {
			return err
		}
		if it.Message == 0 {
			return nil
		}
		m, err := c.db.MessageBySeq(ctx, it.Message)
		if err != nil {
			return err
		}
		if m.Status >= store.StatusSent {
			return nil // a re-send failed; the message itself went out
		}
		msg := cause.Error()
		if err := c.db.SetStatus(ctx, m.Seq, store.StatusFailed, 0, msg); err != nil {
			return err
		}
		t.status = true
		t.ephemeral = append(t.ephemeral, &SentEvent{ID: messageIDFrom(m.ID), Conv: ConvID(m.Conv), Status: StatusFailed, Error: msg})
		return nil
	})
}

func recipientsOf(s *protocol.Send) []crypto.Address {
	out := make([]crypto.Address, len(s.Recipients))
	for i, r := range s.Recipients {
		out[i] = crypto.Address{Name: r.Account, DeviceID: r.Device}
	}
	return out
}

func newClientID() []byte {
	b := make([]byte, protocol.ClientIDSize)
	rand.Read(b)
	return b
}

// checkTrust refuses (under Strict) accounts with an unaccepted identity
// change.
func (c *Client) checkTrust(ctx context.Context, accounts []string) error {
	tc, err := c.newTrustCheck(ctx)
	if err != nil {
		return err
	}
	return tc.check(accounts)
}

// trustCheck is checkTrust for several rows, reading the pending identity
// changes once.
type trustCheck struct {
	changes []store.IdentityChange
}

func (c *Client) newTrustCheck(ctx context.Context) (*trustCheck, error) {
	if c.cfg.IdentityPolicy != Strict {
		return &trustCheck{}, nil
	}
	changes, err := c.db.IdentityChanges(ctx, "")
	if err != nil {
		return nil, err
	}
	return &trustCheck{changes: changes}, nil
}

func (tc *trustCheck) check(accounts []string) error {
	var bad []string
	for _, ch := range tc.changes {
		if slices.Contains(accounts, ch.Name) && !slices.Contains(bad, ch.Name) {
			bad = append(bad, ch.Name)
		}
	}
	if len(bad) > 0 {
		return &IdentityChangedError{Accounts: bad}
	}
	return nil
}

// ownDevices returns this account's other devices, asking the key server
// the first time.
func (c *Client) otherOwnDevices(ctx context.Context) ([]uint32, error) {
	c.mu.Lock()
	own := c.ownDevices
	c.mu.Unlock()
	if own != nil {
		return own, nil
	}
	if _, err := c.Devices(ctx); err != nil {
		return nil, &transientError{err: err}
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.ownDevices, nil
}

// devicesOf returns the devices of account to address, with a session
// for each: the ones this device has sessions with, fetching bundles when
// there are none (the relay reports devices added or removed since, and
// handleAck fixes the list).
func (c *Client) devicesOf(ctx context.Context, account string) ([]uint32, error) {
	self := c.self()
	if account == self.Name {
		own, err := c.otherOwnDevices(ctx)
		if err != nil {
			return nil, err
		}
		have, err := c.protocol().SessionDevices(ctx, account)
		if err != nil {
			return nil, err
		}
		var missing []uint32
		for _, d := range own {
			if !slices.Contains(have, d) {
				missing = append(missing, d)
			}
		}
		if len(missing) > 0 {
			if err := c.fetchSessions(ctx, account, missing); err != nil {
				return nil, err
			}
		}
		return own, nil
	}
	ids, err := c.protocol().SessionDevices(ctx, account)
	if err != nil {
		return nil, err
	}
	if len(ids) > 0 {
		return ids, nil
	}
	if err := c.fetchSessions(ctx, account, nil); err != nil {
		return nil, err
	}
	return c.protocol().SessionDevices(ctx, account)
}

// fetchSessions fetches bundles for devices of account (all when nil) and
// starts sessions with them.
func (c *Client) fetchSessions(ctx context.Context, account string, devices []uint32) error {
	self := c.self()
	var bundles []ksclient.Bundle
	fetch := func(dev uint32) error {
		return c.withToken(ctx, func(ks *ksclient.Client, tok string) error {
			bs, err := ks.Bundles(ctx, tok, account, dev)
			bundles = append(bundles, bs...)
			return err
		})
	}
	var err error
	if len(devices) == 0 || len(devices) > 2 {
		// One request for all devices costs one unit of the key server's
		// per-target rate limit.
		err = fetch(0)
	} else {
		for _, d := range devices {
			if err = fetch(d); err != nil {
				break
			}
		}
	}
	if err != nil {
		var kerr *ksclient.Error
		if errors.As(err, &kerr) {
			switch {
			case kerr.Code == ksapi.CodeAccountNotFound:
				return fmt.Errorf("%w: %s", ErrUnknownAccount, account)
			case kerr.Code == ksapi.CodeDeviceNotFound:
				return nil // removed meanwhile; the relay will say so
			case kerr.Status == 429 || kerr.Status >= 500:
				return &transientError{err: fmt.Errorf("fetch keys of %s: %w", account, err), after: kerr.RetryAfter}
			}
		}
		if errors.Is(err, ErrDeviceRevoked) {
			return err
		}
		return &transientError{err: fmt.Errorf("fetch keys of %s: %w", account, err)}
	}
	newOwn := false
	for _, b := range bundles {
		if account == self.Name && b.DeviceID == self.DeviceID {
			continue
		}
		if len(devices) > 0 && !slices.Contains(devices, b.DeviceID) {
			continue
		}
		addr := crypto.Address{Name: account, DeviceID: b.DeviceID}
		bundle := crypto.Bundle{IdentityKey: b.IdentityKey, RegistrationID: b.RegistrationID, DeviceID: b.DeviceID,
			SignedPreKeyID: b.SignedPreKey.ID, SignedPreKey: b.SignedPreKey.PublicKey, SignedPreKeySignature: b.SignedPreKey.Signature,
			PreKeyID: b.PreKey.ID, PreKey: b.PreKey.PublicKey}
		if err := c.processBundle(ctx, addr, bundle); err != nil {
			return err
		}
		if account == self.Name {
			newOwn = true
		}
	}
	if newOwn {
		c.syncGroupsToOwnDevices(ctx)
	}
	return nil
}

// processBundle starts a session from a bundle, applying the identity
// policy to a changed key.
func (c *Client) processBundle(ctx context.Context, addr crypto.Address, b crypto.Bundle) error {
	for range 2 {
		var uie *crypto.UntrustedIdentityError
		var accepted bool
		err := c.tx(ctx, func(ctx context.Context, t *txn) error {
			err := c.protocol().ProcessBundle(ctx, addr, b)
			if errors.As(err, &uie) {
				var terr error
				accepted, terr = c.identityChanged(ctx, t, addr, uie.Known, uie.Key)
				return terr
			}
			return err
		})
		switch {
		case err != nil:
			if errors.Is(err, crypto.ErrBadSignedPreKeySignature) || errors.Is(err, crypto.ErrInvalidBundle) {
				return fmt.Errorf("the key server's bundle for %s is invalid: %w", addr, err)
			}
			return err
		case uie == nil:
			return nil
		case !accepted:
			return &IdentityChangedError{Accounts: []string{addr.Name}}
		}
	}
	return fmt.Errorf("process bundle of %s: identity keeps changing", addr)
}

// target is one account's devices in a Send.
type target struct {
	account string
	devices []uint32
	sync    bool // this account's own devices: they get the sync content
}

// targets resolves the devices of accounts (and own devices).
func (c *Client) targets(ctx context.Context, accounts []string, own bool) ([]target, error) {
	return c.targetsCached(ctx, accounts, own, nil)
}

// targetsCached is targets with the devices of each account looked up
// once per cache (nil: no cache).
func (c *Client) targetsCached(ctx context.Context, accounts []string, own bool, cache map[string][]uint32) ([]target, error) {
	me := c.me()
	devicesOf := func(a string) ([]uint32, error) {
		if devs, ok := cache[a]; ok {
			return devs, nil
		}
		devs, err := c.devicesOf(ctx, a)
		if err == nil && cache != nil {
			cache[a] = devs
		}
		return devs, err
	}
	var out []target
	for _, a := range accounts {
		if a == me {
			continue
		}
		devs, err := devicesOf(a)
		if err != nil {
			return nil, err
		}
		if len(devs) > 0 {
			out = append(out, target{account: a, devices: devs})
		}
	}
	if own {
		devs, err := devicesOf(me)
		if err != nil {
			return nil, err
		}
		if len(devs) > 0 {
			out = append(out, target{account: me, devices: devs, sync: true})
		}
	}
	return out, nil
}

func (c *Client) preparePairwise(ctx context.Context, it *store.OutboxItem) (*flight, error) {
	if err := c.checkTrust(ctx, it.Accounts); err != nil {
		return nil, err
	}
	targets, err := c.targets(ctx, it.Accounts, it.OwnDevices)
	if err != nil {
		return nil, err
	}
	if len(targets) == 0 {
		// Nobody to send to (only own devices were addressed and there
		// are none): done.
		return nil, c.finish(ctx, it, 0)
	}
	var fl *flight
	err = c.db.Atomic(ctx, func(ctx context.Context) error {
		var err error
		fl, err = c.encryptPairwise(ctx, it, targets)
		return err
	})
	var le *protocol.LimitError
	switch {
	case err == nil:
		*it = fl.item
		return fl, nil
	case errors.As(err, &le) && len(it.Accounts) > 1:
		// Too big for one frame: split the row in two (nothing was
		// stored; the ratchet steps rolled back).
		half := len(it.Accounts) / 2
		rest := &store.OutboxItem{Kind: it.Kind, Message: it.Message, GroupID: it.GroupID, Accounts: it.Accounts[half:],
			Content: it.Content, SyncContent: it.SyncContent, Created: it.Created}
		it.Accounts = it.Accounts[:half]
		err := c.db.Atomic(ctx, func(ctx context.Context) error {
			if err := c.db.UpdateOutbox(ctx, it); err != nil {
				return err
			}
			return c.db.Enqueue(ctx, rest)
		})
		if err != nil {
			return nil, err
		}
		wakeup(c.outboxWake)
		return nil, errNotNow
	case errors.Is(err, crypto.ErrNoSession):
		// A session vanished meanwhile (a retry request): try again.
		return nil, &transientError{err: err, after: time.Millisecond}
	case errors.Is(err, crypto.ErrUntrustedIdentity):
		// checkTrust passed, so the recorded key is accepted: the session
		// was built on a key that has since been replaced (Trust). Drop it;
		// the next attempt starts a new one from a fresh bundle.
		var uie *crypto.UntrustedIdentityError
		if !errors.As(err, &uie) {
			return nil, err
		}
		err := c.db.Atomic(ctx, func(ctx context.Context) error {
			if err := c.protocol().DeleteSession(ctx, uie.Address); err != nil {
				return err
			}
			return c.db.RemoveSenderKeyHolder(ctx, uie.Address)
		})
		if err != nil {
			return nil, err
		}
		return nil, &transientError{err: fmt.Errorf("session with %s is stale: %w", uie.Address, crypto.ErrUntrustedIdentity), after: time.Millisecond}
	}
	return nil, err
}

// encryptPairwise encrypts row it for the devices of targets and stores
// the Send frame in the row, inside the caller's transaction. it is
// updated; the flight holds a copy.
func (c *Client) encryptPairwise(ctx context.Context, it *store.OutboxItem, targets []target) (*flight, error) {
	send, err := c.sealPairwise(ctx, it, targets)
	if err != nil {
		return nil, err
	}
	if err := c.db.UpdateOutbox(ctx, it); err != nil {
		return nil, err
	}
	return &flight{item: *it, addrs: recipientsOf(send)}, nil
}

// sealPairwise encrypts row it for the devices of targets, inside the
// caller's transaction, and sets its client id and frame (it does not
// store them).
func (c *Client) sealPairwise(ctx context.Context, it *store.OutboxItem, targets []target) (*protocol.Send, error) {
	p := c.protocol()
	send := &protocol.Send{ClientId: newClientID()}
	for _, tg := range targets {
		payload := it.Content
		if tg.sync && it.SyncContent != nil {
			payload = it.SyncContent
		}
		for _, d := range tg.devices {
			addr := crypto.Address{Name: tg.account, DeviceID: d}
			ct, err := p.Encrypt(ctx, addr, payload)
			if err != nil {
				return nil, fmt.Errorf("encrypt for %s: %w", addr, err)
			}
			send.Recipients = append(send.Recipients, &protocol.Recipient{Account: tg.account, Device: d,
				Payload: ct.Body, Type: protocol.EnvelopeType(ct.Type)})
		}
	}
	frame, err := protocol.EncodeFrame(&protocol.Frame{Body: &protocol.Frame_Send{Send: send}})
	if err != nil {
		return nil, err
	}
	it.ClientID, it.Frame, it.Error = send.ClientId, frame, ""
	return send, nil
}

func (c *Client) prepareGroup(ctx context.Context, it *store.OutboxItem) (*flight, error) {
	g, err := c.db.Group(ctx, it.GroupID)
	if errors.Is(err, store.ErrNotFound) {
		return nil, ErrNoGroup
	}
	if err != nil {
		return nil, err
	}
	if !g.Member {
		return nil, ErrNotMember
	}
	members := otherMembers(g, c.me())
	if err := c.checkTrust(ctx, members); err != nil {
		return nil, err
	}
	var targets []target
	for _, m := range members {
		tg, err := c.targets(ctx, []string{m}, false)
		if errors.Is(err, ErrUnknownAccount) {
			c.log.Warn("group member has no account; leaving it out", "member", m)
			continue
		}
		if err != nil {
			return nil, err
		}
		targets = append(targets, tg...)
	}
	own, err := c.targets(ctx, nil, true)
	if err != nil {
		return nil, err
	}
	targets = append(targets, own...)
	if len(targets) == 0 {
		return nil, c.finish(ctx, it, 0)
	}
	if waiting, err := c.db.PendingDistribution(ctx, it.GroupID); err != nil || waiting {
		if err == nil {
			err = errNotNow
		}
		return nil, err
	}
	holders, err := c.db.SenderKeyHolders(ctx, it.GroupID)
	if err != nil {
		return nil, err
	}
	var lacking []string
	ownLacking := false
	for _, tg := range targets {
		for _, d := range tg.devices {
			if !slices.Contains(holders, crypto.Address{Name: tg.account, DeviceID: d}) {
				if tg.sync {
					ownLacking = true
				} else {
					lacking = append(lacking, tg.account)
				}
				break
			}
		}
	}
	p := c.protocol()
	if len(lacking) > 0 || ownLacking {
		// Hand out this device's sender key first; the message waits
		// until the relay has stored the distribution.
		if it.Attempts >= maxSendAttempts {
			return nil, errors.New("could not hand the group key to every member")
		}
		err := c.tx(ctx, func(ctx context.Context, t *txn) error {
			dist, err := p.GroupDistribution(ctx, string(it.GroupID))
			if err != nil {
				return err
			}
			content := &protocol.Content{MessageId: newMessageIDBytes(), SentAtMs: c.clock.Now().UnixMilli(), GroupId: it.GroupID,
				Body: &protocol.Content_SenderKeyDistribution{SenderKeyDistribution: &protocol.SenderKeyDistribution{
					GroupId: it.GroupID, Distribution: dist}}}
			seq, err := c.enqueuePairwiseSeq(ctx, t, content, nil, lacking, ownLacking, 0, it.GroupID)
			if err != nil {
				return err
			}
			it.Attempts++
			it.DependsOn, it.Frame, it.ClientID = seq, nil, nil
			return c.db.UpdateOutbox(ctx, it)
		})
		if err != nil {
			return nil, err
		}
		return nil, errNotNow
	}
	fl := &flight{}
	err = c.db.Atomic(ctx, func(ctx context.Context) error {
		ct, err := p.GroupEncrypt(ctx, string(it.GroupID), it.Content)
		if err != nil {
			return err
		}
		send := &protocol.Send{ClientId: newClientID(), Payload: ct, Type: protocol.EnvelopeType_ENVELOPE_TYPE_SENDER_KEY}
		for _, tg := range targets {
			for _, d := range tg.devices {
				send.Recipients = append(send.Recipients, &protocol.Recipient{Account: tg.account, Device: d})
			}
		}
		frame, err := protocol.EncodeFrame(&protocol.Frame{Body: &protocol.Frame_Send{Send: send}})
		if err != nil {
			return err
		}
		it.ClientID, it.Frame, it.Error = send.ClientId, frame, ""
		fl.addrs = recipientsOf(send)
		return c.db.UpdateOutbox(ctx, it)
	})
	if err != nil {
		if errors.Is(err, crypto.ErrNoSenderKey) {
			// Rotated meanwhile: the holders were reset; try again.
			return nil, &transientError{err: err, after: time.Millisecond}
		}
		return nil, err
	}
	fl.item = *it
	return fl, nil
}

// finish completes a row: deleted, and its message marked sent.
func (c *Client) finish(ctx context.Context, it *store.OutboxItem, serverID uint64) error {
	err := c.tx(ctx, func(ctx context.Context, t *txn) error {
		if err := c.db.DeleteOutbox(ctx, it.Seq); err != nil {
			return err
		}
		if it.Message == 0 {
			return nil
		}
		m, err := c.db.MessageBySeq(ctx, it.Message)
		if err != nil {
			return err
		}
		if m.Status < store.StatusSent {
			if err := c.db.SetStatus(ctx, m.Seq, store.StatusSent, serverID, ""); err != nil {
				return err
			}
			t.status = true
			t.ephemeral = append(t.ephemeral, &SentEvent{ID: messageIDFrom(m.ID), Conv: ConvID(m.Conv), ServerID: serverID, Status: StatusSent})
		}
		return nil
	})
	if err != nil {
		return err
	}
	return errNotNow
}

// handleAcks completes rows the relay stored, in one transaction (one by
// one if that fails).
func (c *Client) handleAcks(ctx context.Context, fls []*flight, acks []*protocol.SendAck) error {
	if len(fls) > 1 {
		err := c.tx(ctx, func(ctx context.Context, t *txn) error {
			for i, fl := range fls {
				if err := c.acked(ctx, t, fl, acks[i]); err != nil {
					return fmt.Errorf("outbox row %d: %w", fl.item.Seq, err)
				}
			}
			return nil
		})
		if err == nil || ctx.Err() != nil {
			return err
		}
		c.log.Warn("completing a batch of sends failed; completing them one by one", "rows", len(fls), "err", err)
	}
	var errs error
	for i, fl := range fls {
		errs = errors.Join(errs, c.handleAck(ctx, fl, acks[i]))
	}
	return errs
}

// acked completes a row the relay stored: it is deleted, the devices it
// carried a sender key to become holders, and its message is marked sent
// (✓) with the relay's id.
func (c *Client) acked(ctx context.Context, t *txn, fl *flight, ack *protocol.SendAck) error {
	it := &fl.item
	if it.Kind == store.OutboxPairwise && it.GroupID != nil {
		if err := c.db.AddSenderKeyHolders(ctx, it.GroupID, fl.addrs); err != nil {
			return err
		}
	}
	if err := c.db.DeleteOutbox(ctx, it.Seq); err != nil {
		return err
	}
	if it.Message == 0 {
		return nil
	}
	m, err := c.db.MessageBySeq(ctx, it.Message)
	if errors.Is(err, store.ErrNotFound) {
		return nil
	}
	if err != nil {
		return err
	}
	if err := c.db.AddServerID(ctx, m.Seq, ack.ServerId); err != nil {
		return err
	}
	if m.Status < store.StatusSent {
		if err := c.db.SetStatus(ctx, m.Seq, store.StatusSent, ack.ServerId, ""); err != nil {
			return err
		}
		t.status = true
		t.ephemeral = append(t.ephemeral, &SentEvent{ID: messageIDFrom(m.ID), Conv: ConvID(m.Conv), ServerID: ack.ServerId, Status: StatusSent})
	} else if m.ServerID == 0 {
		return c.db.SetStatus(ctx, m.Seq, m.Status, ack.ServerId, m.Error)
	}
	return nil
}

// handleAck completes or retries a row after the relay's answer.
func (c *Client) handleAck(ctx context.Context, fl *flight, ack *protocol.SendAck) error {
	it := &fl.item
	if ack.Error == nil {
		return c.tx(ctx, func(ctx context.Context, t *txn) error { return c.acked(ctx, t, fl, ack) })
	}
	e := ack.Error
	switch e.Code {
	case protocol.ErrorCode_CODE_DEVICE_MISMATCH:
		// The relay stored nothing. Fix the device lists, then encrypt
		// again under a fresh client id.
		if it.Attempts >= maxSendAttempts {
			return c.failItem(ctx, it, fmt.Errorf("%w: the recipients' devices keep changing", ErrSendFailed))
		}
		if err := c.fixDevices(ctx, e.Mismatches); err != nil {
			if ctx.Err() != nil {
				return ctx.Err()
			}
			it.Frame, it.ClientID = nil, nil
			if perr := c.sendProblem(ctx, it, err); perr != nil && !errors.Is(perr, errNotNow) {
				return perr
			}
			return nil
		}
		it.Attempts++
		it.Frame, it.ClientID = nil, nil
		if err := c.db.UpdateOutbox(ctx, it); err != nil {
			return err
		}
		wakeup(c.outboxWake)
		return nil
	case protocol.ErrorCode_CODE_UNKNOWN_ACCOUNT:
		return c.failItem(ctx, it, fmt.Errorf("%w: %s", ErrUnknownAccount, e.Message))
	case protocol.ErrorCode_CODE_QUEUE_FULL, protocol.ErrorCode_CODE_RATE_LIMITED,
		protocol.ErrorCode_CODE_UNAVAILABLE, protocol.ErrorCode_CODE_INTERNAL:
		// Nothing was stored: the same ciphertext may go again, under a
		// new client id (the relay may remember the refusal by id).
		if it.Attempts >= 10*maxSendAttempts {
			return c.failItem(ctx, it, fmt.Errorf("%w: relay: %s", ErrSendFailed, e.Message))
		}
		it.Attempts++
		d := time.Duration(e.RetryAfterMs) * time.Millisecond
		if d <= 0 {
			d = backoff(it.Attempts, c.cfg.BackoffMin, c.cfg.BackoffMax, c.rand())
		}
		if err := renewClientID(it); err != nil {
			it.Frame, it.ClientID = nil, nil
		}
		it.NotBefore, it.Error = c.clock.Now().Add(d), e.Message
		return c.db.UpdateOutbox(ctx, it)
	case protocol.ErrorCode_CODE_UNAUTHENTICATED:
		return nil // the connection ends; the row goes again as it is
	}
	return c.failItem(ctx, it, fmt.Errorf("%w: relay refused it (%s): %s", ErrSendFailed, e.Code, e.Message))
}

// renewClientID rewrites a stored frame under a new client id.
func renewClientID(it *store.OutboxItem) error {
	f, err := protocol.DecodeFrame(it.Frame)
	if err != nil {
		return err
	}
	s, ok := f.Body.(*protocol.Frame_Send)
	if !ok {
		return errors.New("stored frame is not a send")
	}
	s.Send.ClientId = newClientID()
	b, err := protocol.EncodeFrame(f)
	if err != nil {
		return err
	}
	it.Frame, it.ClientID = b, s.Send.ClientId
	return nil
}

// fixDevices applies the relay's device-list corrections: sessions with
// removed devices are dropped, sessions with new ones are built.
func (c *Client) fixDevices(ctx context.Context, mms []*protocol.DeviceMismatch) error {
	self := c.self()
	for _, mm := range mms {
		if len(mm.Extra) > 0 {
			err := c.db.Atomic(ctx, func(ctx context.Context) error {
				for _, d := range mm.Extra {
					addr := crypto.Address{Name: mm.Account, DeviceID: d}
					if err := c.protocol().DeleteSession(ctx, addr); err != nil {
						return err
					}
					if err := c.db.RemoveSenderKeyHolder(ctx, addr); err != nil {
						return err
					}
				}
				return nil
			})
			if err != nil {
				return err
			}
		}
		if mm.Account == self.Name {
			c.mu.Lock()
			own := slices.DeleteFunc(slices.Clone(c.ownDevices), func(d uint32) bool { return slices.Contains(mm.Extra, d) })
			for _, d := range mm.Missing {
				if d != self.DeviceID && !slices.Contains(own, d) {
					own = append(own, d)
				}
			}
			slices.Sort(own)
			c.ownDevices = own
			c.mu.Unlock()
		}
		var missing []uint32
		for _, d := range mm.Missing {
			if !(mm.Account == self.Name && d == self.DeviceID) {
				missing = append(missing, d)
			}
		}
		if len(missing) > 0 {
			if err := c.fetchSessions(ctx, mm.Account, missing); err != nil {
				return err
			}
		}
	}
	return nil
}
