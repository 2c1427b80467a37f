// Package ksclient is a typed Go client for the key server's HTTP API
// (docs/api.md, "Key server HTTP API"). The client core, hush-bench and a
// stand-alone relay use it; it depends only on the wire contract (ksapi,
// protocol), never on the server.
//
// Every call takes a context and, where the route needs one, the caller's
// token explicitly, so one Client can serve many accounts (as a benchmark
// does). A refused request returns *Error carrying the server's
// machine-readable code; compare codes with the ksapi.Code* constants:
//
//	var e *ksclient.Error
//	if errors.As(err, &e) && e.Code == ksapi.CodeNameTaken { … }
//
// Proofs of identity-key possession (registration, add-device, login) are
// made through a Signer, so private keys never need to leave the caller's
// crypto layer.
package ksclient

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"

	"google.golang.org/protobuf/proto"

	"github.com/hushchat/hush/keyserver/ksapi"
	"github.com/hushchat/hush/protocol"
)

// Error is a request the key server refused (or could not serve).
type Error struct {
	Status     int    // HTTP status
	Code       string // ksapi.Code*, or "" if the body was not a key server error
	Message    string
	RetryAfter time.Duration // from Retry-After, with 429 and some 503s
}

func (e *Error) Error() string {
	s := fmt.Sprintf("key server: %d %s: %s", e.Status, e.Code, e.Message)
	if e.RetryAfter > 0 {
		s += fmt.Sprintf(" (retry after %v)", e.RetryAfter)
	}
	return s
}

// Signer makes an XEdDSA signature with a device's identity private key
// (for example crypto's identity key pair, or libsignal's
// ecc.CalculateSignature).
type Signer func(message []byte) ([]byte, error)

// Client talks to one key server. Its zero value is not usable; use New.
type Client struct {
	base *url.URL
	http *http.Client
}

// Option configures a Client.
type Option func(*Client)

// WithHTTPClient sets the http.Client (default: one with a 30 s timeout).
func WithHTTPClient(h *http.Client) Option { return func(c *Client) { c.http = h } }

// New returns a client for the key server at baseURL (e.g.
// "http://127.0.0.1:8081"); API paths are appended to it.
func New(baseURL string, opts ...Option) (*Client, error) {
	u, err := url.Parse(baseURL)
	if err != nil {
		return nil, fmt.Errorf("ksclient: base URL: %w", err)
	}
	if u.Scheme != "http" && u.Scheme != "https" || u.Host == "" {
		return nil, fmt.Errorf("ksclient: base URL %q must be http(s)://host[:port]", baseURL)
	}
	u.Path = strings.TrimSuffix(u.Path, "/")
	c := &Client{base: u, http: &http.Client{Timeout: 30 * time.Second}}
	for _, o := range opts {
		o(c)
	}
	return c, nil
}

// Plain Go forms of the API's messages.

// PreKey is a one-time or last-resort prekey.
type PreKey struct {
	ID        uint32
	PublicKey []byte // 33 bytes
}

// SignedPreKey is a prekey signed by the identity key.
type SignedPreKey struct {
	ID        uint32
	PublicKey []byte // 33 bytes
	Signature []byte // 64 bytes, XEdDSA over PublicKey
}

// DeviceKeys is what a device publishes when it joins an account.
type DeviceKeys struct {
	IdentityKey    []byte // 33 bytes
	RegistrationID uint32
	SignedPreKey   SignedPreKey
	OneTime        []PreKey // at most ksapi.MaxPreKeysPerRequest
	LastResort     PreKey
}

// Session is a successful registration, add-device or login.
type Session struct {
	Account string
	Device  uint32
	Token   string
	Expiry  time.Time
}

// Challenge is a single-use nonce.
type Challenge struct {
	Nonce     []byte
	ExpiresAt time.Time
	ServerKey ed25519.PublicKey
}

// KeyStatus is the calling device's key state.
type KeyStatus struct {
	OneTimePreKeys         int
	SignedPreKeyID         uint32
	PreviousSignedPreKeyID uint32    // 0 if none
	PreviousSignedExpires  time.Time // zero if none
	LastResortPreKeyID     uint32
}

// Bundle is what a sender needs to start a session with one device.
type Bundle struct {
	DeviceID       uint32
	RegistrationID uint32
	IdentityKey    []byte
	SignedPreKey   SignedPreKey
	PreKey         PreKey
	// LastResort: PreKey is the device's last-resort key (no one-time
	// prekey was left).
	LastResort bool
}

// DeviceIdentity is one device's identity key.
type DeviceIdentity struct {
	DeviceID       uint32
	RegistrationID uint32
	IdentityKey    []byte
}

// Device is one device of an account.
type Device struct {
	ID             uint32
	RegistrationID uint32
	Created        time.Time
}

func toPreKey(p PreKey) *protocol.PreKey {
	return &protocol.PreKey{KeyId: p.ID, PublicKey: p.PublicKey}
}

func toSigned(s SignedPreKey) *protocol.SignedPreKey {
	return &protocol.SignedPreKey{KeyId: s.ID, PublicKey: s.PublicKey, Signature: s.Signature}
}

func toPreKeys(in []PreKey) []*protocol.PreKey {
	out := make([]*protocol.PreKey, len(in))
	for i, p := range in {
		out[i] = toPreKey(p)
	}
	return out
}

func (d DeviceKeys) proto() *protocol.DeviceKeys {
	return &protocol.DeviceKeys{
		IdentityKey:      d.IdentityKey,
		RegistrationId:   d.RegistrationID,
		SignedPrekey:     toSigned(d.SignedPreKey),
		OneTimePrekeys:   toPreKeys(d.OneTime),
		LastResortPrekey: toPreKey(d.LastResort),
	}
}

func fromSession(m *protocol.TokenResponse) *Session {
	return &Session{Account: m.GetAccount(), Device: m.GetDeviceId(), Token: m.GetToken(), Expiry: m.GetExpiresAt().AsTime()}
}

func fromStatus(m *protocol.KeyStatus) *KeyStatus {
	st := &KeyStatus{
		OneTimePreKeys:         int(m.GetOneTimePrekeys()),
		SignedPreKeyID:         m.GetSignedPrekeyId(),
		PreviousSignedPreKeyID: m.GetPreviousSignedPrekeyId(),
		LastResortPreKeyID:     m.GetLastResortPrekeyId(),
	}
	if m.GetPreviousSignedPrekeyExpiresAt() != nil {
		st.PreviousSignedExpires = m.GetPreviousSignedPrekeyExpiresAt().AsTime()
	}
	return st
}

func fromDevices(m *protocol.DeviceList) []Device {
	out := make([]Device, len(m.GetDevices()))
	for i, d := range m.GetDevices() {
		out[i] = Device{ID: d.GetDeviceId(), RegistrationID: d.GetRegistrationId(), Created: d.GetCreatedAt().AsTime()}
	}
	return out
}

// do sends one request. in (may be nil) is the JSON body; out (may be nil)
// receives a 2xx body. header values are added as given.
func (c *Client) do(ctx context.Context, method, path string, query url.Values, header http.Header, in, out proto.Message) error {
	u := *c.base
	u.Path += path
	u.RawQuery = query.Encode()
	var body io.Reader
	if in != nil {
		b, err := ksapi.Marshal(in)
		if err != nil {
			return fmt.Errorf("ksclient: encode %s %s: %w", method, path, err)
		}
		body = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, u.String(), body)
	if err != nil {
		return fmt.Errorf("ksclient: %s %s: %w", method, path, err)
	}
	for k, vs := range header {
		for _, v := range vs {
			req.Header.Add(k, v)
		}
	}
	if in != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	req.Header.Set("Accept", "application/json")
	resp, err := c.http.Do(req)
	if err != nil {
		return fmt.Errorf("ksclient: %s %s: %w", method, path, err)
	}
	defer resp.Body.Close()
	raw, err := io.ReadAll(io.LimitReader(resp.Body, ksapi.MaxResponseSize+1))
	if err != nil {
		return fmt.Errorf("ksclient: %s %s: read response: %w", method, path, err)
	}
	if len(raw) > ksapi.MaxResponseSize {
		return fmt.Errorf("ksclient: %s %s: response larger than %d bytes", method, path, ksapi.MaxResponseSize)
	}
	if resp.StatusCode < 200 || resp.StatusCode > 299 {
		return responseError(resp, raw)
	}
	if out == nil {
		return nil
	}
	if err := ksapi.UnmarshalResponse(raw, out); err != nil {
		return fmt.Errorf("ksclient: %s %s: decode response: %w", method, path, err)
	}
	return nil
}

func responseError(resp *http.Response, raw []byte) *Error {
	e := &Error{Status: resp.StatusCode}
	var m protocol.KeyServerError
	if err := ksapi.UnmarshalResponse(raw, &m); err == nil && m.GetCode() != "" {
		e.Code, e.Message = m.GetCode(), m.GetMessage()
		e.RetryAfter = time.Duration(m.GetRetryAfterSeconds()) * time.Second
	} else {
		e.Message = strings.TrimSpace(string(raw[:min(len(raw), 200)]))
		if e.Message == "" {
			e.Message = http.StatusText(resp.StatusCode)
		}
	}
	if v := resp.Header.Get("Retry-After"); v != "" {
		if secs, err := strconv.Atoi(v); err == nil && secs > 0 {
			e.RetryAfter = time.Duration(secs) * time.Second
		}
	}
	return e
}

func bearer(token string) http.Header {
	return http.Header{"Authorization": {"Bearer " + token}}
}

// ServerKey fetches the key server's Ed25519 public key, which verifies
// tokens (authtoken.Verify).
func (c *Client) ServerKey(ctx context.Context) (ed25519.PublicKey, error) {
	var m protocol.KeyServerKey
	if err := c.do(ctx, http.MethodGet, ksapi.PathServerKey, nil, nil, nil, &m); err != nil {
		return nil, err
	}
	if m.GetAlgorithm() != "ed25519" || len(m.GetPublicKey()) != ed25519.PublicKeySize {
		return nil, fmt.Errorf("ksclient: server key: unexpected %q key of %d bytes", m.GetAlgorithm(), len(m.GetPublicKey()))
	}
	return ed25519.PublicKey(m.GetPublicKey()), nil
}

// Challenge fetches a single-use nonce.
func (c *Client) Challenge(ctx context.Context) (*Challenge, error) {
	var m protocol.AuthChallenge
	if err := c.do(ctx, http.MethodPost, ksapi.PathChallenge, nil, nil, nil, &m); err != nil {
		return nil, err
	}
	if len(m.GetNonce()) != ksapi.NonceSize || len(m.GetServerKey()) != ed25519.PublicKeySize {
		return nil, errors.New("ksclient: challenge: malformed nonce or server key")
	}
	return &Challenge{Nonce: m.GetNonce(), ExpiresAt: m.GetExpiresAt().AsTime(), ServerKey: m.GetServerKey()}, nil
}

// canonical folds ASCII upper case, as the server does, so proofs are
// made over the name the server will check.
func canonical(name string) string { return strings.ToLower(name) }

// Register creates account name with keys as its first device (device 1).
// sign must sign with the private half of keys.IdentityKey. inviteCode may
// be empty on servers with open registration.
func (c *Client) Register(ctx context.Context, name, inviteCode string, keys DeviceKeys, sign Signer) (*Session, error) {
	name = canonical(name)
	ch, err := c.Challenge(ctx)
	if err != nil {
		return nil, err
	}
	msg, err := ksapi.RegisterMessage(ch.ServerKey, ch.Nonce, name)
	if err != nil {
		return nil, fmt.Errorf("ksclient: register: %w", err)
	}
	sig, err := sign(msg)
	if err != nil {
		return nil, fmt.Errorf("ksclient: register: sign: %w", err)
	}
	in := &protocol.RegisterRequest{Name: name, InviteCode: inviteCode, Nonce: ch.Nonce, Device: keys.proto(), Signature: sig}
	var out protocol.TokenResponse
	if err := c.do(ctx, http.MethodPost, ksapi.PathAccounts, nil, nil, in, &out); err != nil {
		return nil, err
	}
	return fromSession(&out), nil
}

// Login obtains a fresh token for device of account by signing a challenge
// with the device's identity key.
func (c *Client) Login(ctx context.Context, account string, device uint32, sign Signer) (*Session, error) {
	account = canonical(account)
	ch, err := c.Challenge(ctx)
	if err != nil {
		return nil, err
	}
	msg, err := ksapi.LoginMessage(ch.ServerKey, ch.Nonce, account, device)
	if err != nil {
		return nil, fmt.Errorf("ksclient: login: %w", err)
	}
	sig, err := sign(msg)
	if err != nil {
		return nil, fmt.Errorf("ksclient: login: sign: %w", err)
	}
	in := &protocol.TokenRequest{Account: account, DeviceId: device, Nonce: ch.Nonce, Signature: sig}
	var out protocol.TokenResponse
	if err := c.do(ctx, http.MethodPost, ksapi.PathToken, nil, nil, in, &out); err != nil {
		return nil, err
	}
	return fromSession(&out), nil
}

// AddDevice adds a device with keys to account, authorised by token (of an
// existing device of that account). sign signs with the new device's
// identity key. The returned session is the new device's.
func (c *Client) AddDevice(ctx context.Context, token, account string, keys DeviceKeys, sign Signer) (*Session, error) {
	ch, err := c.Challenge(ctx)
	if err != nil {
		return nil, err
	}
	msg, err := ksapi.AddDeviceMessage(ch.ServerKey, ch.Nonce, canonical(account))
	if err != nil {
		return nil, fmt.Errorf("ksclient: add device: %w", err)
	}
	sig, err := sign(msg)
	if err != nil {
		return nil, fmt.Errorf("ksclient: add device: sign: %w", err)
	}
	in := &protocol.AddDeviceRequest{Nonce: ch.Nonce, Device: keys.proto(), Signature: sig}
	var out protocol.TokenResponse
	if err := c.do(ctx, http.MethodPost, ksapi.PathDevices, nil, bearer(token), in, &out); err != nil {
		return nil, err
	}
	return fromSession(&out), nil
}

// RemoveDevice removes device id from the token's account (possibly the
// token's own device). Its tokens stop working at once.
func (c *Client) RemoveDevice(ctx context.Context, token string, id uint32) error {
	return c.do(ctx, http.MethodDelete, ksapi.PathDevices+"/"+strconv.FormatUint(uint64(id), 10), nil, bearer(token), nil, nil)
}

// Devices lists the token's account's devices.
func (c *Client) Devices(ctx context.Context, token string) ([]Device, error) {
	var m protocol.DeviceList
	if err := c.do(ctx, http.MethodGet, ksapi.PathDevices, nil, bearer(token), nil, &m); err != nil {
		return nil, err
	}
	return fromDevices(&m), nil
}

// UploadPreKeys adds one-time prekeys (at most ksapi.MaxPreKeysPerRequest)
// to the token's device.
func (c *Client) UploadPreKeys(ctx context.Context, token string, keys []PreKey) (*KeyStatus, error) {
	var m protocol.KeyStatus
	in := &protocol.PreKeyUpload{OneTimePrekeys: toPreKeys(keys)}
	if err := c.do(ctx, http.MethodPost, ksapi.PathOneTimePreKeys, nil, bearer(token), in, &m); err != nil {
		return nil, err
	}
	return fromStatus(&m), nil
}

// RotateSignedPreKey replaces the token's device's signed prekey; the old
// one is listed as previous for the server's grace period.
func (c *Client) RotateSignedPreKey(ctx context.Context, token string, spk SignedPreKey) (*KeyStatus, error) {
	var m protocol.KeyStatus
	if err := c.do(ctx, http.MethodPut, ksapi.PathSignedPreKey, nil, bearer(token), toSigned(spk), &m); err != nil {
		return nil, err
	}
	return fromStatus(&m), nil
}

// SetLastResortPreKey replaces the token's device's last-resort prekey.
func (c *Client) SetLastResortPreKey(ctx context.Context, token string, pk PreKey) (*KeyStatus, error) {
	var m protocol.KeyStatus
	if err := c.do(ctx, http.MethodPut, ksapi.PathLastResort, nil, bearer(token), toPreKey(pk), &m); err != nil {
		return nil, err
	}
	return fromStatus(&m), nil
}

// KeyStatus reports the token's device's key state, including how many
// one-time prekeys are left.
func (c *Client) KeyStatus(ctx context.Context, token string) (*KeyStatus, error) {
	var m protocol.KeyStatus
	if err := c.do(ctx, http.MethodGet, ksapi.PathKeyStatus, nil, bearer(token), nil, &m); err != nil {
		return nil, err
	}
	return fromStatus(&m), nil
}

func accountPath(pattern, name string) string {
	return strings.Replace(pattern, "{name}", url.PathEscape(canonical(name)), 1)
}

// Bundles fetches a prekey bundle for every device of name, or for one
// device if device is not 0. Each call consumes one one-time prekey per
// device and counts against the (caller, name) rate limit.
func (c *Client) Bundles(ctx context.Context, token, name string, device uint32) ([]Bundle, error) {
	var q url.Values
	if device != 0 {
		q = url.Values{"device": {strconv.FormatUint(uint64(device), 10)}}
	}
	var m protocol.BundleResponse
	if err := c.do(ctx, http.MethodGet, accountPath(ksapi.PathBundles, name), q, bearer(token), nil, &m); err != nil {
		return nil, err
	}
	out := make([]Bundle, len(m.GetBundles()))
	for i, b := range m.GetBundles() {
		out[i] = Bundle{
			DeviceID:       b.GetDeviceId(),
			RegistrationID: b.GetRegistrationId(),
			IdentityKey:    b.GetIdentityKey(),
			SignedPreKey: SignedPreKey{
				ID: b.GetSignedPrekey().GetKeyId(), PublicKey: b.GetSignedPrekey().GetPublicKey(),
				Signature: b.GetSignedPrekey().GetSignature(),
			},
			PreKey:     PreKey{ID: b.GetPrekey().GetKeyId(), PublicKey: b.GetPrekey().GetPublicKey()},
			LastResort: b.GetLastResort(),
		}
	}
	return out, nil
}

// Identity fetches the identity keys of name's devices.
func (c *Client) Identity(ctx context.Context, token, name string) ([]DeviceIdentity, error) {
	var m protocol.AccountIdentity
	if err := c.do(ctx, http.MethodGet, accountPath(ksapi.PathIdentity, name), nil, bearer(token), nil, &m); err != nil {
		return nil, err
	}
	out := make([]DeviceIdentity, len(m.GetDevices()))
	for i, d := range m.GetDevices() {
		out[i] = DeviceIdentity{DeviceID: d.GetDeviceId(), RegistrationID: d.GetRegistrationId(), IdentityKey: d.GetIdentityKey()}
	}
	return out, nil
}

// InternalDevices lists name's devices through the internal endpoint,
// authenticated by the operator's shared secret (for a relay running in
// its own process).
func (c *Client) InternalDevices(ctx context.Context, secret, name string) ([]Device, error) {
	var m protocol.DeviceList
	h := http.Header{ksapi.InternalSecretHeader: {secret}}
	if err := c.do(ctx, http.MethodGet, accountPath(ksapi.PathInternalDevices, name), nil, h, nil, &m); err != nil {
		return nil, err
	}
	return fromDevices(&m), nil
}
