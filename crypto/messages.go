package crypto

import (
	"bytes"
	"crypto/aes"
	"errors"
	"fmt"

	"go.mau.fi/libsignal/protocol"
)

// MaxMessageSize bounds a serialized message (and a plaintext) handled by
// this package. It is larger than the relay's payload limit, so it is never
// the limit a sender meets first; it only keeps a hostile input bounded.
const MaxMessageSize = 256 << 10

// MessageType tells the recipient which decryptor a ciphertext needs. The
// values equal the wire protocol's EnvelopeType numbers.
type MessageType uint8

const (
	// MessageTypePreKey is a PreKeySignalMessage: the first messages of a
	// session, until the recipient answers.
	MessageTypePreKey MessageType = 1
	// MessageTypeSignal is a SignalMessage on an established session.
	MessageTypeSignal MessageType = 2
	// MessageTypeSenderKey is a group SenderKeyMessage.
	MessageTypeSenderKey MessageType = 3
)

func (t MessageType) String() string {
	switch t {
	case MessageTypePreKey:
		return "prekey"
	case MessageTypeSignal:
		return "signal"
	case MessageTypeSenderKey:
		return "senderkey"
	}
	return fmt.Sprintf("MessageType(%d)", uint8(t))
}

// Ciphertext is one encrypted pairwise message.
type Ciphertext struct {
	Type MessageType
	Body []byte
}

// Errors for messages that cannot be decrypted. Every one of them leaves the
// stored state unchanged.
var (
	// ErrInvalidMessage: malformed, forged, or for a session we do not have
	// the state for.
	ErrInvalidMessage = errors.New("invalid message")
	// ErrMessageTooLarge: input over MaxMessageSize.
	ErrMessageTooLarge = errors.New("message too large")
	// ErrUnsupportedVersion: a message version this library cannot read.
	ErrUnsupportedVersion = errors.New("unsupported message version")
)

// keySize is a serialized public key on the wire.
const keySize = PublicKeySize

func checkKey(what string, b []byte) error {
	if len(b) != keySize || b[0] != KeyTypeDJB {
		return fmt.Errorf("%w: %s must be a 33-byte 0x05 key, got %d bytes", ErrInvalidMessage, what, len(b))
	}
	return nil
}

// checkCBC rejects a body the library's CBC decrypter would panic on.
func checkCBC(what string, body []byte) error {
	if len(body) == 0 || len(body)%aes.BlockSize != 0 {
		return fmt.Errorf("%w: %s ciphertext length %d is not a positive multiple of %d", ErrInvalidMessage, what, len(body), aes.BlockSize)
	}
	return nil
}

// checkVersion reads the version nibble of a message's first byte. The
// library writes the ASCII digit '3' (0x33); the high nibble is the message
// version, as in Signal.
func checkVersion(what string, b []byte) error {
	if len(b) == 0 {
		return fmt.Errorf("%w: empty %s", ErrInvalidMessage, what)
	}
	if len(b) > MaxMessageSize {
		return fmt.Errorf("%w: %s of %d bytes (limit %d)", ErrMessageTooLarge, what, len(b), MaxMessageSize)
	}
	if v := int(b[0] >> 4); v != protocol.CurrentVersion {
		return fmt.Errorf("%w: %s version %d (want %d)", ErrUnsupportedVersion, what, v, protocol.CurrentVersion)
	}
	if b[0] != versionByte {
		return fmt.Errorf("%w: %s version byte 0x%02x (want 0x%02x)", ErrUnsupportedVersion, what, b[0], versionByte)
	}
	return nil
}

// versionByte is the first byte of every message the library writes.
const versionByte = '0' + protocol.CurrentVersion

// The library checks a SignalMessage's MAC, and a SenderKeyMessage's
// signature, over its own re-encoding of the decoded fields rather than over
// the received bytes, so a different encoding of the same fields (added
// unknown fields, another field order) would verify too. Requiring the
// received bytes to be exactly the library's encoding closes that
// malleability: what verifies is what was sent.
var errNonCanonical = fmt.Errorf("%w: non-canonical encoding", ErrInvalidMessage)

// parseSignalMessage decodes and validates a SignalMessage.
func parseSignalMessage(b []byte) (msg *protocol.SignalMessage, err error) {
	defer catch("parse signal message", &err)
	if err := checkVersion("signal message", b); err != nil {
		return nil, err
	}
	if len(b) < 1+protocol.MacLength {
		return nil, fmt.Errorf("%w: signal message of %d bytes is too short", ErrInvalidMessage, len(b))
	}
	st, err := serializer.SignalMessage.Deserialize(b)
	if err != nil {
		return nil, fmt.Errorf("parse signal message: %w: %w", ErrInvalidMessage, err)
	}
	if err := checkKey("ratchet key", st.RatchetKey); err != nil {
		return nil, err
	}
	if err := checkCBC("signal message", st.CipherText); err != nil {
		return nil, err
	}
	// Encoded on the stack for a short message: this runs for every
	// message received.
	var buf [512]byte
	body := appendSignalMessage(buf[:0], &protocol.SignalMessageStructure{
		RatchetKey: st.RatchetKey, Counter: st.Counter, PreviousCounter: st.PreviousCounter, CipherText: st.CipherText,
	})
	if !bytes.Equal(body, b[1:len(b)-protocol.MacLength]) {
		return nil, fmt.Errorf("parse signal message: %w", errNonCanonical)
	}
	msg, err = protocol.NewSignalMessageFromStruct(st, serializer.SignalMessage)
	if err != nil {
		return nil, fmt.Errorf("parse signal message: %w: %w", ErrInvalidMessage, err)
	}
	return msg, nil
}

// parsePreKeySignalMessage decodes and validates a PreKeySignalMessage and
// the SignalMessage inside it.
func parsePreKeySignalMessage(b []byte) (msg *protocol.PreKeySignalMessage, err error) {
	defer catch("parse prekey message", &err)
	if err := checkVersion("prekey message", b); err != nil {
		return nil, err
	}
	st, err := serializer.PreKeySignalMessage.Deserialize(b)
	if err != nil {
		return nil, fmt.Errorf("parse prekey message: %w: %w", ErrInvalidMessage, err)
	}
	if err := checkKey("base key", st.BaseKey); err != nil {
		return nil, err
	}
	if err := checkKey("identity key", st.IdentityKey); err != nil {
		return nil, err
	}
	if st.RegistrationID < MinRegistrationID || st.RegistrationID > MaxRegistrationID {
		return nil, fmt.Errorf("%w: prekey message registration id %d out of range", ErrInvalidMessage, st.RegistrationID)
	}
	if !st.PreKeyID.IsEmpty && st.PreKeyID.Value > LastResortPreKeyID {
		return nil, fmt.Errorf("%w: prekey id %d out of range", ErrInvalidMessage, st.PreKeyID.Value)
	}
	if _, err := parseSignalMessage(st.Message); err != nil {
		return nil, fmt.Errorf("parse prekey message: %w", err)
	}
	if !bytes.Equal(serializer.PreKeySignalMessage.Serialize(st), b) {
		return nil, fmt.Errorf("parse prekey message: %w", errNonCanonical)
	}
	msg, err = protocol.NewPreKeySignalMessageFromStruct(st, serializer.PreKeySignalMessage, serializer.SignalMessage)
	if err != nil {
		return nil, fmt.Errorf("parse prekey message: %w: %w", ErrInvalidMessage, err)
	}
	return msg, nil
}

// senderKeySignatureSize is the XEdDSA signature a SenderKeyMessage ends in.
const senderKeySignatureSize = SignatureSize

// parseSenderKeyMessage decodes and validates a group SenderKeyMessage.
func parseSenderKeyMessage(b []byte) (msg *protocol.SenderKeyMessage, err error) {
	defer catch("parse sender key message", &err)
	if err := checkVersion("sender key message", b); err != nil {
		return nil, err
	}
	if len(b) < 1+senderKeySignatureSize {
		return nil, fmt.Errorf("%w: sender key message of %d bytes is too short", ErrInvalidMessage, len(b))
	}
	st, err := serializer.SenderKeyMessage.Deserialize(b)
	if err != nil {
		return nil, fmt.Errorf("parse sender key message: %w: %w", ErrInvalidMessage, err)
	}
	if err := checkCBC("sender key message", st.CipherText); err != nil {
		return nil, err
	}
	signed := serializer.SenderKeyMessage.Serialize(st)
	if !bytes.Equal(signed, b) {
		return nil, fmt.Errorf("parse sender key message: %w", errNonCanonical)
	}
	msg, err = protocol.NewSenderKeyMessageFromStruct(st, serializer.SenderKeyMessage)
	if err != nil {
		return nil, fmt.Errorf("parse sender key message: %w: %w", ErrInvalidMessage, err)
	}
	return msg, nil
}

// senderChainKeySize is the seed of a sender-key chain.
const senderChainKeySize = 32

// parseDistributionMessage decodes and validates a SenderKeyDistributionMessage.
func parseDistributionMessage(b []byte) (msg *protocol.SenderKeyDistributionMessage, err error) {
	defer catch("parse sender key distribution", &err)
	if err := checkVersion("sender key distribution", b); err != nil {
		return nil, err
	}
	st, err := serializer.SenderKeyDistributionMessage.Deserialize(b)
	if err != nil {
		return nil, fmt.Errorf("parse sender key distribution: %w: %w", ErrInvalidMessage, err)
	}
	if err := checkKey("signing key", st.SigningKey); err != nil {
		return nil, err
	}
	if len(st.ChainKey) != senderChainKeySize {
		return nil, fmt.Errorf("%w: sender key chain key must be %d bytes, got %d", ErrInvalidMessage, senderChainKeySize, len(st.ChainKey))
	}
	msg, err = protocol.NewSenderKeyDistributionMessageFromStruct(st, serializer.SenderKeyDistributionMessage)
	if err != nil {
		return nil, fmt.Errorf("parse sender key distribution: %w: %w", ErrInvalidMessage, err)
	}
	return msg, nil
}
