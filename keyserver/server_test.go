package keyserver_test

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"io"
	"net/http"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/protobuf/proto"

	"github.com/hushchat/hush/keyserver"
	"github.com/hushchat/hush/keyserver/ksapi"
	"github.com/hushchat/hush/keyserver/ksclient"
	"github.com/hushchat/hush/keyserver/ratelimit"
	"github.com/hushchat/hush/keyserver/store/sqlite"
	"github.com/hushchat/hush/keyserver/store/storetest"
	"github.com/hushchat/hush/protocol"
)

func openSQLite(t testing.TB) *sqlite.Store {
	t.Helper()
	st, err := sqlite.Open(context.Background(), filepath.Join(t.TempDir(), "keys.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	return st
}

func newEnv(t *testing.T, configure func(*keyserver.Config)) *storetest.Env {
	t.Helper()
	return storetest.NewEnv(t, openSQLite(t), configure)
}

type answer struct {
	status int
	header http.Header
	body   []byte
	err    *protocol.KeyServerError
}

// call sends a raw request and checks the invariants of every answer: JSON,
// never a 500, and for errors a code and a message.
func call(t *testing.T, e *storetest.Env, method, path string, body io.Reader, hdr ...string) answer {
	t.Helper()
	req, err := http.NewRequest(method, e.URL+path, body)
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; i+1 < len(hdr); i += 2 {
		req.Header.Set(hdr[i], hdr[i+1])
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	a := answer{status: resp.StatusCode, header: resp.Header, err: new(protocol.KeyServerError)}
	a.body, _ = io.ReadAll(resp.Body)
	if a.status >= 500 {
		t.Fatalf("%s %s: %d %s", method, path, a.status, a.body)
	}
	if a.status == http.StatusNoContent {
		return a
	}
	if ct := resp.Header.Get("Content-Type"); ct != "application/json" {
		t.Fatalf("%s %s: Content-Type %q", method, path, ct)
	}
	if a.status >= 400 {
		if err := ksapi.Unmarshal(a.body, a.err); err != nil || a.err.Code == "" || a.err.Message == "" {
			t.Fatalf("%s %s: error body %s is not a key server error (%v)", method, path, a.body, err)
		}
	}
	return a
}

func (a answer) want(t *testing.T, what string, status int, code string) answer {
	t.Helper()
	if a.status != status || a.err.GetCode() != code {
		t.Fatalf("%s: %d %s, want %d %s (body %s)", what, a.status, a.err.GetCode(), status, code, a.body)
	}
	return a
}

func jsonBody(t *testing.T, m proto.Message) io.Reader {
	t.Helper()
	b, err := ksapi.Marshal(m)
	if err != nil {
		t.Fatal(err)
	}
	return bytes.NewReader(b)
}

func challenge(t *testing.T, e *storetest.Env) *ksclient.Challenge {
	t.Helper()
	ch, err := e.Client.Challenge(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	return ch
}

// registerRequest builds a valid registration of name by d.
func registerRequest(t *testing.T, e *storetest.Env, name string, d *storetest.TestDevice) *protocol.RegisterRequest {
	t.Helper()
	ch := challenge(t, e)
	msg, err := ksapi.RegisterMessage(ch.ServerKey, ch.Nonce, name)
	if err != nil {
		t.Fatal(err)
	}
	sig, _ := d.Sign(msg)
	k := d.Keys
	m := &protocol.RegisterRequest{
		Name:  name,
		Nonce: ch.Nonce,
		Device: &protocol.DeviceKeys{
			IdentityKey:    k.IdentityKey,
			RegistrationId: k.RegistrationID,
			SignedPrekey: &protocol.SignedPreKey{
				KeyId: k.SignedPreKey.ID, PublicKey: k.SignedPreKey.PublicKey, Signature: k.SignedPreKey.Signature,
			},
			LastResortPrekey: &protocol.PreKey{KeyId: k.LastResort.ID, PublicKey: k.LastResort.PublicKey},
		},
		Signature: sig,
	}
	for _, p := range k.OneTime {
		m.Device.OneTimePrekeys = append(m.Device.OneTimePrekeys, &protocol.PreKey{KeyId: p.ID, PublicKey: p.PublicKey})
	}
	return m
}

func TestRequestShapeErrors(t *testing.T) {
	e := newEnv(t, nil)
	json := []string{"Content-Type", "application/json"}
	for _, tc := range []struct {
		name, body string
		code       string
	}{
		{"empty body", "", ksapi.CodeMalformedJSON},
		{"not JSON", "name=alice", ksapi.CodeMalformedJSON},
		{"truncated", `{"name": "alice"`, ksapi.CodeMalformedJSON},
		{"trailing garbage", `{"name": "alice"} x`, ksapi.CodeMalformedJSON},
		{"unknown field", `{"name": "alice", "admin": true}`, ksapi.CodeUnknownField},
		{"unknown nested field", `{"device": {"identity_key": "", "evil": 1}}`, ksapi.CodeUnknownField},
		{"wrong type: number for string", `{"name": 5}`, ksapi.CodeInvalidField},
		{"wrong type: string for number", `{"device": {"registration_id": "many"}}`, ksapi.CodeInvalidField},
		{"wrong type: array for object", `{"device": []}`, ksapi.CodeInvalidField},
		{"bytes not base64", `{"nonce": "@@@"}`, ksapi.CodeInvalidField},
		{"negative uint", `{"device": {"registration_id": -1}}`, ksapi.CodeInvalidField},
		{"duplicate field", `{"name": "a", "name": "b"}`, ksapi.CodeInvalidField},
		{"top-level array", `[]`, ksapi.CodeInvalidField},
	} {
		call(t, e, "POST", ksapi.PathAccounts, strings.NewReader(tc.body), json...).want(t, tc.name, 400, tc.code)
	}
	call(t, e, "POST", ksapi.PathAccounts, strings.NewReader(`{}`), "Content-Type", "text/plain").
		want(t, "wrong content type", 415, ksapi.CodeUnsupportedMediaType)
	// Oversized, announced by Content-Length and not (chunked).
	big := `{"name": "` + strings.Repeat("a", ksapi.MaxBodySize) + `"}`
	call(t, e, "POST", ksapi.PathAccounts, strings.NewReader(big), json...).want(t, "oversized body", 413, ksapi.CodeBodyTooLarge)
	call(t, e, "POST", ksapi.PathAccounts, io.MultiReader(strings.NewReader(big)), json...).want(t, "oversized chunked body", 413, ksapi.CodeBodyTooLarge)
	tok := e.Register(t, storetest.Name(t), storetest.NewDevice(t, 1, 0)).Token
	small := `{"key_id": 1, "public_key": "` + strings.Repeat("A", ksapi.SmallBodySize) + `"}`
	call(t, e, "PUT", ksapi.PathLastResort, strings.NewReader(small), "Authorization", "Bearer "+tok).
		want(t, "oversized small body", 413, ksapi.CodeBodyTooLarge)
	call(t, e, "GET", "/v1/nope", nil).want(t, "unknown route", 404, ksapi.CodeNotFound)
	a := call(t, e, "DELETE", ksapi.PathAccounts, nil).want(t, "wrong method", 405, ksapi.CodeMethodNotAllowed)
	if a.header.Get("Allow") != "POST" {
		t.Fatalf("Allow = %q", a.header.Get("Allow"))
	}
}

func TestAuthErrors(t *testing.T) {
	e := newEnv(t, nil)
	s := e.Register(t, storetest.Name(t), storetest.NewDevice(t, 1, 0))
	a := call(t, e, "GET", ksapi.PathKeyStatus, nil).want(t, "no token", 401, ksapi.CodeAuthRequired)
	if !strings.HasPrefix(a.header.Get("WWW-Authenticate"), "Bearer") {
		t.Fatalf("WWW-Authenticate = %q", a.header.Get("WWW-Authenticate"))
	}
	call(t, e, "GET", ksapi.PathKeyStatus, nil, "Authorization", "Basic "+s.Token).want(t, "wrong scheme", 401, ksapi.CodeInvalidToken)
	call(t, e, "GET", ksapi.PathKeyStatus, nil, "Authorization", "Bearer").want(t, "empty bearer", 401, ksapi.CodeInvalidToken)
	call(t, e, "GET", ksapi.PathKeyStatus, nil, "Authorization", "Bearer x.y.z").want(t, "garbage token", 401, ksapi.CodeInvalidToken)
	call(t, e, "GET", ksapi.PathKeyStatus, nil, "Authorization", "bearer "+s.Token).want(t, "lower-case scheme", 200, "")
	// Every authenticated route refuses a missing token before anything else.
	for _, r := range [][2]string{
		{"GET", ksapi.PathDevices}, {"POST", ksapi.PathDevices}, {"DELETE", "/v1/devices/1"},
		{"POST", ksapi.PathOneTimePreKeys}, {"PUT", ksapi.PathSignedPreKey}, {"PUT", ksapi.PathLastResort},
		{"GET", ksapi.PathKeyStatus}, {"GET", "/v1/accounts/alice/bundles"}, {"GET", "/v1/accounts/alice/identity"},
	} {
		call(t, e, r[0], r[1], strings.NewReader("{}")).want(t, r[0]+" "+r[1], 401, ksapi.CodeAuthRequired)
	}
	auth := []string{"Authorization", "Bearer " + s.Token}
	call(t, e, "GET", "/v1/accounts/A!/bundles", nil, auth...).want(t, "bad name in path", 400, ksapi.CodeInvalidName)
	call(t, e, "GET", "/v1/accounts/ab/identity", nil, auth...).want(t, "short name in path", 400, ksapi.CodeInvalidName)
	call(t, e, "GET", "/v1/accounts/"+s.Account+"/bundles?device=x", nil, auth...).want(t, "bad device query", 400, ksapi.CodeInvalidDeviceID)
	call(t, e, "GET", "/v1/accounts/"+s.Account+"/bundles?device=128", nil, auth...).want(t, "device 128", 400, ksapi.CodeInvalidDeviceID)
	call(t, e, "DELETE", "/v1/devices/0", nil, auth...).want(t, "device 0", 400, ksapi.CodeInvalidDeviceID)
	call(t, e, "DELETE", "/v1/devices/abc", nil, auth...).want(t, "device abc", 400, ksapi.CodeInvalidDeviceID)
	call(t, e, "POST", ksapi.PathOneTimePreKeys, strings.NewReader(`{"one_time_prekeys": []}`), auth...).
		want(t, "empty upload", 400, ksapi.CodeMissingField)
	call(t, e, "POST", ksapi.PathToken, strings.NewReader(`{"account": "`+s.Account+`", "device_id": 1}`)).
		want(t, "login without nonce", 400, ksapi.CodeMissingField)
	call(t, e, "POST", ksapi.PathToken, strings.NewReader(`{"account": "`+s.Account+`", "device_id": 0}`)).
		want(t, "login as device 0", 400, ksapi.CodeInvalidDeviceID)
}

func TestRegistrationValidation(t *testing.T) {
	e := newEnv(t, nil)
	d := storetest.NewDevice(t, 1, 3)
	key32 := d.Keys.IdentityKey[1:]
	wrongType := append([]byte{0x06}, key32...)
	for _, tc := range []struct {
		name   string
		mutate func(m *protocol.RegisterRequest)
		status int
		code   string
	}{
		{"name too short", func(m *protocol.RegisterRequest) { m.Name = "ab" }, 400, ksapi.CodeInvalidName},
		{"name too long", func(m *protocol.RegisterRequest) { m.Name = strings.Repeat("a", 33) }, 400, ksapi.CodeInvalidName},
		{"name with space", func(m *protocol.RegisterRequest) { m.Name = "al ice" }, 400, ksapi.CodeInvalidName},
		{"name non-ASCII", func(m *protocol.RegisterRequest) { m.Name = "ålice" }, 400, ksapi.CodeInvalidName},
		{"no name", func(m *protocol.RegisterRequest) { m.Name = "" }, 400, ksapi.CodeMissingField},
		{"no device", func(m *protocol.RegisterRequest) { m.Device = nil }, 400, ksapi.CodeMissingField},
		{"no identity key", func(m *protocol.RegisterRequest) { m.Device.IdentityKey = nil }, 400, ksapi.CodeMissingField},
		{"identity key 32 bytes", func(m *protocol.RegisterRequest) { m.Device.IdentityKey = key32 }, 400, ksapi.CodeInvalidKey},
		{"identity key type", func(m *protocol.RegisterRequest) { m.Device.IdentityKey = wrongType }, 400, ksapi.CodeInvalidKey},
		{"registration id 0", func(m *protocol.RegisterRequest) { m.Device.RegistrationId = 0 }, 400, ksapi.CodeInvalidRegistrationID},
		{"registration id 16381", func(m *protocol.RegisterRequest) { m.Device.RegistrationId = 16381 }, 400, ksapi.CodeInvalidRegistrationID},
		{"no signed prekey", func(m *protocol.RegisterRequest) { m.Device.SignedPrekey = nil }, 400, ksapi.CodeMissingField},
		{"signed prekey id 0", func(m *protocol.RegisterRequest) { m.Device.SignedPrekey.KeyId = 0 }, 400, ksapi.CodeInvalidPreKeyID},
		{"signed prekey id 2^24", func(m *protocol.RegisterRequest) { m.Device.SignedPrekey.KeyId = 1 << 24 }, 400, ksapi.CodeInvalidPreKeyID},
		{"signed prekey bad key", func(m *protocol.RegisterRequest) { m.Device.SignedPrekey.PublicKey = key32 }, 400, ksapi.CodeInvalidKey},
		{"signed prekey no signature", func(m *protocol.RegisterRequest) { m.Device.SignedPrekey.Signature = nil }, 400, ksapi.CodeMissingField},
		{"signed prekey short signature", func(m *protocol.RegisterRequest) { m.Device.SignedPrekey.Signature = make([]byte, 63) }, 400, ksapi.CodeBadSignature},
		{"no last resort", func(m *protocol.RegisterRequest) { m.Device.LastResortPrekey = nil }, 400, ksapi.CodeMissingField},
		{"one-time id 0", func(m *protocol.RegisterRequest) { m.Device.OneTimePrekeys[1].KeyId = 0 }, 400, ksapi.CodeInvalidPreKeyID},
		{"one-time bad key", func(m *protocol.RegisterRequest) { m.Device.OneTimePrekeys[0].PublicKey = wrongType }, 400, ksapi.CodeInvalidKey},
		{"one-time duplicate id", func(m *protocol.RegisterRequest) { m.Device.OneTimePrekeys[2].KeyId = m.Device.OneTimePrekeys[0].KeyId }, 400, ksapi.CodeDuplicatePreKeyID},
		{"one-time id = last resort id", func(m *protocol.RegisterRequest) { m.Device.OneTimePrekeys[0].KeyId = m.Device.LastResortPrekey.KeyId }, 400, ksapi.CodeDuplicatePreKeyID},
		{"101 one-time keys", func(m *protocol.RegisterRequest) {
			for i := range 98 {
				m.Device.OneTimePrekeys = append(m.Device.OneTimePrekeys, &protocol.PreKey{KeyId: uint32(100 + i), PublicKey: d.Keys.IdentityKey})
			}
		}, 400, ksapi.CodeTooManyPreKeys},
		{"no nonce", func(m *protocol.RegisterRequest) { m.Nonce = nil }, 400, ksapi.CodeMissingField},
		{"short nonce", func(m *protocol.RegisterRequest) { m.Nonce = m.Nonce[:16] }, 400, ksapi.CodeInvalidNonce},
		{"no proof", func(m *protocol.RegisterRequest) { m.Signature = nil }, 400, ksapi.CodeMissingField},
		{"short proof", func(m *protocol.RegisterRequest) { m.Signature = m.Signature[:10] }, 400, ksapi.CodeBadSignature},
		{"unknown nonce", func(m *protocol.RegisterRequest) { m.Nonce = bytes.Repeat([]byte{7}, 32) }, 401, ksapi.CodeChallengeInvalid},
		{"proof over another name", func(m *protocol.RegisterRequest) { m.Name = "zzz" + m.Name[3:] }, 401, ksapi.CodeBadProof},
	} {
		name := storetest.Name(t)
		m := registerRequest(t, e, name, d)
		tc.mutate(m)
		call(t, e, "POST", ksapi.PathAccounts, jsonBody(t, m)).want(t, tc.name, tc.status, tc.code)
		if _, err := e.Store.Devices(context.Background(), name); err == nil {
			t.Fatalf("%s: refused registration stored the account", tc.name)
		}
	}
	// A nonce is single use, even when the first use failed its proof.
	name := storetest.Name(t)
	m := registerRequest(t, e, name, d)
	good := proto.Clone(m).(*protocol.RegisterRequest)
	m.Signature[0] ^= 1
	call(t, e, "POST", ksapi.PathAccounts, jsonBody(t, m)).want(t, "bad proof", 401, ksapi.CodeBadProof)
	call(t, e, "POST", ksapi.PathAccounts, jsonBody(t, good)).want(t, "reused nonce", 401, ksapi.CodeChallengeInvalid)
	good = registerRequest(t, e, name, d)
	call(t, e, "POST", ksapi.PathAccounts, jsonBody(t, good)).want(t, "fresh nonce", 201, "")
	call(t, e, "POST", ksapi.PathAccounts, jsonBody(t, good)).want(t, "replayed registration", 401, ksapi.CodeChallengeInvalid)
	// A nonce expires.
	late := registerRequest(t, e, storetest.Name(t), d)
	e.Clock.Advance(keyserver.DefaultChallengeTTL)
	call(t, e, "POST", ksapi.PathAccounts, jsonBody(t, late)).want(t, "expired nonce", 401, ksapi.CodeChallengeInvalid)
}

func TestInviteCode(t *testing.T) {
	e := newEnv(t, func(c *keyserver.Config) { c.InviteCode = "open sesame" })
	d := storetest.NewDevice(t, 1, 0)
	for _, code := range []string{"", "open", "open sesame!"} {
		_, err := e.Client.Register(context.Background(), storetest.Name(t), code, d.Client(), d.Sign)
		storetest.WantCode(t, "invite "+code, err, 403, ksapi.CodeInviteRequired)
	}
	if _, err := e.Client.Register(context.Background(), storetest.Name(t), "open sesame", d.Client(), d.Sign); err != nil {
		t.Fatalf("right invite code: %v", err)
	}
}

func TestAnonymousRateLimit(t *testing.T) {
	e := newEnv(t, func(c *keyserver.Config) { c.AnonRate = ratelimit.Rate{Burst: 2, Per: time.Minute} })
	for range 2 {
		call(t, e, "POST", ksapi.PathChallenge, nil).want(t, "challenge", 200, "")
	}
	a := call(t, e, "POST", ksapi.PathChallenge, nil).want(t, "third challenge", 429, ksapi.CodeRateLimited)
	if a.header.Get("Retry-After") != "30" || a.err.RetryAfterSeconds != 30 {
		t.Fatalf("Retry-After %q / %d, want 30", a.header.Get("Retry-After"), a.err.RetryAfterSeconds)
	}
	e.Clock.Advance(30 * time.Second)
	call(t, e, "POST", ksapi.PathChallenge, nil).want(t, "after Retry-After", 200, "")
}

func TestInternalDisabled(t *testing.T) {
	e := newEnv(t, func(c *keyserver.Config) { c.InternalSecret = "" })
	call(t, e, "GET", "/v1/internal/accounts/alice/devices", nil, ksapi.InternalSecretHeader, "").
		want(t, "internal API without a secret configured", 404, ksapi.CodeNotFound)
}

func TestResponsesAreJSONWithSnakeCase(t *testing.T) {
	e := newEnv(t, nil)
	a := call(t, e, "GET", ksapi.PathServerKey, nil)
	var m map[string]any
	if err := json.Unmarshal(a.body, &m); err != nil {
		t.Fatal(err)
	}
	key, _ := base64.StdEncoding.DecodeString(m["public_key"].(string))
	if m["algorithm"] != "ed25519" || !bytes.Equal(key, e.Server.PublicKey()) {
		t.Fatalf("server key body %s", a.body)
	}
	if a.header.Get("Cache-Control") != "no-store" {
		t.Fatalf("Cache-Control = %q", a.header.Get("Cache-Control"))
	}
}

func TestMetrics(t *testing.T) {
	reg := prometheus.NewRegistry()
	e := newEnv(t, func(c *keyserver.Config) {
		c.Registerer = reg
		c.BundleRate = ratelimit.Rate{Burst: 1, Per: time.Hour}
		c.LowPreKeys = 5
	})
	alice := e.Register(t, storetest.Name(t), storetest.NewDevice(t, 1, 2))
	bob := e.Register(t, storetest.Name(t), storetest.NewDevice(t, 1, 0))
	ctx := context.Background()
	e.Client.Bundles(ctx, bob.Token, alice.Account, 0)
	e.Client.Bundles(ctx, bob.Token, alice.Account, 0) // rate limited
	e.Client.Bundles(ctx, alice.Token, bob.Account, 0) // last resort
	fams, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]float64{}
	for _, f := range fams {
		for _, m := range f.GetMetric() {
			key := f.GetName()
			for _, l := range m.GetLabel() {
				key += "," + l.GetName() + "=" + l.GetValue()
			}
			if c := m.GetCounter(); c != nil {
				got[key] = c.GetValue()
			}
		}
	}
	for k, want := range map[string]float64{
		"hush_keyserver_prekey_claims_total,kind=one_time":                           1,
		"hush_keyserver_prekey_claims_total,kind=last_resort":                        1,
		"hush_keyserver_prekeys_low_total":                                           2,
		"hush_keyserver_rate_limited_total,limit=bundle":                             1,
		"hush_keyserver_requests_total,route=/v1/accounts/{name}/bundles,status=429": 1,
		"hush_keyserver_requests_total,route=/v1/accounts,status=201":                2,
	} {
		if got[k] != want {
			t.Errorf("%s = %v, want %v", k, got[k], want)
		}
	}
}
