// Package redisroute is the Redis implementation of routing.Router: it
// tells relay nodes where each device is connected and carries doorbells
// (and evictions) between them, for a hush deployment of several relays.
//
// # Design: a registration per device, a channel per node
//
//   - Registration: key <prefix>dev:<account>.<device> holds
//     "<session as 20 digits>:<node>", with a TTL (RegistrationTTL, 2 min)
//     that the node refreshes while the device stays attached
//     (RefreshInterval, TTL/3).
//   - Channel: each node subscribes to one channel, <prefix>node:<node>,
//     and nothing else.
//   - Attach is SET … GET: the old value names the session it replaced, and
//     an eviction goes to that session's node (a message on its channel, or
//     a direct call when it is this node). Detach deletes the key only if it
//     still holds its own session (compare-and-delete in Lua), so a late
//     Detach of a superseded session never detaches its successor.
//   - Ring of one bell (the common 1-1 message) is one Lua script, GET then
//     PUBLISH, one round trip. Ring of many bells is one MGET (on a cluster,
//     a pipeline of GETs) and one pipelined round trip with one PUBLISH per
//     target node carrying all of that node's bells. PUBLISH answers how
//     many subscribers got the message: 0 means the node is gone, so its
//     devices are reported offline at once (the relay pushes) and its stale
//     registrations are deleted.
//
// Pub/sub is at-most-once. A lost bell only delays a delivery: the queue is
// the truth (routing's package doc). A lost eviction is caught by the old
// node's next refresh, which finds another session in the key and evicts
// its own; so at most one session of a device stays live, a little later.
// Sessions of one device on one node are ordered by id; across nodes the
// last SET wins.
//
// # Why per-node channels: measured
//
// bench_test.go runs both designs on a private redis-server 7.0 (2-core
// machine, shared with other work, so ±30%): per-node as built here, and
// per-user channels (each node SUBSCRIBEs one channel per attached device;
// Ring = one PUBLISH per bell, attached = receivers > 0). 1,000 devices
// over 3 receiving nodes, rung from a 4th; an op ends when every bell has
// arrived:
//
//	                                      per-node        per-user
//	1,000 bells, wall time per op         1.2–1.3 ms      3.2–4.3 ms
//	1,000 bells, Redis CPU per op         216–240 µs      577–669 µs
//	1 bell, wall time per op              66–96 µs        46–93 µs
//	1 bell, Redis CPU per op              27–39 µs        17–31 µs
//	Attach (per connection)               29–37 µs        37–38 µs
//	Redis memory per attached device      464 B           382 B
//	refresh of 1,000 registrations        2.0–2.5 ms, 0.8 ms Redis CPU   —
//
// Per-node wins fan-out (a group message to many devices: ~2.7× less Redis
// CPU, one message per node instead of one per device) and ties on single
// bells now that those take one round trip. It pays a refresh — 0.8 ms of
// Redis CPU per 1,000 devices every 40 s, 2 % of a core per million
// attached devices — and 20 % more memory. The decision rests as much on
// what the numbers do not show:
//
//   - Redis Cluster: a node's one channel is one SSUBSCRIBE on one shard.
//     Per-user channels hash to every slot, and a go-redis PubSub connects
//     to the shard of its first channel, so a node would need a
//     subscription connection per shard and a per-slot bookkeeping of its
//     devices; plain PUBLISH on a cluster is broadcast to every shard.
//   - Recovery: after a reconnect a node resubscribes one channel, not
//     one per device (thousands of SUBSCRIBEs per node at once after a
//     Redis restart).
//   - Truth in a key: the registration lets a node check, at every
//     refresh, that its sessions are still the live ones, which makes
//     lost evictions harmless; and a dead node is detected by the first
//     bell for it. Per-user channels would need the registration anyway
//     for both.
//
// # Failure
//
// Redis being unreachable must slow delivery down, never stop it or lose
// anything:
//
//   - Every Redis call is bounded by Options.Timeout (500 ms), and needs a
//     client that honours context deadlines (NewClient makes one). While
//     the router is unhealthy, Ring fails at once with ErrUnavailable
//     without touching Redis: a Send is never held up by the doorbell.
//   - Attach never fails for want of Redis: the session is kept locally
//     and registered when Redis is back. Detach during an outage is
//     replayed then.
//   - Health: a PING every HealthInterval (1 s), the subscription's state,
//     and every failed operation feed Healthy() and Options.OnHealth. A
//     subscription connection on which nothing arrives — not even the
//     answers to the pings sent on it every HealthInterval — is declared
//     stalled and replaced (a silent network partition keeps TCP open).
//   - Fallback polling, done by the router itself: while unhealthy it rings
//     every device attached to this node once per PollInterval (5 s),
//     spread over the interval, with Bell{ServerID: 0}; the relay's
//     Handler.Ring makes that connection fetch from its queue. So the relay
//     needs no polling loop of its own: a message stored by any relay
//     reaches an online device within PollInterval during an outage.
//   - Recovery: when PING works and the channel is subscribed again
//     (go-redis reconnects and resubscribes by itself; the tests verify
//     it), the router re-registers every attached device — a session
//     attached during the outage claims its key with a Lua script in which
//     the newer session (larger Snowflake id) wins, and the loser is
//     evicted — deletes the registrations of sessions detached meanwhile,
//     turns healthy, and rings every attached device once, for the bells
//     lost while its subscription was down. A dropped subscription alone
//     (Redis fine) goes through the same recovery.
//
// failover_test.go checks all of this against real redis-server processes
// it kills (SIGKILL), restarts empty on the same port, partitions silently
// through a TCP proxy, or whose pub/sub connections it kills.
//
// # Redis Cluster
//
// NewClient with several addresses returns a cluster client; the router
// then uses sharded pub/sub (SSUBSCRIBE/SPUBLISH: each node's channel lives
// on one shard), pipelined GETs instead of MGET, and the two-round-trip
// Ring for single bells too (the script would publish to a channel outside
// its key's slot). The contract tests run on a three-shard cluster.
package redisroute
