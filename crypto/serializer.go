package crypto

import "go.mau.fi/libsignal/serialize"

// serializer is the one place hush chooses how libsignal encodes things.
//
// Wire messages (SignalMessage, PreKeySignalMessage, SenderKeyMessage,
// SenderKeyDistributionMessage) use the library's protobuf encoding, the
// Signal wire format. Stored records (sessions, prekeys, sender keys) use the
// library's JSON record encoding: v0.2.1 ships no other. Profiles show record
// decoding at ~35–40% of an encrypt or decrypt, so a protobuf record
// serializer is the obvious next speed-up; it only has to replace the record
// fields here (records already stored would then need a one-time migration,
// which is why the choice is centralised rather than per call site).
//
// The value is immutable after package initialisation and shared read-only.
var serializer = serialize.NewProtoBufSerializer()
