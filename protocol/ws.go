package protocol

// WebSocket transport constants of the relay: where clients connect, how they
// authenticate, and the close codes the relay ends a connection with. A
// client decides from the close code alone whether to reconnect at once,
// back off, refresh its token, or stop.

// WSPath is the HTTP path of the relay's WebSocket endpoint.
const WSPath = "/v1/ws"

// Authentication. A client presents its key-server token either in the
// Authorization header ("Bearer " + token) or, where it cannot set headers
// (browsers), as one extra WebSocket subprotocol AuthSubprotocolPrefix+token
// offered next to Subprotocol. The relay only ever selects Subprotocol, so
// the token is never echoed back.
const (
	AuthHeader            = "Authorization"
	AuthScheme            = "Bearer"
	AuthSubprotocolPrefix = "hush.auth."
)

// Close codes. 1000–1011 are RFC 6455's; 4000–4999 are reserved by the RFC
// for applications and are hush's own.
const (
	// CloseNormal: the client closed, or the relay closed after an orderly
	// exchange.
	CloseNormal = 1000
	// CloseGoingAway: the relay is shutting down; a Reconnect frame came
	// first. Reconnect (possibly to another relay) after Reconnect.after_ms.
	CloseGoingAway = 1001
	// CloseTooBig: a frame exceeded MaxFrameSize; an Error frame with
	// CODE_FRAME_TOO_LARGE came first. Do not resend the same frame.
	CloseTooBig = 1009
	// CloseInternal: the relay failed; reconnect with backoff.
	CloseInternal = 1011

	// CloseReplaced: a newer connection of the same device was accepted
	// (possibly on another relay). Do not reconnect automatically: the other
	// connection is the live one.
	CloseReplaced = 4000
	// CloseTokenExpired: the token the connection was opened with expired;
	// fetch a fresh token and reconnect.
	CloseTokenExpired = 4001
	// CloseRevoked: the device was removed from its account; its tokens are
	// void for good. Do not reconnect.
	CloseRevoked = 4002
	// CloseSlowReader: the client did not read its frames fast enough and
	// the relay's bounded send buffer filled up. Nothing stored is lost
	// (unacked envelopes are delivered again); reconnect with backoff.
	CloseSlowReader = 4003
	// CloseProtocolViolation: too many malformed frames, a text message, or
	// frames far beyond the rate limit. Fix the client; reconnect with
	// backoff.
	CloseProtocolViolation = 4004
)

// CloseCodeName names a close code for logs and error messages.
func CloseCodeName(code int) string {
	switch code {
	case CloseNormal:
		return "normal"
	case CloseGoingAway:
		return "going away"
	case CloseTooBig:
		return "frame too large"
	case CloseInternal:
		return "internal error"
	case CloseReplaced:
		return "replaced by a newer connection"
	case CloseTokenExpired:
		return "token expired"
	case CloseRevoked:
		return "device revoked"
	case CloseSlowReader:
		return "slow reader"
	case CloseProtocolViolation:
		return "protocol violation"
	}
	return "unknown"
}
