package crypto

import (
	"fmt"

	"go.mau.fi/libsignal/groups/ratchet"
	grouprecord "go.mau.fi/libsignal/groups/state/record"
	"go.mau.fi/libsignal/keys/chain"
	"go.mau.fi/libsignal/keys/message"
	"go.mau.fi/libsignal/serialize"
	"go.mau.fi/libsignal/state/record"
	"go.mau.fi/libsignal/util/optional"
	"google.golang.org/protobuf/encoding/protowire"
)

// serializer is the one place hush chooses how libsignal encodes things.
//
// Wire messages (SignalMessage, PreKeySignalMessage, SenderKeyMessage,
// SenderKeyDistributionMessage) use the library's protobuf encoding, the
// Signal wire format; SignalMessage, on every message of an established
// session, through hush's byte-identical encoder (wire.go). Session and sender-key records — read and written on
// every message — use hush's binary record format below. Prekey and signed
// prekey records, touched once per session, keep the library's JSON.
//
// The value is immutable after package initialisation and shared read-only.
var serializer = newSerializer()

func newSerializer() *serialize.Serializer {
	s := serialize.NewProtoBufSerializer()
	s.SignalMessage = signalMessageSerializer{}
	s.Session = sessionSerializer{}
	s.State = stateSerializer{}
	s.SenderKeyRecord = senderKeySerializer{}
	s.SenderKeyState = senderKeyStateSerializer{}
	return s
}

// The binary record format.
//
// A record is one format byte followed by a protobuf message (written and
// read with protowire: one field number per field of the library's
// *Structure types, listed at the encoders below). The format byte keeps
// records written before the format existed readable: those are the
// library's JSON encoding and always start with '{'. Such a record is
// decoded as JSON and written back binary the next time the operation that
// read it stores it — a per-record migration with no separate step, so a
// profile upgraded mid-conversation loses nothing.
//
// The decoder trusts nothing: every length is checked against the input,
// every repeated field and the whole record are capped, every key has the
// size the library produces (the library indexes into keys without
// checking), and a malformed record is an ErrCorruptRecord error naming the
// field, never a panic. The caps are above the library's own (40 archived
// states, 5 receiver chains, 2,000 skipped message keys per chain, 5
// sender-key states), so whatever the library can hold round-trips.
const (
	// recordFormatJSON is the first byte of every record the library's JSON
	// serializer wrote.
	recordFormatJSON = '{'
	// recordFormatBinary is the first byte of a binary record.
	recordFormatBinary = 0x01

	maxRecordSize          = 64 << 20
	maxSessionStates       = 64
	maxReceiverChains      = 16
	maxChainMessageKeys    = 4096
	maxSenderKeyStates     = 16
	maxSenderKeyMessageKey = 4096

	publicKeySize = 33 // 0x05 ‖ X25519
	rawKeySize    = 32 // X25519 private key, or public key without the type byte
	symKeySize    = 32 // root, chain, cipher and MAC keys
	ivSize        = 16
)

// errRecord builds the error for a malformed binary record.
func errRecord(format string, args ...any) error {
	return fmt.Errorf("%w: %s", ErrCorruptRecord, fmt.Sprintf(format, args...))
}

// legacy JSON decoders; stateless.
var (
	jsonSession        serialize.JSONSessionSerializer
	jsonState          serialize.JSONStateSerializer
	jsonSenderKey      serialize.JSONSenderKeySessionSerializer
	jsonSenderKeyState serialize.JSONSenderKeyStateSerializer
)

// recordBody checks the size and the format byte of a stored record and
// returns the binary body, or json=true for a legacy record.
func recordBody(b []byte, what string) (body []byte, json bool, err error) {
	switch {
	case len(b) == 0:
		return nil, false, errRecord("%s: empty", what)
	case len(b) > maxRecordSize:
		return nil, false, errRecord("%s: %d bytes (limit %d)", what, len(b), maxRecordSize)
	case b[0] == recordFormatJSON:
		return nil, true, nil
	case b[0] == recordFormatBinary:
		// One copy of the input, shared by every byte field decoded from
		// it (each capped to its own length): the caller may reuse b, and
		// the library keeps key slices for as long as the record lives.
		return append([]byte(nil), b[1:]...), false, nil
	default:
		return nil, false, errRecord("%s: unknown format byte 0x%02x", what, b[0])
	}
}

// --- session records ---

type sessionSerializer struct{}

// Session record fields.
const (
	fSessionCurrent  = 1 // State
	fSessionPrevious = 2 // repeated State, newest first
)

func (sessionSerializer) Serialize(s *record.SessionStructure) []byte {
	// Each state's size, computed once (the library keeps at most 40
	// archived states).
	var sizesBuf [8]int
	sizes := sizesBuf[:0]
	n := 1
	if s.SessionState != nil {
		sizes = append(sizes, sizeState(s.SessionState))
		n += sizeMessage(fSessionCurrent, sizes[0])
	}
	for _, st := range s.PreviousStates {
		sizes = append(sizes, sizeState(st))
		n += sizeMessage(fSessionPrevious, sizes[len(sizes)-1])
	}
	b := make([]byte, 1, n)
	b[0] = recordFormatBinary
	if s.SessionState != nil {
		b = appendState(appendMessageHeader(b, fSessionCurrent, sizes[0]), s.SessionState)
		sizes = sizes[1:]
	}
	for i, st := range s.PreviousStates {
		b = appendState(appendMessageHeader(b, fSessionPrevious, sizes[i]), st)
	}
	return b
}

func (sessionSerializer) Deserialize(b []byte) (*record.SessionStructure, error) {
	body, isJSON, err := recordBody(b, "session record")
	if err != nil {
		return nil, err
	}
	if isJSON {
		return jsonSession.Deserialize(b)
	}
	s := &record.SessionStructure{}
	err = fields(body, "session record", func(num protowire.Number, typ protowire.Type, v []byte, _ uint64) error {
		switch num {
		case fSessionCurrent, fSessionPrevious:
			if typ != protowire.BytesType {
				return errRecord("session record: field %d: wire type %d", num, typ)
			}
			st, err := decodeState(v)
			if err != nil {
				return err
			}
			if num == fSessionCurrent {
				s.SessionState = st
				return nil
			}
			if len(s.PreviousStates) == maxSessionStates {
				return errRecord("session record: more than %d archived states", maxSessionStates)
			}
			s.PreviousStates = append(s.PreviousStates, st)
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	if s.SessionState == nil {
		return nil, errRecord("session record: no current state")
	}
	return s, nil
}

type stateSerializer struct{}

func (stateSerializer) Serialize(s *record.StateStructure) []byte {
	b := make([]byte, 1, 1+sizeState(s))
	b[0] = recordFormatBinary
	return appendState(b, s)
}

func (stateSerializer) Deserialize(b []byte) (*record.StateStructure, error) {
	body, isJSON, err := recordBody(b, "session state")
	if err != nil {
		return nil, err
	}
	if isJSON {
		return jsonState.Deserialize(b)
	}
	return decodeState(body)
}

// Session state fields (record.StateStructure).
const (
	fStateLocalIdentity      = 1  // bytes, 33
	fStateLocalRegistration  = 2  // varint
	fStateNeedsRefresh       = 3  // bool
	fStatePendingKeyExchange = 4  // PendingKeyExchange
	fStatePendingPreKey      = 5  // PendingPreKey
	fStatePreviousCounter    = 6  // varint
	fStateReceiverChain      = 7  // repeated Chain
	fStateRemoteIdentity     = 8  // bytes, 33
	fStateRemoteRegistration = 9  // varint
	fStateRootKey            = 10 // bytes, 32
	fStateSenderBaseKey      = 11 // bytes, 33
	fStateSenderChain        = 12 // Chain
	fStateVersion            = 13 // varint
)

// Chain fields (record.ChainStructure), with the chain key inline.
const (
	fChainRatchetPublic  = 1 // bytes, 33
	fChainRatchetPrivate = 2 // bytes, 32; absent on receiver chains
	fChainKey            = 3 // bytes, 32
	fChainIndex          = 4 // varint
	fChainMessageKeys    = 5 // repeated MessageKeys
)

// Message key fields (message.KeysStructure).
const (
	fKeysCipher = 1 // bytes, 32
	fKeysMAC    = 2 // bytes, 32
	fKeysIV     = 3 // bytes, 16
	fKeysIndex  = 4 // varint
)

// Pending prekey fields (record.PendingPreKeyStructure).
const (
	fPendingPreKeyID      = 1 // varint: the one-time prekey id, when one was used
	fPendingSignedPreKey  = 2 // varint
	fPendingBaseKey       = 3 // bytes, 33
	fPendingPreKeyIDEmpty = 4 // bool: an id field that says "no one-time prekey"
)

// Pending key exchange fields (record.PendingKeyExchangeStructure); the
// library never creates one, but its structure has the field.
const (
	fKXSequence        = 1
	fKXBasePublic      = 2
	fKXBasePrivate     = 3
	fKXRatchetPublic   = 4
	fKXRatchetPrivate  = 5
	fKXIdentityPublic  = 6
	fKXIdentityPrivate = 7
)

func sizeBytes(num protowire.Number, v []byte) int {
	if len(v) == 0 {
		return 0
	}
	return protowire.SizeTag(num) + protowire.SizeBytes(len(v))
}

func sizeVarint(num protowire.Number, v uint64) int {
	if v == 0 {
		return 0
	}
	return protowire.SizeTag(num) + protowire.SizeVarint(v)
}

func sizeMessage(num protowire.Number, n int) int {
	return protowire.SizeTag(num) + protowire.SizeBytes(n)
}

func appendBytes(b []byte, num protowire.Number, v []byte) []byte {
	if len(v) == 0 {
		return b
	}
	return protowire.AppendBytes(protowire.AppendTag(b, num, protowire.BytesType), v)
}

func appendVarint(b []byte, num protowire.Number, v uint64) []byte {
	if v == 0 {
		return b
	}
	return protowire.AppendVarint(protowire.AppendTag(b, num, protowire.VarintType), v)
}

func appendMessageHeader(b []byte, num protowire.Number, n int) []byte {
	return protowire.AppendVarint(protowire.AppendTag(b, num, protowire.BytesType), uint64(n))
}

func boolVarint(v bool) uint64 {
	if v {
		return 1
	}
	return 0
}

func sizeState(s *record.StateStructure) int {
	n := sizeBytes(fStateLocalIdentity, s.LocalIdentityPublic) +
		sizeVarint(fStateLocalRegistration, uint64(s.LocalRegistrationID)) +
		sizeVarint(fStateNeedsRefresh, boolVarint(s.NeedsRefresh)) +
		sizeVarint(fStatePreviousCounter, uint64(s.PreviousCounter)) +
		sizeBytes(fStateRemoteIdentity, s.RemoteIdentityPublic) +
		sizeVarint(fStateRemoteRegistration, uint64(s.RemoteRegistrationID)) +
		sizeBytes(fStateRootKey, s.RootKey) +
		sizeBytes(fStateSenderBaseKey, s.SenderBaseKey) +
		sizeVarint(fStateVersion, uint64(s.SessionVersion))
	if s.PendingKeyExchange != nil {
		n += sizeMessage(fStatePendingKeyExchange, sizeKeyExchange(s.PendingKeyExchange))
	}
	if s.PendingPreKey != nil {
		n += sizeMessage(fStatePendingPreKey, sizePendingPreKey(s.PendingPreKey))
	}
	for _, c := range s.ReceiverChains {
		n += sizeMessage(fStateReceiverChain, sizeChain(c))
	}
	if s.SenderChain != nil {
		n += sizeMessage(fStateSenderChain, sizeChain(s.SenderChain))
	}
	return n
}

func appendState(b []byte, s *record.StateStructure) []byte {
	b = appendBytes(b, fStateLocalIdentity, s.LocalIdentityPublic)
	b = appendVarint(b, fStateLocalRegistration, uint64(s.LocalRegistrationID))
	b = appendVarint(b, fStateNeedsRefresh, boolVarint(s.NeedsRefresh))
	if s.PendingKeyExchange != nil {
		b = appendKeyExchange(appendMessageHeader(b, fStatePendingKeyExchange, sizeKeyExchange(s.PendingKeyExchange)), s.PendingKeyExchange)
	}
	if s.PendingPreKey != nil {
		b = appendPendingPreKey(appendMessageHeader(b, fStatePendingPreKey, sizePendingPreKey(s.PendingPreKey)), s.PendingPreKey)
	}
	b = appendVarint(b, fStatePreviousCounter, uint64(s.PreviousCounter))
	for _, c := range s.ReceiverChains {
		b = appendChain(appendMessageHeader(b, fStateReceiverChain, sizeChain(c)), c)
	}
	b = appendBytes(b, fStateRemoteIdentity, s.RemoteIdentityPublic)
	b = appendVarint(b, fStateRemoteRegistration, uint64(s.RemoteRegistrationID))
	b = appendBytes(b, fStateRootKey, s.RootKey)
	b = appendBytes(b, fStateSenderBaseKey, s.SenderBaseKey)
	if s.SenderChain != nil {
		b = appendChain(appendMessageHeader(b, fStateSenderChain, sizeChain(s.SenderChain)), s.SenderChain)
	}
	return appendVarint(b, fStateVersion, uint64(s.SessionVersion))
}

func sizeChain(c *record.ChainStructure) int {
	n := sizeBytes(fChainRatchetPublic, c.SenderRatchetKeyPublic) +
		sizeBytes(fChainRatchetPrivate, c.SenderRatchetKeyPrivate)
	if c.ChainKey != nil {
		n += sizeBytes(fChainKey, c.ChainKey.Key) + sizeVarint(fChainIndex, uint64(c.ChainKey.Index))
	}
	for _, k := range c.MessageKeys {
		n += sizeMessage(fChainMessageKeys, sizeMessageKeys(k))
	}
	return n
}

func appendChain(b []byte, c *record.ChainStructure) []byte {
	b = appendBytes(b, fChainRatchetPublic, c.SenderRatchetKeyPublic)
	b = appendBytes(b, fChainRatchetPrivate, c.SenderRatchetKeyPrivate)
	if c.ChainKey != nil {
		b = appendBytes(b, fChainKey, c.ChainKey.Key)
		b = appendVarint(b, fChainIndex, uint64(c.ChainKey.Index))
	}
	for _, k := range c.MessageKeys {
		b = appendMessageKeys(appendMessageHeader(b, fChainMessageKeys, sizeMessageKeys(k)), k)
	}
	return b
}

func sizeMessageKeys(k *message.KeysStructure) int {
	return sizeBytes(fKeysCipher, k.CipherKey) + sizeBytes(fKeysMAC, k.MacKey) +
		sizeBytes(fKeysIV, k.IV) + sizeVarint(fKeysIndex, uint64(k.Index))
}

func appendMessageKeys(b []byte, k *message.KeysStructure) []byte {
	b = appendBytes(b, fKeysCipher, k.CipherKey)
	b = appendBytes(b, fKeysMAC, k.MacKey)
	b = appendBytes(b, fKeysIV, k.IV)
	return appendVarint(b, fKeysIndex, uint64(k.Index))
}

func sizePendingPreKey(p *record.PendingPreKeyStructure) int {
	n := sizeVarint(fPendingSignedPreKey, uint64(p.SignedPreKeyID)) + sizeBytes(fPendingBaseKey, p.BaseKey)
	switch {
	case p.PreKeyID == nil:
	case p.PreKeyID.IsEmpty:
		n += sizeVarint(fPendingPreKeyIDEmpty, 1)
	default:
		// A set id is written even when it is 0, so that it is not read
		// back as "no id".
		n += protowire.SizeTag(fPendingPreKeyID) + protowire.SizeVarint(uint64(p.PreKeyID.Value))
	}
	return n
}

func appendPendingPreKey(b []byte, p *record.PendingPreKeyStructure) []byte {
	switch {
	case p.PreKeyID == nil:
	case p.PreKeyID.IsEmpty:
		b = appendVarint(b, fPendingPreKeyIDEmpty, 1)
	default:
		b = protowire.AppendVarint(protowire.AppendTag(b, fPendingPreKeyID, protowire.VarintType), uint64(p.PreKeyID.Value))
	}
	b = appendVarint(b, fPendingSignedPreKey, uint64(p.SignedPreKeyID))
	return appendBytes(b, fPendingBaseKey, p.BaseKey)
}

func sizeKeyExchange(k *record.PendingKeyExchangeStructure) int {
	return sizeVarint(fKXSequence, uint64(k.Sequence)) +
		sizeBytes(fKXBasePublic, k.LocalBaseKeyPublic) + sizeBytes(fKXBasePrivate, k.LocalBaseKeyPrivate) +
		sizeBytes(fKXRatchetPublic, k.LocalRatchetKeyPublic) + sizeBytes(fKXRatchetPrivate, k.LocalRatchetKeyPrivate) +
		sizeBytes(fKXIdentityPublic, k.LocalIdentityKeyPublic) + sizeBytes(fKXIdentityPrivate, k.LocalIdentityKeyPrivate)
}

func appendKeyExchange(b []byte, k *record.PendingKeyExchangeStructure) []byte {
	b = appendVarint(b, fKXSequence, uint64(k.Sequence))
	b = appendBytes(b, fKXBasePublic, k.LocalBaseKeyPublic)
	b = appendBytes(b, fKXBasePrivate, k.LocalBaseKeyPrivate)
	b = appendBytes(b, fKXRatchetPublic, k.LocalRatchetKeyPublic)
	b = appendBytes(b, fKXRatchetPrivate, k.LocalRatchetKeyPrivate)
	b = appendBytes(b, fKXIdentityPublic, k.LocalIdentityKeyPublic)
	return appendBytes(b, fKXIdentityPrivate, k.LocalIdentityKeyPrivate)
}

// --- decoding ---

// fields walks the fields of one message in b and calls fn with each one's
// number, wire type and value: the payload for BytesType, the number for
// VarintType (other wire types are skipped). It never reads past b.
func fields(b []byte, what string, fn func(num protowire.Number, typ protowire.Type, v []byte, n uint64) error) error {
	for len(b) > 0 {
		num, typ, n := protowire.ConsumeTag(b)
		if n < 0 {
			return errRecord("%s: bad field tag: %v", what, protowire.ParseError(n))
		}
		if !num.IsValid() {
			return errRecord("%s: bad field number %d", what, num)
		}
		b = b[n:]
		var (
			v  []byte
			vn uint64
		)
		switch typ {
		case protowire.BytesType:
			v, n = protowire.ConsumeBytes(b)
			// Cap the capacity: a library append to one key must not run
			// into the next field of the shared buffer.
			v = v[:len(v):len(v)]
		case protowire.VarintType:
			vn, n = protowire.ConsumeVarint(b)
		default:
			n = protowire.ConsumeFieldValue(num, typ, b)
		}
		if n < 0 {
			return errRecord("%s: field %d: %v", what, num, protowire.ParseError(n))
		}
		b = b[n:]
		if typ != protowire.BytesType && typ != protowire.VarintType {
			continue // unknown field of another wire type
		}
		if err := fn(num, typ, v, vn); err != nil {
			return err
		}
	}
	return nil
}

// scalar checks a known field's wire type and size.
type scalar struct {
	what string
	typ  protowire.Type
	num  protowire.Number
}

func (s scalar) check(typ protowire.Type) error {
	if typ != s.typ {
		return errRecord("%s: field %d: wire type %d, want %d", s.what, s.num, typ, s.typ)
	}
	return nil
}

func keyField(what string, num protowire.Number, typ protowire.Type, v []byte, size int) ([]byte, error) {
	if err := (scalar{what, protowire.BytesType, num}).check(typ); err != nil {
		return nil, err
	}
	if len(v) != size {
		return nil, errRecord("%s: %d bytes, want %d", what, len(v), size)
	}
	return v, nil
}

func publicKeyField(what string, num protowire.Number, typ protowire.Type, v []byte) ([]byte, error) {
	v, err := keyField(what, num, typ, v, publicKeySize)
	if err != nil {
		return nil, err
	}
	if v[0] != 0x05 {
		return nil, errRecord("%s: key type 0x%02x, want 0x05", what, v[0])
	}
	return v, nil
}

func uint32Field(what string, num protowire.Number, typ protowire.Type, n uint64) (uint32, error) {
	if err := (scalar{what, protowire.VarintType, num}).check(typ); err != nil {
		return 0, err
	}
	if n > 1<<32-1 {
		return 0, errRecord("%s: %d out of range", what, n)
	}
	return uint32(n), nil
}

func boolField(what string, num protowire.Number, typ protowire.Type, n uint64) (bool, error) {
	if err := (scalar{what, protowire.VarintType, num}).check(typ); err != nil {
		return false, err
	}
	if n > 1 {
		return false, errRecord("%s: %d is not a bool", what, n)
	}
	return n == 1, nil
}

func messageField(what string, num protowire.Number, typ protowire.Type) error {
	return (scalar{what, protowire.BytesType, num}).check(typ)
}

func decodeState(b []byte) (*record.StateStructure, error) {
	s := &record.StateStructure{}
	err := fields(b, "session state", func(num protowire.Number, typ protowire.Type, v []byte, n uint64) error {
		var err error
		switch num {
		case fStateLocalIdentity:
			s.LocalIdentityPublic, err = publicKeyField("session state: local identity key", num, typ, v)
		case fStateLocalRegistration:
			s.LocalRegistrationID, err = uint32Field("session state: local registration id", num, typ, n)
		case fStateNeedsRefresh:
			s.NeedsRefresh, err = boolField("session state: needs refresh", num, typ, n)
		case fStatePendingKeyExchange:
			if err = messageField("session state: pending key exchange", num, typ); err == nil {
				s.PendingKeyExchange, err = decodeKeyExchange(v)
			}
		case fStatePendingPreKey:
			if err = messageField("session state: pending prekey", num, typ); err == nil {
				s.PendingPreKey, err = decodePendingPreKey(v)
			}
		case fStatePreviousCounter:
			s.PreviousCounter, err = uint32Field("session state: previous counter", num, typ, n)
		case fStateReceiverChain:
			if err = messageField("session state: receiver chain", num, typ); err != nil {
				return err
			}
			if len(s.ReceiverChains) == maxReceiverChains {
				return errRecord("session state: more than %d receiver chains", maxReceiverChains)
			}
			var c *record.ChainStructure
			if c, err = decodeChain(v, "receiver chain"); err == nil {
				s.ReceiverChains = append(s.ReceiverChains, c)
			}
		case fStateRemoteIdentity:
			s.RemoteIdentityPublic, err = publicKeyField("session state: remote identity key", num, typ, v)
		case fStateRemoteRegistration:
			s.RemoteRegistrationID, err = uint32Field("session state: remote registration id", num, typ, n)
		case fStateRootKey:
			s.RootKey, err = keyField("session state: root key", num, typ, v, symKeySize)
		case fStateSenderBaseKey:
			s.SenderBaseKey, err = publicKeyField("session state: sender base key", num, typ, v)
		case fStateSenderChain:
			if err = messageField("session state: sender chain", num, typ); err == nil {
				s.SenderChain, err = decodeChain(v, "sender chain")
			}
		case fStateVersion:
			var version uint32
			version, err = uint32Field("session state: version", num, typ, n)
			if err == nil && version > 255 {
				err = errRecord("session state: version %d out of range", version)
			}
			s.SessionVersion = int(version)
		}
		return err
	})
	if err != nil {
		return nil, err
	}
	// The library dereferences these without checking.
	switch {
	case s.LocalIdentityPublic == nil:
		return nil, errRecord("session state: no local identity key")
	case s.RemoteIdentityPublic == nil:
		return nil, errRecord("session state: no remote identity key")
	case s.SenderBaseKey == nil:
		return nil, errRecord("session state: no sender base key")
	case s.RootKey == nil:
		return nil, errRecord("session state: no root key")
	case s.SenderChain == nil:
		return nil, errRecord("session state: no sender chain")
	}
	return s, nil
}

func decodeChain(b []byte, what string) (*record.ChainStructure, error) {
	what = "session state: " + what
	c := &record.ChainStructure{ChainKey: &chain.KeyStructure{}}
	err := fields(b, what, func(num protowire.Number, typ protowire.Type, v []byte, n uint64) error {
		var err error
		switch num {
		case fChainRatchetPublic:
			c.SenderRatchetKeyPublic, err = publicKeyField(what+": ratchet key", num, typ, v)
		case fChainRatchetPrivate:
			c.SenderRatchetKeyPrivate, err = keyField(what+": ratchet private key", num, typ, v, rawKeySize)
		case fChainKey:
			c.ChainKey.Key, err = keyField(what+": chain key", num, typ, v, symKeySize)
		case fChainIndex:
			c.ChainKey.Index, err = uint32Field(what+": chain index", num, typ, n)
		case fChainMessageKeys:
			if err = messageField(what+": message keys", num, typ); err != nil {
				return err
			}
			if len(c.MessageKeys) == maxChainMessageKeys {
				return errRecord("%s: more than %d message keys", what, maxChainMessageKeys)
			}
			var k *message.KeysStructure
			if k, err = decodeMessageKeys(v, what); err == nil {
				c.MessageKeys = append(c.MessageKeys, k)
			}
		}
		return err
	})
	if err != nil {
		return nil, err
	}
	if c.SenderRatchetKeyPublic == nil {
		return nil, errRecord("%s: no ratchet key", what)
	}
	if c.ChainKey.Key == nil {
		return nil, errRecord("%s: no chain key", what)
	}
	return c, nil
}

func decodeMessageKeys(b []byte, what string) (*message.KeysStructure, error) {
	what += ": message keys"
	k := &message.KeysStructure{}
	err := fields(b, what, func(num protowire.Number, typ protowire.Type, v []byte, n uint64) error {
		var err error
		switch num {
		case fKeysCipher:
			k.CipherKey, err = keyField(what+": cipher key", num, typ, v, symKeySize)
		case fKeysMAC:
			k.MacKey, err = keyField(what+": MAC key", num, typ, v, symKeySize)
		case fKeysIV:
			k.IV, err = keyField(what+": IV", num, typ, v, ivSize)
		case fKeysIndex:
			k.Index, err = uint32Field(what+": index", num, typ, n)
		}
		return err
	})
	if err != nil {
		return nil, err
	}
	if k.CipherKey == nil || k.MacKey == nil || k.IV == nil {
		return nil, errRecord("%s: incomplete", what)
	}
	return k, nil
}

func decodePendingPreKey(b []byte) (*record.PendingPreKeyStructure, error) {
	const what = "session state: pending prekey"
	p := &record.PendingPreKeyStructure{}
	err := fields(b, what, func(num protowire.Number, typ protowire.Type, v []byte, n uint64) error {
		var err error
		switch num {
		case fPendingPreKeyID:
			var id uint32
			if id, err = uint32Field(what+": prekey id", num, typ, n); err == nil {
				p.PreKeyID = optional.NewOptionalUint32(id)
			}
		case fPendingPreKeyIDEmpty:
			var empty bool
			if empty, err = boolField(what+": no prekey id", num, typ, n); err == nil && empty {
				p.PreKeyID = optional.NewEmptyUint32()
			}
		case fPendingSignedPreKey:
			p.SignedPreKeyID, err = uint32Field(what+": signed prekey id", num, typ, n)
		case fPendingBaseKey:
			p.BaseKey, err = publicKeyField(what+": base key", num, typ, v)
		}
		return err
	})
	if err != nil {
		return nil, err
	}
	if p.BaseKey == nil {
		return nil, errRecord("%s: no base key", what)
	}
	if p.PreKeyID == nil {
		// The library builds every pending prekey with an id (maybe an
		// empty one) and dereferences it when it sends.
		return nil, errRecord("%s: no prekey id", what)
	}
	return p, nil
}

func decodeKeyExchange(b []byte) (*record.PendingKeyExchangeStructure, error) {
	const what = "session state: pending key exchange"
	k := &record.PendingKeyExchangeStructure{}
	err := fields(b, what, func(num protowire.Number, typ protowire.Type, v []byte, n uint64) error {
		var err error
		switch num {
		case fKXSequence:
			k.Sequence, err = uint32Field(what+": sequence", num, typ, n)
		case fKXBasePublic:
			k.LocalBaseKeyPublic, err = keyField(what+": base key", num, typ, v, rawKeySize)
		case fKXBasePrivate:
			k.LocalBaseKeyPrivate, err = keyField(what+": base private key", num, typ, v, rawKeySize)
		case fKXRatchetPublic:
			k.LocalRatchetKeyPublic, err = keyField(what+": ratchet key", num, typ, v, rawKeySize)
		case fKXRatchetPrivate:
			k.LocalRatchetKeyPrivate, err = keyField(what+": ratchet private key", num, typ, v, rawKeySize)
		case fKXIdentityPublic:
			k.LocalIdentityKeyPublic, err = keyField(what+": identity key", num, typ, v, rawKeySize)
		case fKXIdentityPrivate:
			k.LocalIdentityKeyPrivate, err = keyField(what+": identity private key", num, typ, v, rawKeySize)
		}
		return err
	})
	if err != nil {
		return nil, err
	}
	return k, nil
}

// --- sender-key records ---

type senderKeySerializer struct{}

// Sender-key record fields (grouprecord.SenderKeyStructure).
const fSenderKeyState = 1 // repeated SenderKeyState, newest first

// Sender-key state fields (grouprecord.SenderKeyStateStructure), with the
// chain key inline.
const (
	fSKKeyID          = 1 // varint
	fSKChainIteration = 2 // varint
	fSKChainKey       = 3 // bytes, 32
	fSKSigningPublic  = 4 // bytes, 33
	fSKSigningPrivate = 5 // bytes, 32; zeros or absent for other members' keys
	fSKMessageKey     = 6 // repeated SenderMessageKey
)

// Sender message key fields (ratchet.SenderMessageKeyStructure).
const (
	fSMKIteration = 1 // varint
	fSMKIV        = 2 // bytes, 16
	fSMKCipherKey = 3 // bytes, 32
	fSMKSeed      = 4 // bytes, 32
)

func (senderKeySerializer) Serialize(s *grouprecord.SenderKeyStructure) []byte {
	n := 1
	for _, st := range s.SenderKeyStates {
		n += sizeMessage(fSenderKeyState, sizeSenderKeyState(st))
	}
	b := make([]byte, 1, n)
	b[0] = recordFormatBinary
	for _, st := range s.SenderKeyStates {
		b = appendSenderKeyState(appendMessageHeader(b, fSenderKeyState, sizeSenderKeyState(st)), st)
	}
	return b
}

func (senderKeySerializer) Deserialize(b []byte) (*grouprecord.SenderKeyStructure, error) {
	body, isJSON, err := recordBody(b, "sender key record")
	if err != nil {
		return nil, err
	}
	if isJSON {
		return jsonSenderKey.Deserialize(b)
	}
	s := &grouprecord.SenderKeyStructure{}
	err = fields(body, "sender key record", func(num protowire.Number, typ protowire.Type, v []byte, _ uint64) error {
		if num != fSenderKeyState {
			return nil
		}
		if err := messageField("sender key record: state", num, typ); err != nil {
			return err
		}
		if len(s.SenderKeyStates) == maxSenderKeyStates {
			return errRecord("sender key record: more than %d states", maxSenderKeyStates)
		}
		st, err := decodeSenderKeyState(v)
		if err != nil {
			return err
		}
		s.SenderKeyStates = append(s.SenderKeyStates, st)
		return nil
	})
	if err != nil {
		return nil, err
	}
	return s, nil
}

type senderKeyStateSerializer struct{}

func (senderKeyStateSerializer) Serialize(s *grouprecord.SenderKeyStateStructure) []byte {
	b := make([]byte, 1, 1+sizeSenderKeyState(s))
	b[0] = recordFormatBinary
	return appendSenderKeyState(b, s)
}

func (senderKeyStateSerializer) Deserialize(b []byte) (*grouprecord.SenderKeyStateStructure, error) {
	body, isJSON, err := recordBody(b, "sender key state")
	if err != nil {
		return nil, err
	}
	if isJSON {
		return jsonSenderKeyState.Deserialize(b)
	}
	return decodeSenderKeyState(body)
}

func sizeSenderKeyState(s *grouprecord.SenderKeyStateStructure) int {
	n := sizeVarint(fSKKeyID, uint64(s.KeyID)) +
		sizeBytes(fSKSigningPublic, s.SigningKeyPublic) + sizeBytes(fSKSigningPrivate, s.SigningKeyPrivate)
	if s.SenderChainKey != nil {
		n += sizeVarint(fSKChainIteration, uint64(s.SenderChainKey.Iteration)) + sizeBytes(fSKChainKey, s.SenderChainKey.ChainKey)
	}
	for _, k := range s.Keys {
		n += sizeMessage(fSKMessageKey, sizeSenderMessageKey(k))
	}
	return n
}

func appendSenderKeyState(b []byte, s *grouprecord.SenderKeyStateStructure) []byte {
	b = appendVarint(b, fSKKeyID, uint64(s.KeyID))
	if s.SenderChainKey != nil {
		b = appendVarint(b, fSKChainIteration, uint64(s.SenderChainKey.Iteration))
		b = appendBytes(b, fSKChainKey, s.SenderChainKey.ChainKey)
	}
	b = appendBytes(b, fSKSigningPublic, s.SigningKeyPublic)
	b = appendBytes(b, fSKSigningPrivate, s.SigningKeyPrivate)
	for _, k := range s.Keys {
		b = appendSenderMessageKey(appendMessageHeader(b, fSKMessageKey, sizeSenderMessageKey(k)), k)
	}
	return b
}

func sizeSenderMessageKey(k *ratchet.SenderMessageKeyStructure) int {
	return sizeVarint(fSMKIteration, uint64(k.Iteration)) + sizeBytes(fSMKIV, k.IV) +
		sizeBytes(fSMKCipherKey, k.CipherKey) + sizeBytes(fSMKSeed, k.Seed)
}

func appendSenderMessageKey(b []byte, k *ratchet.SenderMessageKeyStructure) []byte {
	b = appendVarint(b, fSMKIteration, uint64(k.Iteration))
	b = appendBytes(b, fSMKIV, k.IV)
	b = appendBytes(b, fSMKCipherKey, k.CipherKey)
	return appendBytes(b, fSMKSeed, k.Seed)
}

func decodeSenderKeyState(b []byte) (*grouprecord.SenderKeyStateStructure, error) {
	const what = "sender key state"
	s := &grouprecord.SenderKeyStateStructure{SenderChainKey: &ratchet.SenderChainKeyStructure{}}
	err := fields(b, what, func(num protowire.Number, typ protowire.Type, v []byte, n uint64) error {
		var err error
		switch num {
		case fSKKeyID:
			s.KeyID, err = uint32Field(what+": key id", num, typ, n)
		case fSKChainIteration:
			s.SenderChainKey.Iteration, err = uint32Field(what+": chain iteration", num, typ, n)
		case fSKChainKey:
			s.SenderChainKey.ChainKey, err = keyField(what+": chain key", num, typ, v, symKeySize)
		case fSKSigningPublic:
			s.SigningKeyPublic, err = publicKeyField(what+": signing key", num, typ, v)
		case fSKSigningPrivate:
			s.SigningKeyPrivate, err = keyField(what+": signing private key", num, typ, v, rawKeySize)
		case fSKMessageKey:
			if err = messageField(what+": message key", num, typ); err != nil {
				return err
			}
			if len(s.Keys) == maxSenderKeyMessageKey {
				return errRecord("%s: more than %d message keys", what, maxSenderKeyMessageKey)
			}
			var k *ratchet.SenderMessageKeyStructure
			if k, err = decodeSenderMessageKey(v); err == nil {
				s.Keys = append(s.Keys, k)
			}
		}
		return err
	})
	if err != nil {
		return nil, err
	}
	if s.SigningKeyPublic == nil {
		return nil, errRecord("%s: no signing key", what)
	}
	if s.SenderChainKey.ChainKey == nil {
		return nil, errRecord("%s: no chain key", what)
	}
	return s, nil
}

func decodeSenderMessageKey(b []byte) (*ratchet.SenderMessageKeyStructure, error) {
	const what = "sender key state: message key"
	k := &ratchet.SenderMessageKeyStructure{}
	err := fields(b, what, func(num protowire.Number, typ protowire.Type, v []byte, n uint64) error {
		var err error
		switch num {
		case fSMKIteration:
			k.Iteration, err = uint32Field(what+": iteration", num, typ, n)
		case fSMKIV:
			k.IV, err = keyField(what+": IV", num, typ, v, ivSize)
		case fSMKCipherKey:
			k.CipherKey, err = keyField(what+": cipher key", num, typ, v, symKeySize)
		case fSMKSeed:
			k.Seed, err = keyField(what+": seed", num, typ, v, symKeySize)
		}
		return err
	})
	if err != nil {
		return nil, err
	}
	if k.IV == nil || k.CipherKey == nil || k.Seed == nil {
		return nil, errRecord("%s: incomplete", what)
	}
	return k, nil
}
