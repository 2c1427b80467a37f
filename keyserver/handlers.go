package keyserver

import (
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"errors"
	"fmt"
	"net"
	"net/http"
	"strconv"
	"strings"
	"time"

	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/hushchat/hush/crypto"
	"github.com/hushchat/hush/keyserver/authtoken"
	"github.com/hushchat/hush/keyserver/ksapi"
	"github.com/hushchat/hush/keyserver/ratelimit"
	"github.com/hushchat/hush/keyserver/store"
	"github.com/hushchat/hush/protocol"
)

// mapStoreErr turns the store's typed errors into API errors; anything else
// is passed through and answered as 503.
func mapStoreErr(err error) error {
	for _, m := range []struct {
		err    error
		status int
		code   string
		msg    string
	}{
		{store.ErrNameTaken, http.StatusConflict, ksapi.CodeNameTaken, "this name is taken"},
		{store.ErrAccountNotFound, http.StatusNotFound, ksapi.CodeAccountNotFound, "no such account"},
		{store.ErrDeviceNotFound, http.StatusNotFound, ksapi.CodeDeviceNotFound, "no such device"},
		{store.ErrDeviceLimit, http.StatusConflict, ksapi.CodeDeviceLimit, "this account has used all 127 device ids"},
		{store.ErrLastDevice, http.StatusConflict, ksapi.CodeLastDevice, "an account keeps at least one device"},
		{store.ErrPreKeyExists, http.StatusConflict, ksapi.CodePreKeyExists, "a one-time prekey with this id is already stored; nothing was stored"},
		{store.ErrPreKeyLimit, http.StatusConflict, ksapi.CodePreKeyLimit, "the device would hold too many one-time prekeys; nothing was stored"},
		{store.ErrSignedPreKeyInUse, http.StatusConflict, ksapi.CodeSignedPreKeyID, "the signed prekey id is the current one; use a new id"},
		{store.ErrChallengeInvalid, http.StatusUnauthorized, ksapi.CodeChallengeInvalid, "the challenge nonce is unknown, used or expired; request a new one"},
	} {
		if errors.Is(err, m.err) {
			return errf(m.status, m.code, "%s", m.msg)
		}
	}
	return err
}

type authedFunc func(w http.ResponseWriter, r *http.Request, c authtoken.Claims) error

// authed requires a valid token of a device that still exists.
func (s *Server) authed(h authedFunc) handlerFunc {
	return func(w http.ResponseWriter, r *http.Request) error {
		c, err := s.authenticate(w, r)
		if err != nil {
			return err
		}
		return h(w, r, c)
	}
}

func (s *Server) authenticate(w http.ResponseWriter, r *http.Request) (authtoken.Claims, error) {
	unauthorized := func(code, msg string) error {
		w.Header().Set("WWW-Authenticate", `Bearer realm="hush"`)
		return errf(http.StatusUnauthorized, code, "%s", msg)
	}
	h := r.Header.Get("Authorization")
	if h == "" {
		return authtoken.Claims{}, unauthorized(ksapi.CodeAuthRequired, "an Authorization: Bearer token is required")
	}
	scheme, tok, ok := strings.Cut(h, " ")
	if !ok || !strings.EqualFold(scheme, "Bearer") {
		return authtoken.Claims{}, unauthorized(ksapi.CodeInvalidToken, "the Authorization header must be \"Bearer <token>\"")
	}
	c, err := authtoken.Verify(s.pub, strings.TrimSpace(tok), s.now())
	switch {
	case errors.Is(err, authtoken.ErrExpired):
		return authtoken.Claims{}, unauthorized(ksapi.CodeTokenExpired, "the token has expired; log in again")
	case err != nil:
		return authtoken.Claims{}, unauthorized(ksapi.CodeInvalidToken, "the token is not valid for this key server")
	}
	// Revocation: the token is honoured only while its device exists.
	if _, err := s.store.Device(r.Context(), c.Account, c.Device); err != nil {
		if errors.Is(err, store.ErrDeviceNotFound) || errors.Is(err, store.ErrAccountNotFound) {
			return authtoken.Claims{}, unauthorized(ksapi.CodeDeviceRevoked, "the token's device has been removed")
		}
		return authtoken.Claims{}, fmt.Errorf("authenticate %s/%d: %w", c.Account, c.Device, err)
	}
	return c, nil
}

// allowAnon applies the per-IP limit on unauthenticated calls.
func (s *Server) allowAnon(r *http.Request) error {
	host, _, err := net.SplitHostPort(r.RemoteAddr)
	if err != nil {
		host = r.RemoteAddr
	}
	return s.allow(r, s.anonLim, "anonymous", "ip:"+host)
}

func (s *Server) allow(r *http.Request, l ratelimit.Limiter, limit, key string) error {
	ok, wait, err := l.Allow(r.Context(), key)
	if err != nil {
		return fmt.Errorf("rate limit %s: %w", limit, err)
	}
	if !ok {
		s.metrics.rateLimited.WithLabelValues(limit).Inc()
		e := errf(http.StatusTooManyRequests, ksapi.CodeRateLimited, "too many requests; retry after %s", wait.Round(time.Second))
		e.retryAfter = wait
		return e
	}
	return nil
}

func (s *Server) issue(account string, device uint32) (*protocol.TokenResponse, error) {
	now := s.now()
	c := authtoken.Claims{Account: account, Device: device, IssuedAt: now, Expiry: now.Add(s.cfg.TokenTTL)}
	tok, err := authtoken.Issue(s.priv, c)
	if err != nil {
		return nil, fmt.Errorf("issue token for %s/%d: %w", account, device, err)
	}
	return &protocol.TokenResponse{
		Account:   account,
		DeviceId:  device,
		Token:     tok,
		ExpiresAt: timestamppb.New(c.Expiry.Truncate(time.Millisecond)),
	}, nil
}

// consumeChallenge uses up nonce, then checks sig over msg with identityKey.
// The nonce is spent even when the proof fails: each nonce buys one try.
func (s *Server) consumeChallenge(r *http.Request, nonce []byte, identityKey, msg, sig []byte) error {
	if err := s.store.ConsumeChallenge(r.Context(), nonce, s.now()); err != nil {
		return mapStoreErr(err)
	}
	if err := crypto.VerifySignature(identityKey, msg, sig); err != nil {
		return errf(http.StatusUnauthorized, ksapi.CodeBadProof, "the signature over the challenge does not verify with the identity key")
	}
	return nil
}

func (s *Server) serverKey(w http.ResponseWriter, r *http.Request) error {
	return s.reply(w, &protocol.KeyServerKey{Algorithm: "ed25519", PublicKey: s.pub})
}

func (s *Server) challenge(w http.ResponseWriter, r *http.Request) error {
	if err := discardBody(w, r); err != nil {
		return err
	}
	if err := s.allowAnon(r); err != nil {
		return err
	}
	nonce := make([]byte, ksapi.NonceSize)
	rand.Read(nonce)
	now := s.now()
	exp := now.Add(s.cfg.ChallengeTTL).Truncate(time.Millisecond)
	if err := s.store.PutChallenge(r.Context(), nonce, now, exp); err != nil {
		return err
	}
	return s.reply(w, &protocol.AuthChallenge{Nonce: nonce, ExpiresAt: timestamppb.New(exp), ServerKey: s.pub})
}

func (s *Server) register(w http.ResponseWriter, r *http.Request) error {
	var m protocol.RegisterRequest
	if err := decode(w, r, ksapi.MaxBodySize, &m); err != nil {
		return err
	}
	if err := s.allowAnon(r); err != nil {
		return err
	}
	if s.cfg.InviteCode != "" {
		sum := sha256.Sum256([]byte(m.GetInviteCode()))
		if subtle.ConstantTimeCompare(sum[:], s.inviteSum[:]) != 1 {
			return errf(http.StatusForbidden, ksapi.CodeInviteRequired, "registration on this server needs a valid invite code")
		}
	}
	req, err := parseRegister(&m)
	if err != nil {
		return err
	}
	msg, err := ksapi.RegisterMessage(s.pub, req.nonce, req.name)
	if err != nil {
		return err
	}
	if err := s.consumeChallenge(r, req.nonce, req.keys.IdentityKey, msg, req.sig); err != nil {
		return err
	}
	if err := s.store.CreateAccount(r.Context(), req.name, req.keys, s.now()); err != nil {
		return mapStoreErr(err)
	}
	s.log.Info("keyserver: account registered", "account", req.name, "one_time_prekeys", len(req.keys.OneTime))
	s.deviceChanged(req.name)
	resp, err := s.issue(req.name, 1)
	if err != nil {
		return err
	}
	s.replyStatus(w, http.StatusCreated, resp)
	return nil
}

func (s *Server) login(w http.ResponseWriter, r *http.Request) error {
	var m protocol.TokenRequest
	if err := decode(w, r, ksapi.SmallBodySize, &m); err != nil {
		return err
	}
	if err := s.allowAnon(r); err != nil {
		return err
	}
	req, err := parseLogin(&m)
	if err != nil {
		return err
	}
	dev, err := s.store.Device(r.Context(), req.account, req.device)
	if err != nil {
		return mapStoreErr(err)
	}
	msg, err := ksapi.LoginMessage(s.pub, req.nonce, req.account, req.device)
	if err != nil {
		return err
	}
	if err := s.consumeChallenge(r, req.nonce, dev.IdentityKey, msg, req.sig); err != nil {
		return err
	}
	resp, err := s.issue(req.account, req.device)
	if err != nil {
		return err
	}
	return s.reply(w, resp)
}

func (s *Server) addDevice(w http.ResponseWriter, r *http.Request, c authtoken.Claims) error {
	var m protocol.AddDeviceRequest
	if err := decode(w, r, ksapi.MaxBodySize, &m); err != nil {
		return err
	}
	req, err := parseAddDevice(&m)
	if err != nil {
		return err
	}
	msg, err := ksapi.AddDeviceMessage(s.pub, req.nonce, c.Account)
	if err != nil {
		return err
	}
	if err := s.consumeChallenge(r, req.nonce, req.keys.IdentityKey, msg, req.sig); err != nil {
		return err
	}
	id, err := s.store.AddDevice(r.Context(), c.Account, req.keys, s.now())
	if err != nil {
		return mapStoreErr(err)
	}
	s.log.Info("keyserver: device added", "account", c.Account, "device", id, "by_device", c.Device)
	s.deviceChanged(c.Account)
	resp, err := s.issue(c.Account, id)
	if err != nil {
		return err
	}
	s.replyStatus(w, http.StatusCreated, resp)
	return nil
}

func (s *Server) removeDevice(w http.ResponseWriter, r *http.Request, c authtoken.Claims) error {
	if err := discardBody(w, r); err != nil {
		return err
	}
	id, err := strconv.ParseUint(r.PathValue("id"), 10, 32)
	if err != nil {
		return badRequest(ksapi.CodeInvalidDeviceID, "device id %q is not a number", truncate(r.PathValue("id"), 20))
	}
	if err := checkDeviceID("device id", uint32(id)); err != nil {
		return err
	}
	if err := s.store.RemoveDevice(r.Context(), c.Account, uint32(id)); err != nil {
		return mapStoreErr(err)
	}
	s.log.Info("keyserver: device removed", "account", c.Account, "device", id, "by_device", c.Device)
	s.deviceChanged(c.Account)
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(http.StatusNoContent)
	return nil
}

func deviceList(account string, devs []store.Device) *protocol.DeviceList {
	out := &protocol.DeviceList{Account: account, Devices: make([]*protocol.DeviceEntry, len(devs))}
	for i, d := range devs {
		out.Devices[i] = &protocol.DeviceEntry{DeviceId: d.ID, RegistrationId: d.RegistrationID, CreatedAt: timestamppb.New(d.Created)}
	}
	return out
}

func (s *Server) listDevices(w http.ResponseWriter, r *http.Request, c authtoken.Claims) error {
	devs, err := s.store.Devices(r.Context(), c.Account)
	if err != nil {
		return mapStoreErr(err)
	}
	return s.reply(w, deviceList(c.Account, devs))
}

func (s *Server) keyStatusOf(r *http.Request, c authtoken.Claims) (*protocol.KeyStatus, error) {
	d, err := s.store.Device(r.Context(), c.Account, c.Device)
	if err != nil {
		return nil, mapStoreErr(err)
	}
	n, err := s.store.CountOneTimePreKeys(r.Context(), c.Account, c.Device)
	if err != nil {
		return nil, mapStoreErr(err)
	}
	st := &protocol.KeyStatus{
		OneTimePrekeys:     uint32(n),
		SignedPrekeyId:     d.SignedPreKey.ID,
		LastResortPrekeyId: d.LastResort.ID,
	}
	if d.PrevSignedPreKey.ID != 0 && s.now().Before(d.PrevSignedExpires) {
		st.PreviousSignedPrekeyId = d.PrevSignedPreKey.ID
		st.PreviousSignedPrekeyExpiresAt = timestamppb.New(d.PrevSignedExpires)
	}
	return st, nil
}

func (s *Server) replyKeyStatus(w http.ResponseWriter, r *http.Request, c authtoken.Claims) error {
	st, err := s.keyStatusOf(r, c)
	if err != nil {
		return err
	}
	return s.reply(w, st)
}

func (s *Server) keyStatus(w http.ResponseWriter, r *http.Request, c authtoken.Claims) error {
	return s.replyKeyStatus(w, r, c)
}

func (s *Server) uploadPreKeys(w http.ResponseWriter, r *http.Request, c authtoken.Claims) error {
	var m protocol.PreKeyUpload
	if err := decode(w, r, ksapi.MaxBodySize, &m); err != nil {
		return err
	}
	keys, err := oneTimePreKeys("one_time_prekeys", m.GetOneTimePrekeys(), 0)
	if err != nil {
		return err
	}
	if len(keys) == 0 {
		return badRequest(ksapi.CodeMissingField, "one_time_prekeys is empty")
	}
	if err := s.store.AddOneTimePreKeys(r.Context(), c.Account, c.Device, keys, s.cfg.MaxStoredPreKeys); err != nil {
		return mapStoreErr(err)
	}
	return s.replyKeyStatus(w, r, c)
}

func (s *Server) rotateSignedPreKey(w http.ResponseWriter, r *http.Request, c authtoken.Claims) error {
	var m protocol.SignedPreKey
	if err := decode(w, r, ksapi.SmallBodySize, &m); err != nil {
		return err
	}
	d, err := s.store.Device(r.Context(), c.Account, c.Device)
	if err != nil {
		return mapStoreErr(err)
	}
	spk, err := signedPreKey("signed_prekey", &m, d.IdentityKey)
	if err != nil {
		return err
	}
	if err := s.store.RotateSignedPreKey(r.Context(), c.Account, c.Device, spk, s.now().Add(s.cfg.SignedPreKeyGrace)); err != nil {
		return mapStoreErr(err)
	}
	return s.replyKeyStatus(w, r, c)
}

func (s *Server) setLastResort(w http.ResponseWriter, r *http.Request, c authtoken.Claims) error {
	var m protocol.PreKey
	if err := decode(w, r, ksapi.SmallBodySize, &m); err != nil {
		return err
	}
	pk, err := preKey("last_resort_prekey", &m)
	if err != nil {
		return err
	}
	if err := s.store.SetLastResort(r.Context(), c.Account, c.Device, pk); err != nil {
		return mapStoreErr(err)
	}
	return s.replyKeyStatus(w, r, c)
}

func (s *Server) bundles(w http.ResponseWriter, r *http.Request, c authtoken.Claims) error {
	target, err := accountName("account name", r.PathValue("name"))
	if err != nil {
		return err
	}
	var only uint32
	if v := r.URL.Query().Get("device"); v != "" {
		id, err := strconv.ParseUint(v, 10, 32)
		if err != nil {
			return badRequest(ksapi.CodeInvalidDeviceID, "device %q is not a number", truncate(v, 20))
		}
		if err := checkDeviceID("device", uint32(id)); err != nil {
			return err
		}
		only = uint32(id)
	}
	// The limit is spent before anything is looked up, so probing unknown
	// names or devices costs the same as fetching.
	if err := s.allow(r, s.bundleLim, "bundle", c.Account+"\x00"+target); err != nil {
		return err
	}
	devs, err := s.store.Devices(r.Context(), target)
	if err != nil {
		return mapStoreErr(err)
	}
	if only != 0 {
		var sel []store.Device
		for _, d := range devs {
			if d.ID == only {
				sel = append(sel, d)
			}
		}
		if len(sel) == 0 {
			return errf(http.StatusNotFound, ksapi.CodeDeviceNotFound, "%s has no device %d", target, only)
		}
		devs = sel
	}
	resp := &protocol.BundleResponse{Account: target, Bundles: make([]*protocol.PreKeyBundle, 0, len(devs))}
	for _, d := range devs {
		cl, err := s.store.ClaimPreKey(r.Context(), target, d.ID)
		if errors.Is(err, store.ErrDeviceNotFound) {
			continue // removed since the listing: no bundle for it
		}
		if err != nil {
			return mapStoreErr(err)
		}
		if cl.LastResort {
			s.metrics.claims.WithLabelValues("last_resort").Inc()
		} else {
			s.metrics.claims.WithLabelValues("one_time").Inc()
		}
		if s.cfg.LowPreKeys > 0 {
			if n, err := s.store.CountOneTimePreKeys(r.Context(), target, d.ID); err == nil && n < s.cfg.LowPreKeys {
				s.metrics.low.Inc()
			}
		}
		resp.Bundles = append(resp.Bundles, &protocol.PreKeyBundle{
			DeviceId:       d.ID,
			RegistrationId: d.RegistrationID,
			IdentityKey:    d.IdentityKey,
			SignedPrekey: &protocol.SignedPreKey{
				KeyId: d.SignedPreKey.ID, PublicKey: d.SignedPreKey.PublicKey, Signature: d.SignedPreKey.Signature,
			},
			Prekey:     &protocol.PreKey{KeyId: cl.Key.ID, PublicKey: cl.Key.PublicKey},
			LastResort: cl.LastResort,
		})
	}
	if len(resp.Bundles) == 0 {
		return errf(http.StatusNotFound, ksapi.CodeAccountNotFound, "no such account")
	}
	return s.reply(w, resp)
}

func (s *Server) identity(w http.ResponseWriter, r *http.Request, c authtoken.Claims) error {
	target, err := accountName("account name", r.PathValue("name"))
	if err != nil {
		return err
	}
	devs, err := s.store.Devices(r.Context(), target)
	if err != nil {
		return mapStoreErr(err)
	}
	resp := &protocol.AccountIdentity{Account: target, Devices: make([]*protocol.DeviceIdentity, len(devs))}
	for i, d := range devs {
		resp.Devices[i] = &protocol.DeviceIdentity{DeviceId: d.ID, RegistrationId: d.RegistrationID, IdentityKey: d.IdentityKey}
	}
	return s.reply(w, resp)
}

func (s *Server) internalDevices(w http.ResponseWriter, r *http.Request) error {
	if s.cfg.InternalSecret == "" {
		return errf(http.StatusNotFound, ksapi.CodeNotFound, "the internal API is disabled on this key server")
	}
	sum := sha256.Sum256([]byte(r.Header.Get(ksapi.InternalSecretHeader)))
	if subtle.ConstantTimeCompare(sum[:], s.secretSum[:]) != 1 {
		return errf(http.StatusForbidden, ksapi.CodeInternalAuth, "missing or wrong %s", ksapi.InternalSecretHeader)
	}
	target, err := accountName("account name", r.PathValue("name"))
	if err != nil {
		return err
	}
	devs, err := s.store.Devices(r.Context(), target)
	if err != nil {
		return mapStoreErr(err)
	}
	return s.reply(w, deviceList(target, devs))
}

func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n] + "…"
}
