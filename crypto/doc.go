// Package crypto is hush's Signal-protocol core. It wraps go.mau.fi/libsignal
// (GPL-3.0) rather than reimplementing any primitive, and adds the parts the
// library leaves out or gets subtly wrong for a real client:
//
//   - identifiers in the ranges Signal uses (registration ids 1–16380,
//     device ids 1–127, one-time prekey ids never 0) and a last-resort prekey;
//   - X3DH sessions from a library-independent Bundle, with the signed-prekey
//     signature checked before any state is written;
//   - duplicate delivery reported as ErrDuplicateMessage instead of a generic
//     library error, so a relay retry never yields a second plaintext;
//   - trial decryption that changes nothing but the session state that
//     accepts the message: the library's damaged the states that refused
//     it, which broke sessions for good after simultaneous session starts
//     and resets (decrypt.go);
//   - sender-key groups with rotation after a member is removed;
//   - Signal's safety numbers (iterated SHA-512, 5,200 rounds) and their
//     scannable form — the library only formats digits;
//   - Signal's attachment cipher (AES-256-CBC + HMAC-SHA256, SHA-256 digest),
//     streaming in both directions with constant memory;
//   - the library's package-global logger routed into log/slog with Debug
//     dropped (see InstallLogger);
//   - store interfaces shaped for SQL (records are opaque byte strings) with
//     an in-memory implementation.
//
// # Stored records
//
// Session and sender-key records are read and written on every message, so
// their encoding is hush's own (serializer.go): one format byte (0x01) and a
// protobuf message written with protowire, one field number per field of
// the library's record structures. The decoder is bounded — every length
// checked against the input, repeated fields and the record capped above the
// library's own limits, every key of the size the library needs — and
// returns ErrCorruptRecord naming the field, never panics. Records written
// before this format are the library's JSON and start with '{': they are
// still read, and written back binary the next time the operation that read
// them stores them, so existing profiles migrate one record at a time and
// lose nothing. Prekey and signed prekey records, used once per session,
// stay JSON. SignalMessages use a protowire encoder that is byte-identical
// to the library's (wire.go).
//
// # Session cache
//
// Each Protocol keeps the decoded form of the session records it stored
// last, per remote device (sessioncache.go; at most 512 devices and 8 MiB of
// record bytes, least recently stored evicted first). The Store stays the
// truth: an operation reads the record's bytes as always and uses the cached
// record only when those bytes are byte-identical to the ones stored with
// it, so a rolled-back transaction, another writer or a restored backup can
// never make it stale. A cached record is handed to one operation and
// removed; only a successful operation's stores put one back, so no record
// is ever shared and a failed operation (which may have changed the record
// it took, e.g. a trial decryption) leaves nothing behind.
//
// # The vendored library
//
// go.mau.fi/libsignal v0.2.1 is vendored in third_party/libsignal (a
// go.mod replace) with small, listed patches (HUSH-PATCHES.md there): no
// Debug call sites that format records, MACs or message keys; X25519 with
// one scalar multiplication; allocation-free HMAC-SHA256/HKDF for the
// ratchet; fewer allocations when a record is serialized. Every patch keeps
// the library's outputs, and this package's tests check that.
//
// The package never touches the network: the client core fetches bundles and
// moves ciphertext; this package turns one into the other.
package crypto
