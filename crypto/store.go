package crypto

import (
	"context"
	"errors"
	"fmt"
)

// Address names one device of one account: the unit a pairwise session is
// kept with.
type Address struct {
	Name     string
	DeviceID uint32
}

func (a Address) String() string { return fmt.Sprintf("%s.%d", a.Name, a.DeviceID) }

// Validate checks the device id range and that the name is non-empty.
func (a Address) Validate() error {
	if a.Name == "" {
		return errors.New("address: empty name")
	}
	if err := ValidateDeviceID(a.DeviceID); err != nil {
		return fmt.Errorf("address %s: %w", a, err)
	}
	return nil
}

// ErrNotFound is returned (possibly wrapped) by a store's Load methods when
// there is no record.
var ErrNotFound = errors.New("not found")

// IdentityRecord is what the device knows about a remote device's identity.
type IdentityRecord struct {
	// Key is the 33-byte serialized identity public key.
	Key []byte
	// Verified is set when the user compared safety numbers for this key.
	// It is cleared whenever the key is replaced.
	Verified bool
}

// The store interfaces below hold the state libsignal needs. Records are
// opaque byte strings produced and consumed by this package: a store must
// return exactly the bytes it was given and must not interpret them. That
// makes a SQL implementation a set of (key columns, BLOB) tables.
//
// Every method takes the context passed to Store.Atomic (or the caller's
// context outside it); an implementation that keeps a transaction in the
// context must use it. Methods must be safe for concurrent use.

// IdentityStore keeps remote devices' identity keys and the user's trust
// decisions about them. The trust policy (trust on first use, refuse a
// changed key until the user accepts it) lives in Protocol, not here.
type IdentityStore interface {
	// LoadIdentity returns the record for addr, or an error wrapping
	// ErrNotFound.
	LoadIdentity(ctx context.Context, addr Address) (IdentityRecord, error)
	// StoreIdentity creates or replaces the record for addr.
	StoreIdentity(ctx context.Context, addr Address, rec IdentityRecord) error
}

// PreKeyStore keeps this device's one-time and last-resort prekeys.
type PreKeyStore interface {
	// LoadPreKey returns the record for id, or an error wrapping ErrNotFound.
	LoadPreKey(ctx context.Context, id uint32) ([]byte, error)
	// StorePreKey creates or replaces the record for id.
	StorePreKey(ctx context.Context, id uint32, record []byte) error
	// RemovePreKey deletes the record for id; deleting a missing id is not
	// an error. Protocol never calls it for LastResortPreKeyID.
	RemovePreKey(ctx context.Context, id uint32) error
}

// SignedPreKeyStore keeps this device's signed prekeys (the current one and
// recently rotated ones).
type SignedPreKeyStore interface {
	// LoadSignedPreKey returns the record for id, or an error wrapping
	// ErrNotFound.
	LoadSignedPreKey(ctx context.Context, id uint32) ([]byte, error)
	// StoreSignedPreKey creates or replaces the record for id.
	StoreSignedPreKey(ctx context.Context, id uint32, record []byte) error
	// RemoveSignedPreKey deletes the record for id; deleting a missing id is
	// not an error.
	RemoveSignedPreKey(ctx context.Context, id uint32) error
	// SignedPreKeyIDs lists the stored ids in ascending order.
	SignedPreKeyIDs(ctx context.Context) ([]uint32, error)
}

// SessionStore keeps one session record per remote device.
type SessionStore interface {
	// LoadSession returns the record for addr, or an error wrapping
	// ErrNotFound.
	LoadSession(ctx context.Context, addr Address) ([]byte, error)
	// StoreSession creates or replaces the record for addr.
	StoreSession(ctx context.Context, addr Address, record []byte) error
	// DeleteSession deletes the record for addr; deleting a missing record
	// is not an error.
	DeleteSession(ctx context.Context, addr Address) error
	// SessionDeviceIDs lists, in ascending order, the device ids of name
	// that have a session.
	SessionDeviceIDs(ctx context.Context, name string) ([]uint32, error)
}

// SenderKeyStore keeps sender-key records, one per (group, sending device),
// including this device's own sender key for each group.
type SenderKeyStore interface {
	// LoadSenderKey returns the record, or an error wrapping ErrNotFound.
	LoadSenderKey(ctx context.Context, groupID string, sender Address) ([]byte, error)
	// StoreSenderKey creates or replaces the record.
	StoreSenderKey(ctx context.Context, groupID string, sender Address, record []byte) error
	// DeleteSenderKey deletes the record; deleting a missing record is not
	// an error.
	DeleteSenderKey(ctx context.Context, groupID string, sender Address) error
}

// Store is everything Protocol persists.
type Store interface {
	IdentityStore
	PreKeyStore
	SignedPreKeyStore
	SessionStore
	SenderKeyStore

	// Atomic runs fn and makes the writes fn performs through the context
	// it receives take effect together, or — when fn returns an error — not
	// at all. Reads inside fn see fn's own writes. Protocol wraps every
	// operation in Atomic, so a decrypt that consumes a one-time prekey
	// and advances the session either fully happens or leaves the store as
	// it was: the message can be retried and nothing is half-applied. A SQL
	// implementation opens a transaction and carries it in the context; a
	// call on a context that is already inside Atomic joins that
	// transaction.
	Atomic(ctx context.Context, fn func(ctx context.Context) error) error
}
