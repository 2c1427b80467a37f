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
// The package never touches the network: the client core fetches bundles and
// moves ciphertext; this package turns one into the other.
package crypto
