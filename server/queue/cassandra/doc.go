// Package cassandra is the relay's scale-out queue store: queue.Store on
// Apache Cassandra (gocql). Design notes to follow.
package cassandra
