package client

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"net/url"
	"strings"
	"time"

	"github.com/hushchat/hush/client/store"
	"github.com/hushchat/hush/crypto"
	"github.com/hushchat/hush/keyserver/ksapi"
	"github.com/hushchat/hush/keyserver/ksclient"
	"github.com/hushchat/hush/protocol"
)

// Register creates account name on the hush server at serverURL (the key
// server's base URL, e.g. "http://127.0.0.1:8080") with this profile as its
// first device: it generates the identity key, a signed prekey, one-time
// prekeys and a last-resort prekey, keeps the private halves in the
// profile and uploads the public ones. Then the client connects.
//
// The keys are stored before the server is asked, so a registration that
// was interrupted after the server accepted it completes on the next
// Register with the same name (the stored identity key proves the account
// is this profile's).
func (c *Client) Register(ctx context.Context, serverURL, name string) error {
	name, err := protocol.NormalizeAccountName(name)
	if err != nil {
		return fmt.Errorf("register: %w", err)
	}
	return c.join(ctx, serverURL, c.cfg.RelayURL, name, func(ks *ksclient.Client, keys ksclient.DeviceKeys, id *crypto.IdentityKeyPair, resumed bool) (*ksclient.Session, error) {
		sess, err := ks.Register(ctx, name, c.cfg.InviteCode, keys, id.Sign)
		var kerr *ksclient.Error
		if resumed && errors.As(err, &kerr) && kerr.Code == ksapi.CodeNameTaken {
			// An earlier attempt may have registered with these keys.
			if s, lerr := ks.Login(ctx, name, 1, id.Sign); lerr == nil {
				return s, nil
			}
		}
		if errors.As(err, &kerr) && kerr.Code == ksapi.CodeNameTaken {
			return nil, fmt.Errorf("register %s: the name is taken", name)
		}
		if err != nil {
			return nil, fmt.Errorf("register %s: %w", name, err)
		}
		return sess, nil
	})
}

// linkCode is what NewLinkCode encodes.
type linkCode struct {
	Version int    `json:"v"`
	Server  string `json:"server"`
	Relay   string `json:"relay"`
	Account string `json:"account"`
	Token   string `json:"token"`
}

const linkCodePrefix = "hush-link:"

// NewLinkCode returns a code that lets another, new profile join this
// account as an additional device (LinkDevice). It carries this device's
// current auth token: anyone holding the code can act as this device
// until the token expires (a day by default). Show it once and move it
// over a channel you trust (for example a QR code read in person).
func (c *Client) NewLinkCode(ctx context.Context) (string, error) {
	a, _, err := c.account()
	if err != nil {
		return "", err
	}
	tok, err := c.token(ctx, false)
	if err != nil {
		return "", fmt.Errorf("link code: %w", err)
	}
	b, _ := json.Marshal(linkCode{Version: 1, Server: a.ServerURL, Relay: a.RelayURL, Account: a.Name, Token: tok})
	c.mu.Lock()
	c.linkWatchUntil = c.clock.Now().Add(linkWatchFor)
	c.mu.Unlock()
	wakeup(c.keysWake)
	return linkCodePrefix + base64.RawURLEncoding.EncodeToString(b), nil
}

func parseLinkCode(s string) (*linkCode, error) {
	s = strings.TrimSpace(s)
	if !strings.HasPrefix(s, linkCodePrefix) || len(s) > 4096 {
		return nil, errors.New("link code: not a hush link code")
	}
	b, err := base64.RawURLEncoding.DecodeString(s[len(linkCodePrefix):])
	if err != nil {
		return nil, errors.New("link code: not a hush link code")
	}
	var lc linkCode
	if err := json.Unmarshal(b, &lc); err != nil || lc.Version != 1 || lc.Token == "" || lc.Server == "" {
		return nil, errors.New("link code: malformed or from another version of hush")
	}
	if err := protocol.ValidateAccountName(lc.Account); err != nil {
		return nil, fmt.Errorf("link code: %w", err)
	}
	return &lc, nil
}

// LinkDevice joins the account named in code (from NewLinkCode on one of
// its devices) as a new device with its own keys, then connects. The
// account's other devices and its contacts pick the new device up on
// their next send; this device sees messages from then on (earlier
// history stays on the other devices), and the other devices send it the
// state of their groups.
func (c *Client) LinkDevice(ctx context.Context, code string) error {
	lc, err := parseLinkCode(code)
	if err != nil {
		return err
	}
	relay := c.cfg.RelayURL
	if relay == "" {
		relay = lc.Relay
	}
	return c.join(ctx, lc.Server, relay, lc.Account, func(ks *ksclient.Client, keys ksclient.DeviceKeys, id *crypto.IdentityKeyPair, resumed bool) (*ksclient.Session, error) {
		if resumed {
			// An earlier attempt may have added this device already.
			ids, err := ks.Identity(ctx, lc.Token, lc.Account)
			if err == nil {
				for _, d := range ids {
					if bytes.Equal(d.IdentityKey, id.PublicKey()) {
						return ks.Login(ctx, lc.Account, d.DeviceID, id.Sign)
					}
				}
			}
		}
		sess, err := ks.AddDevice(ctx, lc.Token, lc.Account, keys, id.Sign)
		if err != nil {
			var kerr *ksclient.Error
			if errors.As(err, &kerr) && (kerr.Code == ksapi.CodeTokenExpired || kerr.Code == ksapi.CodeInvalidToken) {
				return nil, fmt.Errorf("link device: the link code has expired; make a new one: %w", err)
			}
			return nil, fmt.Errorf("link device: %w", err)
		}
		return sess, nil
	})
}

// deriveRelayURL maps the server URL to hush-server's relay endpoint.
func deriveRelayURL(server string) (string, error) {
	u, err := url.Parse(server)
	if err != nil {
		return "", fmt.Errorf("server URL: %w", err)
	}
	switch u.Scheme {
	case "http":
		u.Scheme = "ws"
	case "https":
		u.Scheme = "wss"
	default:
		return "", fmt.Errorf("server URL %q must be http:// or https://", truncate(server, 80))
	}
	u.Path = strings.TrimSuffix(u.Path, "/") + protocol.WSPath
	u.RawQuery, u.Fragment = "", ""
	return u.String(), nil
}

type joinFunc func(ks *ksclient.Client, keys ksclient.DeviceKeys, id *crypto.IdentityKeyPair, resumed bool) (*ksclient.Session, error)

// join generates (or, after an interrupted attempt, reuses) the device's
// identity, stores fresh prekeys, lets do talk to the key server, and
// records the resulting account.
func (c *Client) join(ctx context.Context, serverURL, relayURL, name string, do joinFunc) error {
	c.mu.Lock()
	registered := c.acct != nil
	c.mu.Unlock()
	if registered {
		return ErrAlreadyRegistered
	}
	ks, err := ksclient.New(serverURL, ksclient.WithHTTPClient(c.cfg.HTTPClient))
	if err != nil {
		return err
	}
	if relayURL == "" {
		if relayURL, err = deriveRelayURL(serverURL); err != nil {
			return err
		}
	}
	now := c.clock.Now()
	pending, err := c.db.LoadAccount(ctx)
	resumed := err == nil && pending.DeviceID == 0 && pending.Name == name && pending.ServerURL == serverURL
	if err != nil && !errors.Is(err, store.ErrNotFound) {
		return err
	}
	if !resumed {
		id, err := crypto.GenerateIdentityKeyPair()
		if err != nil {
			return err
		}
		reg, err := crypto.GenerateRegistrationID()
		if err != nil {
			return err
		}
		pending = &store.Account{Name: name, ServerURL: serverURL, RelayURL: relayURL, IdentityPrivate: id.PrivateKey(),
			RegistrationID: reg, NextPreKeyID: 1, NextSignedPreKeyID: 1, Created: now}
	}
	pending.RelayURL = relayURL
	id, err := crypto.ParseIdentityKeyPair(pending.IdentityPrivate)
	if err != nil {
		return err
	}
	// The protocol engine only stores key records here; the device id is
	// a placeholder until the server assigns one.
	p, err := crypto.New(crypto.Config{Address: crypto.Address{Name: name, DeviceID: 1}, Identity: id,
		RegistrationID: pending.RegistrationID, Store: c.db, Logger: c.cfg.Logger})
	if err != nil {
		return err
	}
	spk, err := crypto.GenerateSignedPreKey(id, pending.NextSignedPreKeyID)
	if err != nil {
		return err
	}
	batch := min(c.cfg.PreKeyBatch, ksapi.MaxPreKeysPerRequest)
	pks, next, err := crypto.GeneratePreKeys(pending.NextPreKeyID, batch)
	if err != nil {
		return err
	}
	last, err := crypto.GenerateLastResortPreKey()
	if err != nil {
		return err
	}
	pending.NextPreKeyID = next
	pending.SignedPreKeyID = spk.ID()
	pending.NextSignedPreKeyID = crypto.NextPreKeyID(spk.ID())
	pending.SignedPreKeyCreated = now
	err = c.db.Atomic(ctx, func(ctx context.Context) error {
		if err := c.db.SaveAccount(ctx, pending); err != nil {
			return err
		}
		if err := p.StoreSignedPreKey(ctx, spk); err != nil {
			return err
		}
		return p.StorePreKeys(ctx, append(pks, last))
	})
	if err != nil {
		return err
	}
	keys := ksclient.DeviceKeys{
		IdentityKey:    id.PublicKey(),
		RegistrationID: pending.RegistrationID,
		SignedPreKey:   ksclient.SignedPreKey(spk.Public()),
		LastResort:     ksclient.PreKey(last.Public()),
	}
	for _, k := range pks {
		keys.OneTime = append(keys.OneTime, ksclient.PreKey(k.Public()))
	}
	sess, err := do(ks, keys, id, resumed)
	if err != nil {
		return err
	}
	if sess.Account != name {
		return fmt.Errorf("key server answered for account %q, not %q", truncate(sess.Account, 40), name)
	}
	pending.DeviceID = sess.Device
	pending.Token, pending.TokenExpiry = sess.Token, sess.Expiry
	err = c.db.Atomic(ctx, func(ctx context.Context) error {
		if err := c.db.SaveAccount(ctx, pending); err != nil {
			return err
		}
		return c.db.SetSetting(ctx, settingTokenObtained, fmt.Sprint(now.UnixMilli()))
	})
	if err != nil {
		return err
	}
	if err := c.useAccount(pending); err != nil {
		return err
	}
	c.log.Info("device registered", "account", name, "device", sess.Device)
	c.start()
	return nil
}

const settingTokenObtained = "auth.token_obtained_ms"

// token returns a valid auth token, logging in again when the current one
// is missing, expiring (TokenRefreshMargin, at most half its lifetime
// left) or force is set.
func (c *Client) token(ctx context.Context, force bool) (string, error) {
	c.mu.Lock()
	a, id, ks := c.acct, c.identity, c.ks
	c.mu.Unlock()
	if a == nil {
		return "", ErrNotRegistered
	}
	now := c.clock.Now()
	if !force && a.Token != "" && now.Before(c.refreshAt(ctx, a)) {
		return a.Token, nil
	}
	sess, err := ks.Login(ctx, a.Name, a.DeviceID, id.Sign)
	if err != nil {
		var kerr *ksclient.Error
		if errors.As(err, &kerr) && (kerr.Code == ksapi.CodeDeviceRevoked || kerr.Code == ksapi.CodeDeviceNotFound ||
			kerr.Code == ksapi.CodeAccountNotFound || kerr.Code == ksapi.CodeBadProof) {
			return "", fmt.Errorf("%w: %w", ErrDeviceRevoked, err)
		}
		return "", fmt.Errorf("log in: %w", err)
	}
	err = c.updateAccount(ctx, func(a *store.Account) { a.Token, a.TokenExpiry = sess.Token, sess.Expiry }, func(ctx context.Context) error {
		return c.db.SetSetting(ctx, settingTokenObtained, fmt.Sprint(now.UnixMilli()))
	})
	if err != nil {
		return "", err
	}
	return sess.Token, nil
}

// refreshAt is when the current token should be replaced.
func (c *Client) refreshAt(ctx context.Context, a *store.Account) time.Time {
	margin := c.cfg.TokenRefreshMargin
	if v, ok, _ := c.db.Setting(ctx, settingTokenObtained); ok {
		var obtained int64
		if _, err := fmt.Sscan(v, &obtained); err == nil && obtained > 0 {
			if half := a.TokenExpiry.Sub(time.UnixMilli(obtained)) / 2; half < margin {
				margin = half
			}
		}
	}
	return a.TokenExpiry.Add(-margin)
}

// updateAccount applies fn to a copy of the account, saves it together
// with extra's writes, and only then makes it current.
func (c *Client) updateAccount(ctx context.Context, fn func(*store.Account), extra func(ctx context.Context) error) error {
	c.mu.Lock()
	cp := *c.acct
	c.mu.Unlock()
	fn(&cp)
	err := c.db.Atomic(ctx, func(ctx context.Context) error {
		if extra != nil {
			if err := extra(ctx); err != nil {
				return err
			}
		}
		return c.db.SaveAccount(ctx, &cp)
	})
	if err != nil {
		return err
	}
	c.mu.Lock()
	c.acct = &cp
	c.mu.Unlock()
	return nil
}

// withToken runs a key server call with a valid token, logging in again
// once if the server says the token expired.
func (c *Client) withToken(ctx context.Context, fn func(ks *ksclient.Client, token string) error) error {
	tok, err := c.token(ctx, false)
	if err != nil {
		return err
	}
	c.mu.Lock()
	ks := c.ks
	c.mu.Unlock()
	err = fn(ks, tok)
	var kerr *ksclient.Error
	if errors.As(err, &kerr) && (kerr.Code == ksapi.CodeTokenExpired || kerr.Code == ksapi.CodeInvalidToken) {
		if tok, err = c.token(ctx, true); err != nil {
			return err
		}
		err = fn(ks, tok)
	}
	if errors.As(err, &kerr) && kerr.Code == ksapi.CodeDeviceRevoked {
		return fmt.Errorf("%w: %w", ErrDeviceRevoked, err)
	}
	return err
}

// DeviceInfo is one device of this account.
type DeviceInfo struct {
	ID      uint32    `json:"id"`
	Created time.Time `json:"created"`
	// Current marks this device.
	Current bool `json:"current"`
}

// Devices lists this account's devices (asking the key server).
func (c *Client) Devices(ctx context.Context) ([]DeviceInfo, error) {
	a, _, err := c.account()
	if err != nil {
		return nil, err
	}
	var ds []ksclient.Device
	err = c.withToken(ctx, func(ks *ksclient.Client, tok string) error {
		var err error
		ds, err = ks.Devices(ctx, tok)
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("list devices: %w", err)
	}
	out := make([]DeviceInfo, len(ds))
	for i, d := range ds {
		out[i] = DeviceInfo{ID: d.ID, Created: d.Created, Current: d.ID == a.DeviceID}
	}
	c.setOwnDevices(ds)
	return out, nil
}

func (c *Client) setOwnDevices(ds []ksclient.Device) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.acct == nil {
		return
	}
	own := []uint32{}
	for _, d := range ds {
		if d.ID != c.acct.DeviceID {
			own = append(own, d.ID)
		}
	}
	c.ownDevices = own
}

// RemoveDevice removes device id from this account. Its tokens stop
// working at once; removing this device itself ends this profile's use of
// the account.
func (c *Client) RemoveDevice(ctx context.Context, id uint32) error {
	if _, _, err := c.account(); err != nil {
		return err
	}
	err := c.withToken(ctx, func(ks *ksclient.Client, tok string) error { return ks.RemoveDevice(ctx, tok, id) })
	if err != nil {
		return fmt.Errorf("remove device %d: %w", id, err)
	}
	c.mu.Lock()
	c.ownDevices = nil // learn the list again
	c.mu.Unlock()
	return nil
}

// keysLoop keeps the key server stocked with one-time prekeys and rotates
// the signed prekey on schedule.
func (c *Client) keysLoop() {
	attempt := 0
	for {
		wait := c.cfg.KeyCheckInterval
		c.mu.Lock()
		if c.clock.Now().Before(c.linkWatchUntil) {
			// A link code is out: look for the new device often, to hand
			// it this account's groups soon after it joins.
			wait = min(wait, linkWatchInterval)
		}
		c.mu.Unlock()
		if err := c.maintainKeys(c.ctx); err != nil {
			if c.ctx.Err() != nil {
				return
			}
			if errors.Is(err, ErrDeviceRevoked) {
				c.revoked(err)
				return
			}
			wait = backoff(attempt, c.cfg.BackoffMin, c.cfg.BackoffMax, c.rand())
			attempt++
			c.log.Warn("key upkeep failed", "retry_in", wait, "err", err)
		} else {
			attempt = 0
		}
		t := c.clock.NewTimer(wait)
		select {
		case <-t.C():
		case <-c.keysWake:
			t.Stop()
		case <-c.ctx.Done():
			t.Stop()
			return
		}
	}
}

// linkWatchInterval and linkWatchFor: how often and how long after
// NewLinkCode the client looks for the new device.
const (
	linkWatchInterval = 2 * time.Second
	linkWatchFor      = 15 * time.Minute
)

// refreshOwnDevices learns this account's device list; a device it has no
// session with yet gets one, and with it the state of this account's
// groups.
func (c *Client) refreshOwnDevices(ctx context.Context) error {
	if _, err := c.Devices(ctx); err != nil {
		return err
	}
	_, err := c.devicesOf(ctx, c.me())
	return err
}

func (c *Client) maintainKeys(ctx context.Context) error {
	c.mu.Lock()
	id, p := c.identity, c.proto
	c.mu.Unlock()
	if err := c.refreshOwnDevices(ctx); err != nil {
		return fmt.Errorf("own devices: %w", err)
	}
	var st *ksclient.KeyStatus
	err := c.withToken(ctx, func(ks *ksclient.Client, tok string) error {
		var err error
		st, err = ks.KeyStatus(ctx, tok)
		return err
	})
	if err != nil {
		return fmt.Errorf("key status: %w", err)
	}
	for left := st.OneTimePreKeys; left < c.cfg.PreKeyLowWater; {
		c.mu.Lock()
		start := c.acct.NextPreKeyID
		c.mu.Unlock()
		n := min(c.cfg.PreKeyBatch-left, ksapi.MaxPreKeysPerRequest)
		if n <= 0 {
			break
		}
		keys, next, err := crypto.GeneratePreKeys(start, n)
		if err != nil {
			return err
		}
		err = c.updateAccount(ctx, func(a *store.Account) { a.NextPreKeyID = next }, func(ctx context.Context) error {
			return p.StorePreKeys(ctx, keys)
		})
		if err != nil {
			return err
		}
		pub := make([]ksclient.PreKey, len(keys))
		for i, k := range keys {
			pub[i] = ksclient.PreKey(k.Public())
		}
		err = c.withToken(ctx, func(ks *ksclient.Client, tok string) error {
			s, err := ks.UploadPreKeys(ctx, tok, pub)
			if err == nil {
				left = s.OneTimePreKeys
			}
			return err
		})
		if err != nil {
			return fmt.Errorf("upload prekeys: %w", err)
		}
		c.log.Info("uploaded one-time prekeys", "count", n, "stocked", left)
	}

	now := c.clock.Now()
	c.mu.Lock()
	a := *c.acct
	c.mu.Unlock()
	if now.Sub(a.SignedPreKeyCreated) >= c.cfg.SignedPreKeyRotation {
		spk, err := crypto.GenerateSignedPreKey(id, a.NextSignedPreKeyID)
		if err != nil {
			return err
		}
		// Keep the private half before the server can hand out the public.
		err = c.updateAccount(ctx, func(a *store.Account) { a.NextSignedPreKeyID = crypto.NextPreKeyID(spk.ID()) }, func(ctx context.Context) error {
			return p.StoreSignedPreKey(ctx, spk)
		})
		if err != nil {
			return err
		}
		err = c.withToken(ctx, func(ks *ksclient.Client, tok string) error {
			_, err := ks.RotateSignedPreKey(ctx, tok, ksclient.SignedPreKey(spk.Public()))
			return err
		})
		if err != nil {
			return fmt.Errorf("rotate signed prekey: %w", err)
		}
		old := a.SignedPreKeyID
		err = c.updateAccount(ctx, func(a *store.Account) { a.SignedPreKeyID, a.SignedPreKeyCreated = spk.ID(), now }, func(ctx context.Context) error {
			return c.db.RetireSignedPreKey(ctx, old, now.Add(c.cfg.SignedPreKeyGrace))
		})
		if err != nil {
			return err
		}
		c.log.Info("rotated signed prekey", "id", spk.ID())
	}
	expired, err := c.db.ExpiredSignedPreKeys(ctx, now)
	if err != nil {
		return err
	}
	for _, sid := range expired {
		if err := c.db.Atomic(ctx, func(ctx context.Context) error { return p.RemoveSignedPreKey(ctx, sid) }); err != nil {
			return err
		}
	}
	// The relay keeps an envelope at most its queue TTL (30 days by
	// default); an id processed longer ago than that cannot come back.
	return c.db.PruneProcessed(ctx, now.Add(-60*24*time.Hour))
}

// revoked stops networking for good: the device was removed.
func (c *Client) revoked(err error) {
	c.log.Error("this device was removed from its account; stopping", "err", err)
	c.setState(Offline, 0, ErrDeviceRevoked.Error())
}
