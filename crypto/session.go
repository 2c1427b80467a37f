package crypto

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"hash/maphash"
	"log/slog"
	"sync"

	"go.mau.fi/libsignal/ecc"
	"go.mau.fi/libsignal/keys/identity"
	"go.mau.fi/libsignal/keys/prekey"
	"go.mau.fi/libsignal/protocol"
	"go.mau.fi/libsignal/session"
	"go.mau.fi/libsignal/signalerror"
	"go.mau.fi/libsignal/util/optional"
)

// Bundle is a device's published key material as the key server hands it
// out: what a sender needs to start a session (X3DH) without the recipient
// being online. It is independent of libsignal's types so the key server
// and the client can map JSON or protobuf onto it directly.
type Bundle struct {
	// IdentityKey is the 33-byte identity public key.
	IdentityKey    []byte `json:"identity_key"`
	RegistrationID uint32 `json:"registration_id"`
	DeviceID       uint32 `json:"device_id"`
	// SignedPreKey is the 33-byte signed prekey, signed by IdentityKey.
	SignedPreKeyID        uint32 `json:"signed_prekey_id"`
	SignedPreKey          []byte `json:"signed_prekey"`
	SignedPreKeySignature []byte `json:"signed_prekey_signature"`
	// PreKey is an optional one-time prekey (or the last-resort prekey,
	// PreKeyID == LastResortPreKeyID). PreKeyID 0 with an empty PreKey means
	// none.
	PreKeyID uint32 `json:"prekey_id,omitempty"`
	PreKey   []byte `json:"prekey,omitempty"`
}

// Validate checks every field's size and range and the signed prekey's
// signature. A bad signature yields an error wrapping
// ErrBadSignedPreKeySignature; anything else malformed, ErrInvalidBundle.
func (b Bundle) Validate() error {
	if _, err := ParsePublicKey(b.IdentityKey); err != nil {
		return fmt.Errorf("%w: identity key: %w", ErrInvalidBundle, err)
	}
	if err := ValidateRegistrationID(b.RegistrationID); err != nil {
		return fmt.Errorf("%w: %w", ErrInvalidBundle, err)
	}
	if err := ValidateDeviceID(b.DeviceID); err != nil {
		return fmt.Errorf("%w: %w", ErrInvalidBundle, err)
	}
	if err := ValidatePreKeyID(b.SignedPreKeyID); err != nil {
		return fmt.Errorf("%w: signed %w", ErrInvalidBundle, err)
	}
	if _, err := ParsePublicKey(b.SignedPreKey); err != nil {
		return fmt.Errorf("%w: signed prekey: %w", ErrInvalidBundle, err)
	}
	if len(b.SignedPreKeySignature) != SignatureSize {
		return fmt.Errorf("%w: signed prekey signature: %w, got %d", ErrInvalidBundle, ErrSignatureSize, len(b.SignedPreKeySignature))
	}
	if err := VerifySignature(b.IdentityKey, b.SignedPreKey, b.SignedPreKeySignature); err != nil {
		return fmt.Errorf("%w (signed prekey %d)", ErrBadSignedPreKeySignature, b.SignedPreKeyID)
	}
	switch {
	case b.PreKeyID == 0 && len(b.PreKey) == 0:
	case b.PreKeyID == 0:
		return fmt.Errorf("%w: one-time prekey without an id", ErrInvalidBundle)
	default:
		if b.PreKeyID != LastResortPreKeyID {
			if err := ValidatePreKeyID(b.PreKeyID); err != nil {
				return fmt.Errorf("%w: one-time %w", ErrInvalidBundle, err)
			}
		}
		if _, err := ParsePublicKey(b.PreKey); err != nil {
			return fmt.Errorf("%w: one-time prekey %d: %w", ErrInvalidBundle, b.PreKeyID, err)
		}
	}
	return nil
}

// MakeBundle assembles the bundle a device publishes. pk may be nil.
func MakeBundle(id *IdentityKeyPair, registrationID, deviceID uint32, spk *SignedPreKey, pk *PreKey) Bundle {
	s := spk.Public()
	b := Bundle{
		IdentityKey:           id.PublicKey(),
		RegistrationID:        registrationID,
		DeviceID:              deviceID,
		SignedPreKeyID:        s.ID,
		SignedPreKey:          s.PublicKey,
		SignedPreKeySignature: s.Signature,
	}
	if pk != nil {
		p := pk.Public()
		b.PreKeyID, b.PreKey = p.ID, p.PublicKey
	}
	return b
}

func (b *Bundle) lib() *prekey.Bundle {
	var raw [32]byte
	key := func(k []byte) ecc.ECPublicKeyable {
		copy(raw[:], k[1:])
		return ecc.NewDjbECPublicKey(raw)
	}
	preKeyID := optional.NewEmptyUint32()
	var preKey ecc.ECPublicKeyable
	if b.PreKeyID != 0 {
		preKeyID = optional.NewOptionalUint32(b.PreKeyID)
		preKey = key(b.PreKey)
	}
	return prekey.NewBundle(b.RegistrationID, b.DeviceID, preKeyID, b.SignedPreKeyID,
		preKey, key(b.SignedPreKey), [64]byte(b.SignedPreKeySignature), identity.NewKey(key(b.IdentityKey)))
}

// Config configures a Protocol.
type Config struct {
	// Address is this device.
	Address        Address
	Identity       *IdentityKeyPair
	RegistrationID uint32
	Store          Store
	// Logger, when set, is installed as the destination of libsignal's log
	// lines (see InstallLogger) and receives this package's own few lines.
	// nil keeps whatever InstallLogger set, or slog.Default().
	Logger *slog.Logger
}

// Protocol is one device's Signal protocol engine: pairwise sessions,
// sender-key groups and the keys behind them, over a Store.
//
// It is safe for concurrent use. Operations on the same remote device (or
// the same group sender) are serialised in process; every operation runs in
// one Store.Atomic call, so a failed operation — a forged, duplicate or
// malformed message, a changed identity, a store error — changes nothing.
// One Store must be driven by one Protocol at a time.
type Protocol struct {
	self           Address
	identity       *IdentityKeyPair
	registrationID uint32
	store          Store
	log            *slog.Logger

	seed  maphash.Seed
	locks [64]sync.Mutex

	sessions *sessionCache
}

// New returns a Protocol for the device described by cfg.
func New(cfg Config) (*Protocol, error) {
	if cfg.Logger != nil {
		InstallLogger(cfg.Logger)
	} else {
		ensureLogger()
	}
	if err := cfg.Address.Validate(); err != nil {
		return nil, fmt.Errorf("new protocol: %w", err)
	}
	if cfg.Identity == nil {
		return nil, errors.New("new protocol: no identity key pair")
	}
	if err := ValidateRegistrationID(cfg.RegistrationID); err != nil {
		return nil, fmt.Errorf("new protocol: %w", err)
	}
	if cfg.Store == nil {
		return nil, errors.New("new protocol: no store")
	}
	l := cfg.Logger
	if l == nil {
		l = slog.Default()
	}
	return &Protocol{
		self:           cfg.Address,
		identity:       cfg.Identity,
		registrationID: cfg.RegistrationID,
		store:          cfg.Store,
		log:            l,
		seed:           maphash.MakeSeed(),
		sessions:       newSessionCache(),
	}, nil
}

// Address returns this device's address.
func (p *Protocol) Address() Address { return p.self }

// IdentityKey returns this device's 33-byte identity public key.
func (p *Protocol) IdentityKey() []byte { return p.identity.PublicKey() }

// RegistrationID returns this device's registration id.
func (p *Protocol) RegistrationID() uint32 { return p.registrationID }

// lockAddress locks, and returns for unlocking, the mutex that serialises
// operations with one remote device (defer p.lockAddress(remote).Unlock()).
// Devices hash onto a fixed set of mutexes; a collision only makes two
// devices share one.
func (p *Protocol) lockAddress(a Address) *sync.Mutex {
	var h maphash.Hash
	h.SetSeed(p.seed)
	h.WriteString(a.Name)
	h.WriteByte(0)
	h.WriteByte(byte(a.DeviceID))
	return p.lockHash(&h)
}

// lockGroupSender is lockAddress for one sender's chain in one group.
func (p *Protocol) lockGroupSender(groupID string, sender Address) *sync.Mutex {
	var h maphash.Hash
	h.SetSeed(p.seed)
	h.WriteString(groupID)
	h.WriteByte(0)
	h.WriteString(sender.Name)
	h.WriteByte(0)
	h.WriteByte(byte(sender.DeviceID))
	return p.lockHash(&h)
}

func (p *Protocol) lockHash(h *maphash.Hash) *sync.Mutex {
	m := &p.locks[h.Sum64()%uint64(len(p.locks))]
	m.Lock()
	return m
}

// atomic runs fn in one store transaction and converts a library panic into
// an error (the transaction is then rolled back).
func (p *Protocol) atomic(ctx context.Context, what string, fn func(ctx context.Context) error) error {
	return p.store.Atomic(ctx, func(ctx context.Context) (err error) {
		defer catch(what, &err)
		return fn(ctx)
	})
}

// StorePreKeys saves one-time (or last-resort) prekeys, in one transaction.
func (p *Protocol) StorePreKeys(ctx context.Context, keys []*PreKey) error {
	return p.atomic(ctx, "store prekeys", func(ctx context.Context) error {
		for _, k := range keys {
			if err := p.store.StorePreKey(ctx, k.id, k.rec.Serialize()); err != nil {
				return fmt.Errorf("store prekey %d: %w", k.id, err)
			}
		}
		return nil
	})
}

// StoreSignedPreKey saves a signed prekey.
func (p *Protocol) StoreSignedPreKey(ctx context.Context, k *SignedPreKey) error {
	if err := p.store.StoreSignedPreKey(ctx, k.ID(), k.rec.Serialize()); err != nil {
		return fmt.Errorf("store signed prekey %d: %w", k.ID(), err)
	}
	return nil
}

// RemoveSignedPreKey deletes a rotated-away signed prekey. Messages that
// still name it then fail with ErrUnknownPreKey.
func (p *Protocol) RemoveSignedPreKey(ctx context.Context, id uint32) error {
	if err := p.store.RemoveSignedPreKey(ctx, id); err != nil {
		return fmt.Errorf("remove signed prekey %d: %w", id, err)
	}
	return nil
}

// ProcessBundle starts a session with remote (X3DH) from its bundle. The
// signed prekey's signature is checked before anything is stored; a bad
// one yields ErrBadSignedPreKeySignature. An identity key different from
// the recorded one yields *UntrustedIdentityError. An existing session with
// remote is archived (it can still decrypt late messages).
func (p *Protocol) ProcessBundle(ctx context.Context, remote Address, b Bundle) error {
	if err := remote.Validate(); err != nil {
		return fmt.Errorf("process bundle: %w", err)
	}
	if remote.DeviceID != b.DeviceID {
		return fmt.Errorf("process bundle for %s: %w: bundle is for device %d", remote, ErrInvalidBundle, b.DeviceID)
	}
	if err := b.Validate(); err != nil {
		return fmt.Errorf("process bundle for %s: %w", remote, err)
	}
	defer p.lockAddress(remote).Unlock()
	return p.atomicLib(ctx, "process bundle", func(ctx context.Context, l *libStore) error {
		builder := session.NewBuilder(l, l, l, l, remote.signal(), serializer)
		if err := builder.ProcessBundle(ctx, b.lib()); err != nil {
			return p.mapErr(fmt.Sprintf("process bundle for %s", remote), err, l)
		}
		return nil
	})
}

// HasSession reports whether there is a session with remote.
func (p *Protocol) HasSession(ctx context.Context, remote Address) (bool, error) {
	_, err := p.store.LoadSession(ctx, remote)
	if errors.Is(err, ErrNotFound) {
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("has session with %s: %w", remote, err)
	}
	return true, nil
}

// DeleteSession forgets the session with remote (its identity stays
// recorded).
func (p *Protocol) DeleteSession(ctx context.Context, remote Address) error {
	defer p.lockAddress(remote).Unlock()
	p.sessions.drop(remote)
	if err := p.store.DeleteSession(ctx, remote); err != nil {
		return fmt.Errorf("delete session with %s: %w", remote, err)
	}
	return nil
}

// SessionDevices lists the device ids of name this device has sessions with.
func (p *Protocol) SessionDevices(ctx context.Context, name string) ([]uint32, error) {
	ids, err := p.store.SessionDeviceIDs(ctx, name)
	if err != nil {
		return nil, fmt.Errorf("session devices of %s: %w", name, err)
	}
	return ids, nil
}

// Encrypt encrypts plaintext for remote on the existing session. Until
// remote has answered, the result is a PreKeySignalMessage (so remote can
// build the session); afterwards a SignalMessage. ErrNoSession means a
// bundle must be processed first.
func (p *Protocol) Encrypt(ctx context.Context, remote Address, plaintext []byte) (Ciphertext, error) {
	if len(plaintext) > MaxMessageSize {
		return Ciphertext{}, fmt.Errorf("encrypt for %s: %w: %d bytes (limit %d)", remote, ErrMessageTooLarge, len(plaintext), MaxMessageSize)
	}
	defer p.lockAddress(remote).Unlock()
	var out Ciphertext
	err := p.atomicLib(ctx, "encrypt", func(ctx context.Context, l *libStore) error {
		ok, err := l.preload(ctx, remote)
		if err != nil {
			return fmt.Errorf("encrypt for %s: %w", remote, err)
		}
		if !ok {
			return fmt.Errorf("encrypt for %s: %w", remote, ErrNoSession)
		}
		c := session.NewCipherFromSession(remote.signal(), l, l, l, serializer.PreKeySignalMessage, serializer.SignalMessage)
		msg, err := c.Encrypt(ctx, plaintext)
		if err != nil {
			return p.mapErr(fmt.Sprintf("encrypt for %s", remote), err, l)
		}
		out.Body = msg.Serialize()
		switch msg.Type() {
		case protocol.PREKEY_TYPE:
			out.Type = MessageTypePreKey
		case protocol.WHISPER_TYPE:
			out.Type = MessageTypeSignal
		default:
			return fmt.Errorf("encrypt for %s: unexpected message type %d", remote, msg.Type())
		}
		return nil
	})
	if err != nil {
		return Ciphertext{}, err
	}
	return out, nil
}

// Decrypt decrypts a pairwise message from remote. A PreKeySignalMessage
// builds (or rebuilds) the session first and consumes the one-time prekey
// it names. The message is tried on the current session state and then on
// the archived ones (simultaneous session starts and resets leave several),
// each on a copy: only the state that decrypts it changes, and it becomes
// the current one (see decrypt.go). Failures change nothing; the typed
// errors are ErrDuplicateMessage (already decrypted: drop it),
// *UntrustedIdentityError, ErrNoSession, ErrUnknownPreKey,
// ErrTooFarInFuture, ErrMessageTooLarge and ErrInvalidMessage.
func (p *Protocol) Decrypt(ctx context.Context, remote Address, c Ciphertext) ([]byte, error) {
	if err := remote.Validate(); err != nil {
		return nil, fmt.Errorf("decrypt: %w", err)
	}
	// The context of an error ("decrypt signal message from bob.1") is
	// only formatted when there is an error: this is the hot path.
	var (
		pt  []byte
		err error
	)
	switch c.Type {
	case MessageTypePreKey:
		var msg *protocol.PreKeySignalMessage
		if msg, err = parsePreKeySignalMessage(c.Body); err != nil {
			break
		}
		defer p.lockAddress(remote).Unlock()
		err = p.atomicLib(ctx, "", func(ctx context.Context, l *libStore) error {
			var err error
			if pt, err = p.decryptPreKey(ctx, l, remote, msg); err != nil {
				return p.classify(err, l)
			}
			return nil
		})
	case MessageTypeSignal:
		var msg *protocol.SignalMessage
		if msg, err = parseSignalMessage(c.Body); err != nil {
			break
		}
		defer p.lockAddress(remote).Unlock()
		err = p.atomicLib(ctx, "", func(ctx context.Context, l *libStore) error {
			var err error
			if pt, err = p.decryptSignal(ctx, l, remote, msg); err != nil {
				return p.classify(err, l)
			}
			return nil
		})
	default:
		err = fmt.Errorf("%w: not a pairwise message type", ErrInvalidMessage)
	}
	if err != nil {
		return nil, fmt.Errorf("decrypt %s message from %s: %w", c.Type, remote, err)
	}
	return pt, nil
}

// mapErr turns a library error into one of this package's typed errors,
// with what as context.
func (p *Protocol) mapErr(what string, err error, l *libStore) error {
	return fmt.Errorf("%s: %w", what, p.classify(err, l))
}

// classify turns a library error into one of this package's typed errors.
func (p *Protocol) classify(err error, l *libStore) error {
	var uie *UntrustedIdentityError
	switch {
	case errors.As(err, &uie):
		return uie
	case errors.Is(err, signalerror.ErrUntrustedIdentity):
		if l.untrusted != nil {
			return l.untrusted
		}
		return ErrUntrustedIdentity
	case errors.Is(err, signalerror.ErrOldCounter):
		return ErrDuplicateMessage
	case errors.Is(err, signalerror.ErrNoSessionForUser):
		return ErrNoSession
	case errors.Is(err, signalerror.ErrInvalidSignature):
		return ErrBadSignedPreKeySignature
	case errors.Is(err, signalerror.ErrNoOneTimeKeyFound), errors.Is(err, signalerror.ErrNoSignedPreKey):
		return fmt.Errorf("%w: %w", ErrUnknownPreKey, err)
	case errors.Is(err, signalerror.ErrTooFarIntoFuture):
		return ErrTooFarInFuture
	case errors.Is(err, signalerror.ErrNoSenderKeyForUser),
		errors.Is(err, signalerror.ErrNoSenderKeyStateForID),
		errors.Is(err, signalerror.ErrNoSenderKeyStatesInRecord):
		return fmt.Errorf("%w: %w", ErrNoSenderKey, err)
	case errors.Is(err, ErrCorruptRecord), errors.Is(err, ErrNotFound), errors.Is(err, ErrInvalidMessage):
		return err
	case errors.Is(err, signalerror.ErrBadMAC), errors.Is(err, signalerror.ErrNoValidSessions),
		errors.Is(err, signalerror.ErrSenderKeyStateVerificationFailed),
		errors.Is(err, signalerror.ErrWrongMessageVersion), errors.Is(err, signalerror.ErrUninitializedSession):
		return fmt.Errorf("%w: %w", ErrInvalidMessage, err)
	}
	// Store errors and anything unexpected pass through.
	return err
}

// Identity returns what this device has recorded about remote's identity,
// or an error wrapping ErrNotFound.
func (p *Protocol) Identity(ctx context.Context, remote Address) (IdentityRecord, error) {
	rec, err := p.store.LoadIdentity(ctx, remote)
	if err != nil {
		return IdentityRecord{}, fmt.Errorf("identity of %s: %w", remote, err)
	}
	return rec, nil
}

// TrustIdentity records key as remote's identity: the user accepted a
// changed key (verified=false) or compared safety numbers (verified=true).
// Replacing a key always clears verified unless the caller sets it again.
// A session built on the old key keeps failing with *UntrustedIdentityError;
// start a new one from a fresh bundle (or wait for the peer's new
// PreKeySignalMessage, which now decrypts).
func (p *Protocol) TrustIdentity(ctx context.Context, remote Address, key []byte, verified bool) error {
	if _, err := ParsePublicKey(key); err != nil {
		return fmt.Errorf("trust identity of %s: %w", remote, err)
	}
	defer p.lockAddress(remote).Unlock()
	return p.atomic(ctx, "trust identity", func(ctx context.Context) error {
		old, err := p.store.LoadIdentity(ctx, remote)
		if err != nil && !errors.Is(err, ErrNotFound) {
			return fmt.Errorf("trust identity of %s: %w", remote, err)
		}
		if err == nil && !bytes.Equal(old.Key, key) {
			p.log.InfoContext(ctx, "identity key replaced", "address", remote.String())
		}
		if err := p.store.StoreIdentity(ctx, remote, IdentityRecord{Key: bytes.Clone(key), Verified: verified}); err != nil {
			return fmt.Errorf("trust identity of %s: %w", remote, err)
		}
		return nil
	})
}
