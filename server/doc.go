// Package server is hush's blind relay: it moves Signal ciphertext between
// devices over WebSockets, keeps each envelope in the recipient device's
// durable queue until that device acknowledges it, and can never read one.
//
// # What the relay knows
//
// Who sends to whom and when, the envelope type (PreKey, Signal or
// SenderKey message), and payload sizes — what Signal's servers also see.
// Payloads are ciphertext made by the clients; the relay copies them into
// its queue store and out again and never parses them. Logs carry account,
// device, error codes and counts, never payloads or tokens.
//
// # Connections
//
// A device connects to /v1/ws with its key-server token (Authorization:
// Bearer, or a "hush.auth.<token>" subprotocol next to "hush.v1"). The token
// is verified offline with the key server's Ed25519 public key, and the
// device must still be listed by the directory: removing a device revokes
// it. The device's queue is chosen from the token alone — no frame names the
// queue it reads or acks — so one device can never read or delete another's
// envelopes.
//
// One live connection per device: a newer one closes the older with
// protocol.CloseReplaced. The HTTP handler returns right after the upgrade;
// an idle connection is one reader goroutine blocked in a small read buffer
// plus its conn struct. Writes happen in a pump goroutine that exists only
// while there is something to write, with write buffers from a shared pool.
// The relay pings every PingInterval and drops a connection silent for
// ReadTimeout; the client may ping too (WebSocket pings or Ping frames).
// Every connection's answers are bounded (MaxOutFrames/MaxOutBytes: a client
// that stops reading is closed with CloseSlowReader), its frames are rate
// limited by a token bucket that slows the reader (TCP backpressure), and
// too many bad frames close it with CloseProtocolViolation.
//
// # Send → store → deliver → ack
//
// A Send is validated (protocol.ValidateFrame), then its recipients are
// compared with the directory's device lists: an unknown account, or a list
// that misses or invents a device, is refused with the exact difference and
// nothing is stored. The relay assigns a Snowflake id, writes the envelope
// durably for every recipient device in one queue.Store.Put (idempotent per
// sender device and client id; a group payload is stored once), and only
// then answers SendAck. Sends of one connection are stored concurrently (up
// to MaxInflightSends) so they share the store's group commit.
//
// Delivery is ordered per device and loses nothing; deliver.go explains how
// live envelopes and the queue drain interleave. Recipients connected to
// this relay get the envelope from memory when that is provably in order;
// others get a doorbell through the Router (in-process now, Redis when
// scaled out), and devices connected nowhere get a content-free push. Acks
// delete; unacked envelopes are delivered again on the next connection;
// Sweep deletes envelopes past their TTL.
//
// Ephemeral sends (typing) go only to devices online now and are never
// stored; their SendAck says how many got them.
//
// # Several relays
//
// Relays sharing one queue store (Cassandra) and one Router (Redis) serve
// one deployment. Server ids are Snowflake ids minted with a node id from a
// nodeid.Provider — a lease from Redis, or a fixed id — and only while the
// provider says the id is ours; otherwise Sends are refused with
// CODE_UNAVAILABLE and the client retries. Doorbells are rung after the
// SendAck is queued, so a slow Redis never delays an acknowledgement; when
// the router fails, the recipients it could not ring are pushed, their own
// relays poll their queues (the Redis router does that by itself), and the
// relay stays ready. A doorbell may name an id below what a connection has
// already delivered (another relay's clock lags, or a retry finished an
// earlier attempt under its original id): the connection rescans its queue
// from there (deliver.go), so nothing stored waits for a reconnect. A retry
// answered as a duplicate rings every recipient again, since the attempt
// that stored it may have died before ringing.
//
// # Presence
//
// Heartbeats, hiding and mutual-consent subscriptions go to a
// presence.Tracker; the relay fans its events out to the connections that
// follow the subject, asking the tracker for a fresh, consent-checked view
// each time.
//
// # Shutdown
//
// Shutdown refuses new connections and Sends, sends Reconnect to every
// client, waits for the Sends being stored (their SendAcks are written),
// flushes every connection and closes it with CloseGoingAway.
package server
