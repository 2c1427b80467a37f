// Package cluster holds hush's multi-process tests of the scaled-out mode
// (issue 9). It has no code of its own: its tests build cmd/hush-relay and
// cmd/hush-keyserver once (TestMain), run several of each as separate
// processes on loopback against the real Redis and Cassandra from
// scripts/testenv (internal/testenv; a missing service fails the test
// under CI=true), and drive them with real clients:
//
//   - TestClusterAliceAndBobAcrossRelays: the client package on two relays —
//     messages, delivery and read receipts (encrypted messages), typing and
//     presence, both ways.
//   - TestClusterFailoverKill9Relay: three relays, 10,000 Signal messages in
//     flight between users spread over them; one relay is killed with
//     SIGKILL; clients reconnect to the survivors and retry with the same
//     client ids; every acknowledged message is delivered exactly once.
//   - TestClusterRedisRestart: a private redis-server killed and restarted
//     empty mid-run; delivery continues by polling, nothing is lost.
//   - TestClusterCassandraOutage: the relays reach Cassandra through a TCP
//     proxy of the test's own, which is cut and restored (the shared test
//     Cassandra keeps running for the other packages); sends fail with
//     CODE_UNAVAILABLE meanwhile and succeed on retry; nothing acknowledged
//     is lost.
//   - TestClusterClockSkewKeepsConversationOrder: two relays whose clocks
//     differ by seconds; the client orders the conversation by the sender's
//     counter although the server ids disagree.
//   - TestClusterFailoverNodeIDLostExits: a relay whose leased node id is
//     taken by another holder tells its clients to reconnect, shuts down and
//     exits with status 1.
//   - TestClusterKeyServersClaimOnce: two key-server processes on one
//     keyspace; 1,000 concurrent bundle fetches never hand out a one-time
//     prekey twice, and their rate limits are shared through Redis.
package cluster
