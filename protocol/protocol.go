// Package protocol is hush's wire format: the client↔relay frames
// (frames.proto), the end-to-end Content that travels inside Signal
// ciphertext (content.proto), the key server's request and response shapes
// (keys.proto), and the limits every decoder enforces.
//
// Everything that crosses a process boundary is defined here, versioned, and
// decoded only through the bounded functions of this package, so a hostile
// peer meets one size check and one parser, both fuzzed. The package imports
// no other hush package.
package protocol

import (
	"errors"
	"fmt"
)

// Version is the wire protocol version. A client names it in the WebSocket
// subprotocol (Subprotocol) so a relay can refuse a client it cannot serve
// before any frame is exchanged.
const Version = 1

// Subprotocol is the WebSocket subprotocol of this version.
const Subprotocol = "hush.v1"

// Limits. Each one, when exceeded, yields an error naming the limit so the
// client can tell the user exactly what went wrong.
const (
	// MaxFrameSize bounds one encoded Frame. It must hold a Send to
	// MaxRecipients devices with a group payload, or a 1-1 Send of a
	// MaxPayloadSize ciphertext to a handful of devices.
	MaxFrameSize = 1 << 20 // 1 MiB

	// MaxPayloadSize bounds one ciphertext. Files never travel in frames
	// (they go to object storage), so this only has to hold a padded text
	// message with its attachment pointer and thumbnail.
	MaxPayloadSize = 128 << 10 // 128 KiB

	// MaxRecipients bounds the devices one Send may address: a 1,024-member
	// group whose members have on average a few devices.
	MaxRecipients = 4096

	// MaxAckIDs bounds the ids one Ack may carry.
	MaxAckIDs = 1024

	// MaxDeliverBatch bounds the envelopes one Deliver frame carries.
	MaxDeliverBatch = 256

	// MaxSubscriptions bounds one PresenceSubscribe.
	MaxSubscriptions = 4096

	// MaxContentSize bounds a decrypted Content before it is parsed.
	MaxContentSize = MaxPayloadSize

	// ClientIDSize and MessageIDSize are the sizes of the random ids the
	// client chooses.
	ClientIDSize  = 16
	MessageIDSize = 16

	// MaxGroupMembers is the largest group hush supports.
	MaxGroupMembers = 1024

	// MaxAccountNameLen bounds account names (3–32 chars of [a-z0-9_.-]).
	MinAccountNameLen = 3
	MaxAccountNameLen = 32

	// MaxDeviceID is the largest device id (the Signal protocol's range).
	MaxDeviceID = 127
)

// ErrFrameTooLarge is returned for input longer than MaxFrameSize.
var ErrFrameTooLarge = errors.New("frame too large")

// LimitError reports which limit an input exceeded, with the limit's value,
// so that callers can answer with CODE_*_TOO_LARGE and Error.limit.
type LimitError struct {
	What  string
	Limit int
	Got   int
}

func (e *LimitError) Error() string {
	return fmt.Sprintf("%s: %d exceeds the limit of %d", e.What, e.Got, e.Limit)
}
