package protocol

import (
	"errors"
	"fmt"

	"google.golang.org/protobuf/proto"
)

// maxNesting bounds message nesting while decoding. The deepest legitimate
// nesting is Content → SyncSent → Content → Quote; a hostile input must not
// be able to recurse further.
const maxNesting = 8

var unmarshal = proto.UnmarshalOptions{RecursionLimit: maxNesting}

// EncodeFrame encodes f for the WebSocket. It refuses frames that the
// receiving side would refuse, so a bug shows at the sender.
func EncodeFrame(f *Frame) ([]byte, error) {
	if err := ValidateFrame(f); err != nil {
		return nil, err
	}
	b, err := proto.Marshal(f)
	if err != nil {
		return nil, fmt.Errorf("encode frame: %w", err)
	}
	if len(b) > MaxFrameSize {
		return nil, &LimitError{What: "frame size", Limit: MaxFrameSize, Got: len(b)}
	}
	return b, nil
}

// DecodeFrame decodes and validates one frame. Input longer than
// MaxFrameSize is refused before parsing.
func DecodeFrame(b []byte) (*Frame, error) {
	if len(b) > MaxFrameSize {
		return nil, fmt.Errorf("%w: %d bytes, limit %d", ErrFrameTooLarge, len(b), MaxFrameSize)
	}
	f := new(Frame)
	if err := unmarshal.Unmarshal(b, f); err != nil {
		return nil, fmt.Errorf("decode frame: %w", err)
	}
	if err := ValidateFrame(f); err != nil {
		return nil, err
	}
	return f, nil
}

// ErrInvalid marks a frame or content that decoded but breaks a rule of the
// protocol (a missing id, a device out of range, …).
var ErrInvalid = errors.New("invalid")

func invalid(format string, args ...any) error {
	return fmt.Errorf("%w: %s", ErrInvalid, fmt.Sprintf(format, args...))
}

// ValidateFrame checks the rules of the protocol that the schema cannot
// express. A frame that passes is safe to act on; what it refers to (an
// account, a device) may still not exist.
func ValidateFrame(f *Frame) error {
	if f == nil {
		return invalid("nil frame")
	}
	switch b := f.Body.(type) {
	case nil:
		return invalid("frame has no body")
	case *Frame_Send:
		return validateSend(b.Send)
	case *Frame_SendAck:
		if b.SendAck == nil {
			return invalid("empty send_ack")
		}
		if len(b.SendAck.ClientId) != ClientIDSize {
			return invalid("send_ack client_id must be %d bytes, got %d", ClientIDSize, len(b.SendAck.ClientId))
		}
	case *Frame_Deliver:
		if b.Deliver == nil {
			return invalid("empty deliver")
		}
		if n := len(b.Deliver.Envelopes); n > MaxDeliverBatch {
			return &LimitError{What: "envelopes per deliver", Limit: MaxDeliverBatch, Got: n}
		}
		for _, e := range b.Deliver.Envelopes {
			if err := validateEnvelope(e); err != nil {
				return err
			}
		}
	case *Frame_Ack:
		if b.Ack == nil || len(b.Ack.ServerIds) == 0 {
			return invalid("ack names no ids")
		}
		if n := len(b.Ack.ServerIds); n > MaxAckIDs {
			return &LimitError{What: "ids per ack", Limit: MaxAckIDs, Got: n}
		}
	case *Frame_PresenceSubscribe:
		if b.PresenceSubscribe == nil {
			return nil // an empty subscribe clears the set
		}
		if n := len(b.PresenceSubscribe.Accounts); n > MaxSubscriptions {
			return &LimitError{What: "presence subscriptions", Limit: MaxSubscriptions, Got: n}
		}
		for _, a := range b.PresenceSubscribe.Accounts {
			if err := ValidateAccountName(a); err != nil {
				return err
			}
		}
	case *Frame_Presence:
		if b.Presence == nil {
			return invalid("empty presence")
		}
		if err := ValidateAccountName(b.Presence.Account); err != nil {
			return err
		}
	case *Frame_PushRegister:
		if b.PushRegister != nil && len(b.PushRegister.Endpoint) > MaxPushEndpointLen {
			return &LimitError{What: "push endpoint length", Limit: MaxPushEndpointLen, Got: len(b.PushRegister.Endpoint)}
		}
	case *Frame_Error:
		if b.Error == nil || b.Error.Code == ErrorCode_CODE_UNSPECIFIED {
			return invalid("error frame without code")
		}
	}
	return nil
}

// MaxPushEndpointLen bounds a push endpoint URL.
const MaxPushEndpointLen = 2048

func validateSend(s *Send) error {
	if s == nil {
		return invalid("empty send")
	}
	if len(s.ClientId) != ClientIDSize {
		return invalid("send client_id must be %d bytes, got %d", ClientIDSize, len(s.ClientId))
	}
	n := len(s.Recipients)
	if n == 0 {
		return invalid("send has no recipients")
	}
	if n > MaxRecipients {
		return &LimitError{What: "recipient devices", Limit: MaxRecipients, Got: n}
	}
	shared := len(s.Payload) > 0
	if len(s.Payload) > MaxPayloadSize {
		return &LimitError{What: "payload size", Limit: MaxPayloadSize, Got: len(s.Payload)}
	}
	if shared && !validType(s.Type) {
		return invalid("shared payload needs an envelope type")
	}
	type dev struct {
		account string
		device  uint32
	}
	seen := make(map[dev]struct{}, n)
	for _, r := range s.Recipients {
		if r == nil {
			return invalid("nil recipient")
		}
		if err := ValidateAccountName(r.Account); err != nil {
			return err
		}
		if err := ValidateDeviceID(r.Device); err != nil {
			return err
		}
		k := dev{r.Account, r.Device}
		if _, dup := seen[k]; dup {
			return invalid("device %s.%d named twice", r.Account, r.Device)
		}
		seen[k] = struct{}{}
		switch {
		case shared && len(r.Payload) > 0:
			return invalid("recipient %s.%d has its own payload beside the shared one", r.Account, r.Device)
		case !shared && len(r.Payload) == 0:
			return invalid("recipient %s.%d has no payload", r.Account, r.Device)
		case len(r.Payload) > MaxPayloadSize:
			return &LimitError{What: "payload size", Limit: MaxPayloadSize, Got: len(r.Payload)}
		case !shared && !validType(r.Type):
			return invalid("recipient %s.%d has no envelope type", r.Account, r.Device)
		}
	}
	return nil
}

func validateEnvelope(e *Envelope) error {
	if e == nil {
		return invalid("nil envelope")
	}
	if e.ServerId == 0 {
		return invalid("envelope without server_id")
	}
	if err := ValidateAccountName(e.Sender); err != nil {
		return err
	}
	if err := ValidateDeviceID(e.SenderDevice); err != nil {
		return err
	}
	if !validType(e.Type) {
		return invalid("envelope %d has no type", e.ServerId)
	}
	if len(e.Payload) > MaxPayloadSize {
		return &LimitError{What: "payload size", Limit: MaxPayloadSize, Got: len(e.Payload)}
	}
	return nil
}

func validType(t EnvelopeType) bool {
	switch t {
	case EnvelopeType_ENVELOPE_TYPE_PREKEY, EnvelopeType_ENVELOPE_TYPE_SIGNAL, EnvelopeType_ENVELOPE_TYPE_SENDER_KEY:
		return true
	}
	return false
}

// ValidateAccountName checks an account name as it appears on the wire:
// 3–32 characters of [a-z0-9_.-]. Names are case-insensitive; the wire
// always carries the lower-case form (see NormalizeAccountName).
func ValidateAccountName(name string) error {
	if len(name) < MinAccountNameLen || len(name) > MaxAccountNameLen {
		return invalid("account name %q must be %d–%d characters", truncate(name, 40), MinAccountNameLen, MaxAccountNameLen)
	}
	for i := 0; i < len(name); i++ {
		c := name[i]
		if !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '_' || c == '.' || c == '-') {
			return invalid("account name %q may hold only a-z, 0-9, '_', '.', '-'", truncate(name, 40))
		}
	}
	return nil
}

// NormalizeAccountName lower-cases ASCII letters, so "Alice" and "alice"
// name one account; it then validates.
func NormalizeAccountName(name string) (string, error) {
	b := []byte(name)
	for i, c := range b {
		if c >= 'A' && c <= 'Z' {
			b[i] = c + ('a' - 'A')
		}
	}
	n := string(b)
	return n, ValidateAccountName(n)
}

// ValidateDeviceID checks a device id against the Signal protocol's range.
func ValidateDeviceID(id uint32) error {
	if id < 1 || id > MaxDeviceID {
		return invalid("device id %d outside 1–%d", id, MaxDeviceID)
	}
	return nil
}

func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n] + "…"
}
