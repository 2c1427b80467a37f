// Package ksapi is the contract between the key server and its clients:
// routes, limits, error codes, the JSON codec and the exact bytes a device
// signs to prove it holds an identity key. Both keyserver (the server) and
// keyserver/ksclient import it, so the two can never disagree on any of
// these; it imports nothing heavier than protocol and protojson.
//
// # Proofs of possession
//
// Signal's server verifies the signed-prekey signature on every upload, but
// it never needs a separate proof that the uploader holds the identity key:
// an account there is bound to a phone number verified out of band. hush has
// no phone number — the first device to claim a name owns it — so a
// registration must itself prove that the registrant holds the private half
// of the identity key it publishes. The signed-prekey signature alone does
// not: it is public (every bundle carries it), so anyone could copy Alice's
// identity key, signed prekey and signature into a registration for
// "alice2" and make a second account that shows Alice's identity. hush
// therefore asks for a second XEdDSA signature by the identity key, over
//
//	domain ‖ server key (32) ‖ nonce (32) ‖ len(name) (1) ‖ name [‖ device id (1)]
//
// where domain separates registration, add-device and login, server key is
// the key server's Ed25519 public key (a proof made for one key server is
// worthless at another), and nonce is a fresh single-use challenge from
// POST /v1/auth/challenge (so a recorded proof cannot be replayed). The
// name is the canonical lower-case form.
package ksapi

import (
	"crypto/ed25519"
	"fmt"

	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
)

// Routes of the key server HTTP API. Paths with {name} or {id} take an
// account name or a device id in that segment.
const (
	PathServerKey       = "/v1/server-key"
	PathChallenge       = "/v1/auth/challenge"
	PathToken           = "/v1/auth/token"
	PathAccounts        = "/v1/accounts"
	PathDevices         = "/v1/devices"
	PathDevice          = "/v1/devices/{id}"
	PathOneTimePreKeys  = "/v1/keys/one-time"
	PathSignedPreKey    = "/v1/keys/signed"
	PathLastResort      = "/v1/keys/last-resort"
	PathKeyStatus       = "/v1/keys/status"
	PathBundles         = "/v1/accounts/{name}/bundles"
	PathIdentity        = "/v1/accounts/{name}/identity"
	PathInternalDevices = "/v1/internal/accounts/{name}/devices"
)

// InternalSecretHeader carries the operator's shared secret on
// /v1/internal/… requests.
const InternalSecretHeader = "X-Hush-Internal-Secret"

// Limits enforced by the key server. Each one exceeded has its own error
// code.
const (
	// MaxPreKeysPerRequest bounds the one-time prekeys in one registration,
	// add-device or upload request.
	MaxPreKeysPerRequest = 100
	// MaxPreKeyID is the largest prekey id: libsignal's ids are 24-bit
	// "Medium" values (crypto gives the top one, 0xFFFFFF, to the
	// last-resort key). 0 is never valid: libsignal reads it as "none".
	MaxPreKeyID = 0xFFFFFF
	// NonceSize is the size of a challenge nonce.
	NonceSize = 32
	// MaxBodySize bounds a request body that carries prekeys; SmallBodySize
	// bounds every other request body.
	MaxBodySize   = 64 << 10
	SmallBodySize = 4 << 10
	// MaxResponseSize bounds a response body a client will read.
	MaxResponseSize = 1 << 20
	// MaxInviteCodeLen bounds an invite code.
	MaxInviteCodeLen = 256
)

// Error codes: the "code" field of every error body. They are stable; the
// message next to them is for humans and may change.
const (
	// Request shape (400 unless noted).
	CodeMalformedJSON        = "malformed_json"         // body is not JSON
	CodeUnknownField         = "unknown_field"          // a field the message does not have
	CodeInvalidField         = "invalid_field"          // a field of the wrong type or encoding
	CodeBodyTooLarge         = "body_too_large"         // 413
	CodeUnsupportedMediaType = "unsupported_media_type" // 415: Content-Type is not application/json
	CodeMissingField         = "missing_field"          // a required field is absent or empty
	CodeNotFound             = "not_found"              // 404: no such route
	CodeMethodNotAllowed     = "method_not_allowed"     // 405

	// Field values (400).
	CodeInvalidName           = "invalid_name"
	CodeInvalidKey            = "invalid_key"             // a public key is not 33 bytes 0x05‖X25519
	CodeInvalidRegistrationID = "invalid_registration_id" // outside 1–16380
	CodeInvalidPreKeyID       = "invalid_prekey_id"       // 0 or above MaxPreKeyID
	CodeInvalidDeviceID       = "invalid_device_id"       // outside 1–127
	CodeDuplicatePreKeyID     = "duplicate_prekey_id"     // the same id twice in one request
	CodeTooManyPreKeys        = "too_many_prekeys"        // more than MaxPreKeysPerRequest
	CodeBadSignature          = "bad_signature"           // signed prekey signature does not verify
	CodeInvalidNonce          = "invalid_nonce"           // not NonceSize bytes

	// Authentication and authorisation.
	CodeAuthRequired     = "auth_required"      // 401: no bearer token
	CodeInvalidToken     = "invalid_token"      // 401: malformed or not signed by this key server
	CodeTokenExpired     = "token_expired"      // 401
	CodeDeviceRevoked    = "device_revoked"     // 401: the token's device was removed
	CodeChallengeInvalid = "challenge_invalid"  // 401: nonce unknown, used or expired
	CodeBadProof         = "bad_proof"          // 401: the identity-key proof does not verify
	CodeInviteRequired   = "invite_required"    // 403: registration needs a valid invite code
	CodeInternalAuth     = "internal_forbidden" // 403: wrong or missing internal secret

	// State (404 / 409).
	CodeAccountNotFound = "account_not_found" // 404
	CodeDeviceNotFound  = "device_not_found"  // 404
	CodeNameTaken       = "name_taken"        // 409
	CodeDeviceLimit     = "device_limit"      // 409: device ids 1–127 are used up
	CodeLastDevice      = "last_device"       // 409: an account keeps at least one device
	CodePreKeyExists    = "prekey_exists"     // 409: an uploaded id is already stored
	CodePreKeyLimit     = "prekey_limit"      // 409: the device would hold too many one-time prekeys
	CodeSignedPreKeyID  = "signed_prekey_id_in_use"

	// Throttling and server side.
	CodeRateLimited = "rate_limited" // 429, with Retry-After
	CodeUnavailable = "unavailable"  // 503: the store failed; retry later
	CodeInternal    = "internal"     // 500: a bug
)

var (
	marshal   = protojson.MarshalOptions{UseProtoNames: true, EmitUnpopulated: true}
	unmarshal = protojson.UnmarshalOptions{DiscardUnknown: false, RecursionLimit: 8}
	// Clients ignore unknown response fields, so a newer server can add
	// fields without breaking older clients.
	unmarshalResponse = protojson.UnmarshalOptions{DiscardUnknown: true, RecursionLimit: 8}
)

// Marshal encodes m as the API's JSON.
func Marshal(m proto.Message) ([]byte, error) { return marshal.Marshal(m) }

// Unmarshal decodes the API's JSON into m, refusing unknown fields. The
// caller bounds len(b).
func Unmarshal(b []byte, m proto.Message) error { return unmarshal.Unmarshal(b, m) }

// UnmarshalResponse decodes a response body into m, ignoring unknown
// fields. The caller bounds len(b).
func UnmarshalResponse(b []byte, m proto.Message) error { return unmarshalResponse.Unmarshal(b, m) }

const (
	domainRegister  = "hush-keyserver-register-v1\x00"
	domainAddDevice = "hush-keyserver-add-device-v1\x00"
	domainLogin     = "hush-keyserver-login-v1\x00"
)

func proofMessage(domain string, serverKey ed25519.PublicKey, nonce []byte, name string) ([]byte, error) {
	if len(serverKey) != ed25519.PublicKeySize {
		return nil, fmt.Errorf("server key must be %d bytes, got %d", ed25519.PublicKeySize, len(serverKey))
	}
	if len(nonce) != NonceSize {
		return nil, fmt.Errorf("nonce must be %d bytes, got %d", NonceSize, len(nonce))
	}
	if name == "" || len(name) > 255 {
		return nil, fmt.Errorf("name must be 1–255 bytes, got %d", len(name))
	}
	m := make([]byte, 0, len(domain)+ed25519.PublicKeySize+NonceSize+1+len(name)+1)
	m = append(m, domain...)
	m = append(m, serverKey...)
	m = append(m, nonce...)
	m = append(m, byte(len(name)))
	m = append(m, name...)
	return m, nil
}

// RegisterMessage is what a new account's first device signs with its
// identity key: it binds the canonical name to the key, at this key server,
// for this challenge.
func RegisterMessage(serverKey ed25519.PublicKey, nonce []byte, name string) ([]byte, error) {
	return proofMessage(domainRegister, serverKey, nonce, name)
}

// AddDeviceMessage is what a device joining an existing account signs with
// its own identity key.
func AddDeviceMessage(serverKey ed25519.PublicKey, nonce []byte, account string) ([]byte, error) {
	return proofMessage(domainAddDevice, serverKey, nonce, account)
}

// LoginMessage is what a device signs with its registered identity key to
// obtain a token for (account, device).
func LoginMessage(serverKey ed25519.PublicKey, nonce []byte, account string, device uint32) ([]byte, error) {
	if device < 1 || device > 127 {
		return nil, fmt.Errorf("device id must be 1–127, got %d", device)
	}
	m, err := proofMessage(domainLogin, serverKey, nonce, account)
	if err != nil {
		return nil, err
	}
	return append(m, byte(device)), nil
}
