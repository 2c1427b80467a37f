package keyserver

import (
	"errors"
	"net/http"

	"github.com/hushchat/hush/crypto"
	"github.com/hushchat/hush/keyserver/ksapi"
	"github.com/hushchat/hush/keyserver/store"
	"github.com/hushchat/hush/protocol"
)

const (
	maxPreKeysPerRequest = ksapi.MaxPreKeysPerRequest
	maxInviteCodeLen     = ksapi.MaxInviteCodeLen
)

// The validators below turn wire messages into store values, refusing
// anything the store must never hold. They are pure (no I/O) so the fuzz
// targets can drive them with the decoders.

func checkPublicKey(field string, b []byte) error {
	if len(b) == 0 {
		return badRequest(ksapi.CodeMissingField, "%s is required", field)
	}
	if _, err := crypto.ParsePublicKey(b); err != nil {
		return badRequest(ksapi.CodeInvalidKey, "%s: must be %d bytes, 0x05 followed by an X25519 key", field, crypto.PublicKeySize)
	}
	return nil
}

func checkPreKeyID(field string, id uint32) error {
	if id < 1 || id > ksapi.MaxPreKeyID {
		return badRequest(ksapi.CodeInvalidPreKeyID, "%s: prekey id %d outside 1–%d", field, id, ksapi.MaxPreKeyID)
	}
	return nil
}

func preKey(field string, p *protocol.PreKey) (store.PreKey, error) {
	if p == nil {
		return store.PreKey{}, badRequest(ksapi.CodeMissingField, "%s is required", field)
	}
	if err := checkPreKeyID(field+".key_id", p.GetKeyId()); err != nil {
		return store.PreKey{}, err
	}
	if err := checkPublicKey(field+".public_key", p.GetPublicKey()); err != nil {
		return store.PreKey{}, err
	}
	return store.PreKey{ID: p.GetKeyId(), PublicKey: p.GetPublicKey()}, nil
}

// signedPreKey validates spk and verifies its signature by identityKey
// (already validated).
func signedPreKey(field string, spk *protocol.SignedPreKey, identityKey []byte) (store.SignedPreKey, error) {
	if spk == nil {
		return store.SignedPreKey{}, badRequest(ksapi.CodeMissingField, "%s is required", field)
	}
	if err := checkPreKeyID(field+".key_id", spk.GetKeyId()); err != nil {
		return store.SignedPreKey{}, err
	}
	if err := checkPublicKey(field+".public_key", spk.GetPublicKey()); err != nil {
		return store.SignedPreKey{}, err
	}
	if len(spk.GetSignature()) == 0 {
		return store.SignedPreKey{}, badRequest(ksapi.CodeMissingField, "%s.signature is required", field)
	}
	if err := crypto.VerifySignature(identityKey, spk.GetPublicKey(), spk.GetSignature()); err != nil {
		if errors.Is(err, crypto.ErrSignatureSize) {
			return store.SignedPreKey{}, badRequest(ksapi.CodeBadSignature, "%s.signature must be %d bytes", field, crypto.SignatureSize)
		}
		return store.SignedPreKey{}, badRequest(ksapi.CodeBadSignature, "%s.signature does not verify with the identity key", field)
	}
	return store.SignedPreKey{ID: spk.GetKeyId(), PublicKey: spk.GetPublicKey(), Signature: spk.GetSignature()}, nil
}

// oneTimePreKeys validates a batch: at most MaxPreKeysPerRequest, ids
// distinct from each other and from also (a last-resort id in the same
// request, 0 for none).
func oneTimePreKeys(field string, in []*protocol.PreKey, also uint32) ([]store.PreKey, error) {
	if len(in) > maxPreKeysPerRequest {
		return nil, badRequest(ksapi.CodeTooManyPreKeys, "%s: %d prekeys, at most %d per request", field, len(in), maxPreKeysPerRequest)
	}
	out := make([]store.PreKey, 0, len(in))
	seen := make(map[uint32]bool, len(in)+1)
	if also != 0 {
		seen[also] = true
	}
	for _, p := range in {
		k, err := preKey(field+"[]", p)
		if err != nil {
			return nil, err
		}
		if seen[k.ID] {
			return nil, badRequest(ksapi.CodeDuplicatePreKeyID, "%s: prekey id %d appears twice", field, k.ID)
		}
		seen[k.ID] = true
		out = append(out, k)
	}
	return out, nil
}

// deviceKeys validates everything a joining device publishes, including
// the signed-prekey signature.
func deviceKeys(d *protocol.DeviceKeys) (store.DeviceKeys, error) {
	if d == nil {
		return store.DeviceKeys{}, badRequest(ksapi.CodeMissingField, "device is required")
	}
	if err := checkPublicKey("device.identity_key", d.GetIdentityKey()); err != nil {
		return store.DeviceKeys{}, err
	}
	if id := d.GetRegistrationId(); id < crypto.MinRegistrationID || id > crypto.MaxRegistrationID {
		return store.DeviceKeys{}, badRequest(ksapi.CodeInvalidRegistrationID, "device.registration_id %d outside %d–%d",
			id, crypto.MinRegistrationID, crypto.MaxRegistrationID)
	}
	lr, err := preKey("device.last_resort_prekey", d.GetLastResortPrekey())
	if err != nil {
		return store.DeviceKeys{}, err
	}
	otks, err := oneTimePreKeys("device.one_time_prekeys", d.GetOneTimePrekeys(), lr.ID)
	if err != nil {
		return store.DeviceKeys{}, err
	}
	spk, err := signedPreKey("device.signed_prekey", d.GetSignedPrekey(), d.GetIdentityKey())
	if err != nil {
		return store.DeviceKeys{}, err
	}
	return store.DeviceKeys{
		IdentityKey:    d.GetIdentityKey(),
		RegistrationID: d.GetRegistrationId(),
		SignedPreKey:   spk,
		OneTime:        otks,
		LastResort:     lr,
	}, nil
}

func checkNonce(n []byte) error {
	if len(n) == 0 {
		return badRequest(ksapi.CodeMissingField, "nonce is required (POST %s)", ksapi.PathChallenge)
	}
	if len(n) != ksapi.NonceSize {
		return badRequest(ksapi.CodeInvalidNonce, "nonce must be %d bytes, got %d", ksapi.NonceSize, len(n))
	}
	return nil
}

func checkProofSignature(sig []byte) error {
	if len(sig) == 0 {
		return badRequest(ksapi.CodeMissingField, "signature is required")
	}
	if len(sig) != crypto.SignatureSize {
		return badRequest(ksapi.CodeBadSignature, "signature must be %d bytes, got %d", crypto.SignatureSize, len(sig))
	}
	return nil
}

func accountName(field, name string) (string, error) {
	if name == "" {
		return "", badRequest(ksapi.CodeMissingField, "%s is required", field)
	}
	n, err := protocol.NormalizeAccountName(name)
	if err != nil {
		return "", badRequest(ksapi.CodeInvalidName, "%s: %v", field, err)
	}
	return n, nil
}

func checkDeviceID(field string, id uint32) error {
	if id < crypto.MinDeviceID || id > crypto.MaxDeviceID {
		return badRequest(ksapi.CodeInvalidDeviceID, "%s %d outside %d–%d", field, id, crypto.MinDeviceID, crypto.MaxDeviceID)
	}
	return nil
}

// Validated requests: decode + validate, shared by the handlers and the
// fuzz targets.

type registerReq struct {
	name, invite string
	nonce, sig   []byte
	keys         store.DeviceKeys
}

func parseRegister(m *protocol.RegisterRequest) (registerReq, error) {
	name, err := accountName("name", m.GetName())
	if err != nil {
		return registerReq{}, err
	}
	if len(m.GetInviteCode()) > maxInviteCodeLen {
		return registerReq{}, errf(http.StatusForbidden, ksapi.CodeInviteRequired, "invite code is not valid")
	}
	if err := checkNonce(m.GetNonce()); err != nil {
		return registerReq{}, err
	}
	if err := checkProofSignature(m.GetSignature()); err != nil {
		return registerReq{}, err
	}
	keys, err := deviceKeys(m.GetDevice())
	if err != nil {
		return registerReq{}, err
	}
	return registerReq{name: name, invite: m.GetInviteCode(), nonce: m.GetNonce(), sig: m.GetSignature(), keys: keys}, nil
}

type addDeviceReq struct {
	nonce, sig []byte
	keys       store.DeviceKeys
}

func parseAddDevice(m *protocol.AddDeviceRequest) (addDeviceReq, error) {
	if err := checkNonce(m.GetNonce()); err != nil {
		return addDeviceReq{}, err
	}
	if err := checkProofSignature(m.GetSignature()); err != nil {
		return addDeviceReq{}, err
	}
	keys, err := deviceKeys(m.GetDevice())
	if err != nil {
		return addDeviceReq{}, err
	}
	return addDeviceReq{nonce: m.GetNonce(), sig: m.GetSignature(), keys: keys}, nil
}

type loginReq struct {
	account    string
	device     uint32
	nonce, sig []byte
}

func parseLogin(m *protocol.TokenRequest) (loginReq, error) {
	name, err := accountName("account", m.GetAccount())
	if err != nil {
		return loginReq{}, err
	}
	if err := checkDeviceID("device_id", m.GetDeviceId()); err != nil {
		return loginReq{}, err
	}
	if err := checkNonce(m.GetNonce()); err != nil {
		return loginReq{}, err
	}
	if err := checkProofSignature(m.GetSignature()); err != nil {
		return loginReq{}, err
	}
	return loginReq{account: name, device: m.GetDeviceId(), nonce: m.GetNonce(), sig: m.GetSignature()}, nil
}
