package queue

import (
	"errors"
	"fmt"
)

// ErrClosed is returned by every method of a closed Store.
var ErrClosed = errors.New("queue: store closed")

// ErrUnavailable marks a failure of the storage backend itself (disk full,
// I/O error, database locked by another process, Cassandra unreachable or
// without quorum). The request may be retried later unchanged; a retried Put
// is safe because of idempotency. Backends wrap it with Unavailable.
var ErrUnavailable = errors.New("queue: storage unavailable")

// ErrInvalid marks a request that breaks the Store's contract (missing or
// oversized field, duplicate recipient, ServerID out of range). Retrying it
// cannot succeed; the relay validates frames first, so it indicates a bug.
var ErrInvalid = errors.New("queue: invalid request")

// Unavailable wraps a backend failure so that IsRetryable reports true for
// it, keeping the cause: "queue put: storage unavailable: disk I/O error".
func Unavailable(op string, err error) error {
	return &unavailableError{op: op, err: err}
}

type unavailableError struct {
	op  string
	err error
}

func (e *unavailableError) Error() string {
	return fmt.Sprintf("queue %s: storage unavailable: %v", e.op, e.err)
}

func (e *unavailableError) Unwrap() []error { return []error{ErrUnavailable, e.err} }

// IsRetryable reports whether err is a transient failure of the store (see
// ErrUnavailable) or of a store that was closed by a shutdown in progress:
// the relay answers CODE_UNAVAILABLE and the client retries the same request
// later, possibly on another relay.
func IsRetryable(err error) bool {
	return errors.Is(err, ErrUnavailable) || errors.Is(err, ErrClosed)
}

// QueueFullError is returned by Put when a recipient's queue is at its cap.
// Nothing of the Put was stored.
type QueueFullError struct {
	Device Device
	Limit  int
}

func (e *QueueFullError) Error() string {
	return fmt.Sprintf("queue of %s is full (limit %d messages)", e.Device, e.Limit)
}

// IsQueueFull reports whether err is (or wraps) a *QueueFullError and returns it.
func IsQueueFull(err error) (*QueueFullError, bool) {
	var qf *QueueFullError
	if errors.As(err, &qf) {
		return qf, true
	}
	return nil, false
}

func invalidf(format string, args ...any) error {
	return fmt.Errorf("%w: %s", ErrInvalid, fmt.Sprintf(format, args...))
}
