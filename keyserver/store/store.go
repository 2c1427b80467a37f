// Package store defines what the key server keeps and the guarantees every
// backend gives: accounts with their devices, each device's identity key,
// signed prekey (and the one it replaced), last-resort prekey and pool of
// one-time prekeys, and the single-use login challenges.
//
// The interface is shaped around the one operation that must be exactly
// right under concurrency: ClaimPreKey. A one-time prekey is handed out at
// most once, ever — two concurrent claims, on one node or on two, never
// return the same key — because a reused one-time prekey weakens the
// forward secrecy of both sessions built on it. SQLite gets that from one
// write transaction, Cassandra from a lightweight transaction per claim.
//
// Backends live beside this package (store/sqlite, store/cassandra) and are
// all checked by one conformance suite (store/storetest), so the embedded
// and the distributed store cannot drift apart.
//
// Values are validated by the caller (the key server's HTTP layer): a store
// checks only what needs its state — uniqueness, existence, limits.
// Account names are passed in canonical (lower-case) form. Device ids are
// allocated by the store, 1 for the account's first device and then
// strictly increasing: a removed device's id is never given out again, so
// tokens issued to a removed device can never become valid again.
package store

import (
	"context"
	"errors"
	"time"
)

// Errors a Store returns (wrapped; test with errors.Is). Any other error is
// a failure of the backend itself.
var (
	ErrNameTaken         = errors.New("account name is taken")
	ErrAccountNotFound   = errors.New("account not found")
	ErrDeviceNotFound    = errors.New("device not found")
	ErrDeviceLimit       = errors.New("no device id left for this account")
	ErrLastDevice        = errors.New("cannot remove the account's last device")
	ErrPreKeyExists      = errors.New("one-time prekey id already stored")
	ErrPreKeyLimit       = errors.New("too many one-time prekeys stored")
	ErrSignedPreKeyInUse = errors.New("signed prekey id is the current one")
	ErrChallengeInvalid  = errors.New("challenge unknown, used or expired")
)

// MaxDeviceID is the largest device id a store allocates.
const MaxDeviceID = 127

// PreKey is a one-time or last-resort prekey.
type PreKey struct {
	ID        uint32
	PublicKey []byte
}

// SignedPreKey is a prekey signed by the device's identity key.
type SignedPreKey struct {
	ID        uint32
	PublicKey []byte
	Signature []byte
}

// DeviceKeys is what a device publishes when it joins an account.
type DeviceKeys struct {
	IdentityKey    []byte
	RegistrationID uint32
	SignedPreKey   SignedPreKey
	OneTime        []PreKey
	LastResort     PreKey
}

// Device is a device's stored state, without its one-time prekeys.
type Device struct {
	ID             uint32
	RegistrationID uint32
	IdentityKey    []byte
	SignedPreKey   SignedPreKey
	// PrevSignedPreKey is the signed prekey the last rotation replaced (ID 0
	// if none); the device keeps its private half until PrevSignedExpires.
	PrevSignedPreKey  SignedPreKey
	PrevSignedExpires time.Time
	LastResort        PreKey
	Created           time.Time
}

// Claim is the prekey a bundle fetch received for one device.
type Claim struct {
	Key PreKey
	// LastResort is true when no one-time prekey was left and Key is the
	// device's last-resort prekey (which is never consumed).
	LastResort bool
}

// Store is the key server's persistent state. All methods are safe for
// concurrent use by many goroutines and, for distributed backends, by many
// processes. Every mutating method is atomic: it applies completely or, on
// any error, not at all.
type Store interface {
	// CreateAccount creates account name with keys as its device 1.
	// ErrNameTaken if the name exists.
	CreateAccount(ctx context.Context, name string, keys DeviceKeys, now time.Time) error
	// AddDevice adds a device and returns its id (one more than the highest
	// id the account ever had). ErrAccountNotFound, ErrDeviceLimit.
	AddDevice(ctx context.Context, name string, keys DeviceKeys, now time.Time) (uint32, error)
	// RemoveDevice deletes a device with all its keys. ErrAccountNotFound,
	// ErrDeviceNotFound, ErrLastDevice.
	RemoveDevice(ctx context.Context, name string, device uint32) error
	// Devices lists an account's devices by ascending id.
	// ErrAccountNotFound.
	Devices(ctx context.Context, name string) ([]Device, error)
	// Device returns one device. ErrAccountNotFound, ErrDeviceNotFound.
	Device(ctx context.Context, name string, device uint32) (Device, error)

	// AddOneTimePreKeys stores keys (distinct ids, checked by the caller).
	// ErrPreKeyExists if any id is already stored for the device (then none
	// is stored); ErrPreKeyLimit if the device would hold more than max.
	// Distributed backends may overshoot max by concurrent uploads of the
	// same device, never by more than one batch each.
	AddOneTimePreKeys(ctx context.Context, name string, device uint32, keys []PreKey, max int) error
	// RotateSignedPreKey makes spk current; the replaced one becomes the
	// previous signed prekey until prevExpires. ErrSignedPreKeyInUse if spk
	// has the current id.
	RotateSignedPreKey(ctx context.Context, name string, device uint32, spk SignedPreKey, prevExpires time.Time) error
	// SetLastResort replaces the device's last-resort prekey.
	SetLastResort(ctx context.Context, name string, device uint32, pk PreKey) error
	// CountOneTimePreKeys counts the device's one-time prekeys not yet
	// handed out.
	CountOneTimePreKeys(ctx context.Context, name string, device uint32) (int, error)
	// ClaimPreKey removes and returns the device's one-time prekey with the
	// lowest id, or returns its last-resort prekey when none is left. No two
	// calls ever return the same one-time prekey.
	ClaimPreKey(ctx context.Context, name string, device uint32) (Claim, error)

	// PutChallenge records a fresh nonce valid until expires. The store may
	// drop challenges that expired before now.
	PutChallenge(ctx context.Context, nonce []byte, now, expires time.Time) error
	// ConsumeChallenge deletes the nonce and succeeds only if it existed
	// and had not expired at now: each nonce is accepted at most once.
	// ErrChallengeInvalid otherwise.
	ConsumeChallenge(ctx context.Context, nonce []byte, now time.Time) error

	// Ping reports whether the store can serve requests (for /readyz).
	Ping(ctx context.Context) error
	// Close releases the store's resources.
	Close() error
}
