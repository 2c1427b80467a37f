package crypto

import (
	"errors"
	"fmt"
	"strconv"

	"go.mau.fi/libsignal/protocol"
	"google.golang.org/protobuf/encoding/protowire"
)

// signalMessageSerializer encodes SignalMessages — the message of every
// established session — byte for byte as the library's
// serialize.ProtoBufSignalMessageSerializer does (version digit ‖ protobuf
// SignalMessage ‖ 8-byte MAC), with protowire instead of reflection-driven
// proto.Marshal/Unmarshal, which cost ~10% of an encrypt or decrypt. The
// library encodes a message three times per decrypt (parse check, MAC
// check) and twice per encrypt. wire_test.go compares both directions with
// the library's serializer.
//
// Fields (WhisperTextProtocol.proto, proto2): ratchetKey = 1 (bytes),
// counter = 2, previousCounter = 3 (uint32, always written), ciphertext =
// 4 (bytes); a bytes field is written when non-nil, as protobuf-go does
// for proto2.
type signalMessageSerializer struct{}

const (
	fSMRatchetKey      = 1
	fSMCounter         = 2
	fSMPreviousCounter = 3
	fSMCiphertext      = 4
)

func (signalMessageSerializer) Serialize(m *protocol.SignalMessageStructure) []byte {
	n := protowire.SizeTag(fSMCounter) + protowire.SizeVarint(uint64(m.Counter)) +
		protowire.SizeTag(fSMPreviousCounter) + protowire.SizeVarint(uint64(m.PreviousCounter)) + len(m.Mac)
	if m.Version != 0 {
		n += 3
	}
	if m.RatchetKey != nil {
		n += protowire.SizeTag(fSMRatchetKey) + protowire.SizeBytes(len(m.RatchetKey))
	}
	if m.CipherText != nil {
		n += protowire.SizeTag(fSMCiphertext) + protowire.SizeBytes(len(m.CipherText))
	}
	return appendSignalMessage(make([]byte, 0, n), m)
}

// appendSignalMessage appends m's encoding (Serialize) to b.
func appendSignalMessage(b []byte, m *protocol.SignalMessageStructure) []byte {
	if m.Version != 0 {
		b = strconv.AppendInt(b, int64(m.Version), 10)
	}
	if m.RatchetKey != nil {
		b = protowire.AppendBytes(protowire.AppendTag(b, fSMRatchetKey, protowire.BytesType), m.RatchetKey)
	}
	b = protowire.AppendVarint(protowire.AppendTag(b, fSMCounter, protowire.VarintType), uint64(m.Counter))
	b = protowire.AppendVarint(protowire.AppendTag(b, fSMPreviousCounter, protowire.VarintType), uint64(m.PreviousCounter))
	if m.CipherText != nil {
		b = protowire.AppendBytes(protowire.AppendTag(b, fSMCiphertext, protowire.BytesType), m.CipherText)
	}
	return append(b, m.Mac...)
}

var errShortSignalMessage = errors.New("signal message too short")

// Deserialize reads what the library's deserializer reads: the version
// from the first byte's high nibble, the MAC from the last 8 bytes, the
// protobuf fields in between (any order, the last occurrence wins, unknown
// fields skipped). The result's slices share one copy of b.
func (signalMessageSerializer) Deserialize(b []byte) (*protocol.SignalMessageStructure, error) {
	if len(b) < 1+protocol.MacLength {
		return nil, errShortSignalMessage
	}
	c := append([]byte(nil), b...)
	m := &protocol.SignalMessageStructure{
		Version: int(c[0] >> 4),
		Mac:     c[len(c)-protocol.MacLength:],
	}
	body := c[1 : len(c)-protocol.MacLength : len(c)-protocol.MacLength]
	for len(body) > 0 {
		num, typ, n := protowire.ConsumeTag(body)
		if n < 0 {
			return nil, fmt.Errorf("signal message: %w", protowire.ParseError(n))
		}
		if !num.IsValid() {
			return nil, fmt.Errorf("signal message: invalid field number %d", num)
		}
		body = body[n:]
		switch {
		case (num == fSMRatchetKey || num == fSMCiphertext) && typ == protowire.BytesType:
			v, n := protowire.ConsumeBytes(body)
			if n < 0 {
				return nil, fmt.Errorf("signal message field %d: %w", num, protowire.ParseError(n))
			}
			v = v[:len(v):len(v)]
			if num == fSMRatchetKey {
				m.RatchetKey = v
			} else {
				m.CipherText = v
			}
			body = body[n:]
		case (num == fSMCounter || num == fSMPreviousCounter) && typ == protowire.VarintType:
			v, n := protowire.ConsumeVarint(body)
			if n < 0 {
				return nil, fmt.Errorf("signal message field %d: %w", num, protowire.ParseError(n))
			}
			if num == fSMCounter {
				m.Counter = uint32(v)
			} else {
				m.PreviousCounter = uint32(v)
			}
			body = body[n:]
		default:
			n := protowire.ConsumeFieldValue(num, typ, body)
			if n < 0 {
				return nil, fmt.Errorf("signal message field %d: %w", num, protowire.ParseError(n))
			}
			body = body[n:]
		}
	}
	return m, nil
}
