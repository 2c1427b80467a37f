package store

import (
	"context"
	"database/sql"
	"fmt"
	"slices"
	"strings"
	"time"
	"unicode"
)

// sortGap is the distance between appended messages' sort keys, leaving
// room to slot late messages in between without renumbering.
const sortGap = 1 << 20

const msgCols = `seq, conv, msg_id, sender, sender_device, outgoing, counter, sort_key, sent_ms, received_ms,
	server_id, kind, body, content, status, read, error`

// msgColsM is msgCols qualified with the alias m.
const msgColsM = `m.seq, m.conv, m.msg_id, m.sender, m.sender_device, m.outgoing, m.counter, m.sort_key, m.sent_ms,
	m.received_ms, m.server_id, m.kind, m.body, m.content, m.status, m.read, m.error`

func scanMessage(sc interface{ Scan(...any) error }, m *Message) error {
	var outgoing, read int
	var sent, received int64
	if err := sc.Scan(&m.Seq, &m.Conv, &m.ID, &m.Sender, &m.SenderDevice, &outgoing, &m.Counter, &m.SortKey,
		&sent, &received, &m.ServerID, &m.Kind, &m.Body, &m.Content, &m.Status, &read, &m.Error); err != nil {
		return err
	}
	m.Outgoing, m.Read = outgoing != 0, read != 0
	m.SentAt, m.ReceivedAt = fromMS(sent), fromMS(received)
	return nil
}

func (db *DB) messages(ctx context.Context, what, query string, args ...any) ([]Message, error) {
	rows, err := db.rq(ctx).QueryContext(ctx, query, args...)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", what, err)
	}
	defer rows.Close()
	var out []Message
	for rows.Next() {
		var m Message
		if err := scanMessage(rows, &m); err != nil {
			return nil, fmt.Errorf("%s: %w", what, err)
		}
		out = append(out, m)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("%s: %w", what, err)
	}
	return out, nil
}

// InsertMessage implements MessageStore. A message whose sender already
// has a later counter in the conversation is placed before the earliest
// such message, so the conversation reads in each sender's order however
// the relay delivered it.
func (db *DB) InsertMessage(ctx context.Context, m *Message) (bool, error) {
	inserted := false
	err := db.inTx(ctx, func(q querier) error {
		key, err := sortKeyFor(ctx, q, m)
		if err != nil {
			return fmt.Errorf("insert message: %w", err)
		}
		rows, err := q.QueryContext(ctx, `INSERT INTO messages (conv, msg_id, sender, sender_device, outgoing, counter,
			sort_key, sent_ms, received_ms, server_id, kind, body, content, status, read, error)
			VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
			ON CONFLICT (sender, msg_id) DO NOTHING RETURNING seq`,
			m.Conv, m.ID, m.Sender, m.SenderDevice, b2i(m.Outgoing), m.Counter, key, ms(m.SentAt), ms(m.ReceivedAt),
			m.ServerID, m.Kind, m.Body, m.Content, m.Status, b2i(m.Read), m.Error)
		if err != nil {
			return fmt.Errorf("insert message: %w", err)
		}
		var seq int64
		got := rows.Next()
		if got {
			err = rows.Scan(&seq)
		}
		rows.Close()
		if err == nil {
			err = rows.Err()
		}
		if err != nil {
			return fmt.Errorf("insert message: %w", err)
		}
		if !got {
			return nil // the same sender's message with this id exists
		}
		m.Seq, m.SortKey = seq, key
		if _, err := q.ExecContext(ctx, "UPDATE conversations SET last_activity_ms = MAX(last_activity_ms, ?) WHERE id = ?",
			ms(m.ReceivedAt), m.Conv); err != nil {
			return fmt.Errorf("insert message: %w", err)
		}
		inserted = true
		return nil
	})
	return inserted, err
}

func sortKeyFor(ctx context.Context, q querier, m *Message) (int64, error) {
	if m.Counter > 0 {
		var next sql.NullInt64
		if err := q.QueryRowContext(ctx, `SELECT MIN(sort_key) FROM messages
			WHERE conv = ? AND sender = ? AND sender_device = ? AND counter > ?`,
			m.Conv, m.Sender, m.SenderDevice, m.Counter).Scan(&next); err != nil {
			return 0, err
		}
		if next.Valid {
			var prev sql.NullInt64
			if err := q.QueryRowContext(ctx, "SELECT MAX(sort_key) FROM messages WHERE conv = ? AND sort_key < ?",
				m.Conv, next.Int64).Scan(&prev); err != nil {
				return 0, err
			}
			p := next.Int64 - sortGap
			if prev.Valid {
				p = prev.Int64
			}
			if next.Int64-p >= 2 {
				return p + (next.Int64-p)/2, nil
			}
			// No room left between the two: move the rest of the
			// conversation up one step.
			if _, err := q.ExecContext(ctx, "UPDATE messages SET sort_key = sort_key + ? WHERE conv = ? AND sort_key >= ?",
				sortGap, m.Conv, next.Int64); err != nil {
				return 0, err
			}
			return next.Int64, nil
		}
	}
	var last sql.NullInt64
	if err := q.QueryRowContext(ctx, "SELECT MAX(sort_key) FROM messages WHERE conv = ?", m.Conv).Scan(&last); err != nil {
		return 0, err
	}
	return last.Int64 + sortGap, nil
}

// MessageByID implements MessageStore.
func (db *DB) MessageByID(ctx context.Context, sender string, id []byte) (*Message, error) {
	m := new(Message)
	err := scanMessage(db.rq(ctx).QueryRowContext(ctx, "SELECT "+msgCols+" FROM messages WHERE sender = ? AND msg_id = ?", sender, id), m)
	if err != nil {
		return nil, notFound(err, "message %x from %s", id, sender)
	}
	return m, nil
}

// MessageBySeq implements MessageStore.
func (db *DB) MessageBySeq(ctx context.Context, seq int64) (*Message, error) {
	m := new(Message)
	if err := scanMessage(db.rq(ctx).QueryRowContext(ctx, "SELECT "+msgCols+" FROM messages WHERE seq = ?", seq), m); err != nil {
		return nil, notFound(err, "message %d", seq)
	}
	return m, nil
}

// OutgoingByServerID implements MessageStore.
func (db *DB) OutgoingByServerID(ctx context.Context, serverID uint64) (*Message, error) {
	m := new(Message)
	err := scanMessage(db.rq(ctx).QueryRowContext(ctx, "SELECT "+msgColsM+` FROM message_server_ids s
		JOIN messages m ON m.seq = s.message WHERE s.server_id = ? AND m.outgoing = 1`, serverID), m)
	if err != nil {
		return nil, notFound(err, "message with server id %d", serverID)
	}
	return m, nil
}

// AddServerID implements MessageStore.
func (db *DB) AddServerID(ctx context.Context, seq int64, serverID uint64) error {
	_, err := db.wq(ctx).ExecContext(ctx, "INSERT INTO message_server_ids (server_id, message) VALUES (?, ?) ON CONFLICT DO NOTHING", serverID, seq)
	if err != nil {
		return fmt.Errorf("record server id of message %d: %w", seq, err)
	}
	return nil
}

// ReplaceMessage implements MessageStore.
func (db *DB) ReplaceMessage(ctx context.Context, m *Message) error {
	_, err := db.wq(ctx).ExecContext(ctx, `UPDATE messages SET kind = ?, body = ?, content = ?, counter = ?, sent_ms = ?, error = ?
		WHERE seq = ?`, m.Kind, m.Body, m.Content, m.Counter, ms(m.SentAt), m.Error, m.Seq)
	if err != nil {
		return fmt.Errorf("replace message %d: %w", m.Seq, err)
	}
	return nil
}

// History implements MessageStore.
func (db *DB) History(ctx context.Context, conv string, limit int, before int64) ([]Message, error) {
	if limit <= 0 {
		limit = 50
	}
	if before <= 0 {
		before = 1<<63 - 1
	}
	out, err := db.messages(ctx, "history of "+conv, "SELECT "+msgCols+
		" FROM messages WHERE conv = ? AND sort_key < ? ORDER BY sort_key DESC LIMIT ?+0", conv, before, limit)
	if err != nil {
		return nil, err
	}
	for i, j := 0, len(out)-1; i < j; i, j = i+1, j-1 {
		out[i], out[j] = out[j], out[i]
	}
	return out, nil
}

// ftsQuery turns user input into an FTS5 query: every word must match,
// the last one as a prefix; no FTS5 syntax from the input survives.
func ftsQuery(input string) string {
	words := strings.FieldsFunc(input, func(r rune) bool { return !unicode.IsLetter(r) && !unicode.IsNumber(r) })
	if len(words) > 16 {
		words = words[:16]
	}
	var b strings.Builder
	for i, w := range words {
		if i > 0 {
			b.WriteByte(' ')
		}
		b.WriteByte('"')
		b.WriteString(w)
		b.WriteByte('"')
		if i == len(words)-1 {
			b.WriteByte('*')
		}
	}
	return b.String()
}

// Search implements MessageStore.
func (db *DB) Search(ctx context.Context, query, conv string, limit int) ([]Message, error) {
	q := ftsQuery(query)
	if q == "" {
		return nil, nil
	}
	if limit <= 0 {
		limit = 50
	}
	return db.messages(ctx, "search", "SELECT "+msgColsM+` FROM messages_fts f JOIN messages m ON m.seq = f.rowid
		WHERE messages_fts MATCH ? AND (? = '' OR m.conv = ?) ORDER BY m.received_ms DESC, m.seq DESC LIMIT ?+0`,
		q, conv, conv, limit)
}

// SetStatus implements MessageStore.
func (db *DB) SetStatus(ctx context.Context, seq int64, st Status, serverID uint64, errText string) error {
	_, err := db.wq(ctx).ExecContext(ctx, `UPDATE messages SET status = ?, error = ?,
		server_id = CASE WHEN ? != 0 THEN ? ELSE server_id END WHERE seq = ?`, st, errText, serverID, serverID, seq)
	if err != nil {
		return fmt.Errorf("set status of message %d: %w", seq, err)
	}
	return nil
}

// AddRecipients implements MessageStore.
func (db *DB) AddRecipients(ctx context.Context, seq int64, accounts []string, at time.Time) error {
	return db.inTx(ctx, func(q querier) error {
		for _, a := range accounts {
			if _, err := q.ExecContext(ctx, `INSERT INTO message_recipients (message, account, status, updated_ms)
				VALUES (?, ?, ?, ?) ON CONFLICT DO NOTHING`, seq, a, StatusPending, ms(at)); err != nil {
				return fmt.Errorf("add recipient %s: %w", a, err)
			}
		}
		return nil
	})
}

// SetRecipientStatus implements MessageStore.
func (db *DB) SetRecipientStatus(ctx context.Context, seq int64, account string, st Status, at time.Time) (bool, error) {
	changed := false
	err := db.inTx(ctx, func(q querier) error {
		res, err := q.ExecContext(ctx, `UPDATE message_recipients SET status = ?, updated_ms = ?
			WHERE message = ? AND account = ? AND status < ?`, st, ms(at), seq, account, st)
		if err != nil {
			return fmt.Errorf("set status for %s: %w", account, err)
		}
		if n, _ := res.RowsAffected(); n == 0 {
			return nil
		}
		changed = true
		_, err = q.ExecContext(ctx, `UPDATE messages SET status = (SELECT MIN(status) FROM message_recipients WHERE message = ?)
			WHERE seq = ? AND status >= 0 AND status < (SELECT MIN(status) FROM message_recipients WHERE message = ?)`, seq, seq, seq)
		if err != nil {
			return fmt.Errorf("update status of message %d: %w", seq, err)
		}
		return nil
	})
	return changed, err
}

// Recipients implements MessageStore.
func (db *DB) Recipients(ctx context.Context, seq int64) ([]Recipient, error) {
	rows, err := db.rq(ctx).QueryContext(ctx, "SELECT account, status, updated_ms FROM message_recipients WHERE message = ? ORDER BY account", seq)
	if err != nil {
		return nil, fmt.Errorf("recipients of message %d: %w", seq, err)
	}
	defer rows.Close()
	var out []Recipient
	for rows.Next() {
		var r Recipient
		var at int64
		if err := rows.Scan(&r.Account, &r.Status, &at); err != nil {
			return nil, fmt.Errorf("recipients of message %d: %w", seq, err)
		}
		r.Updated = fromMS(at)
		out = append(out, r)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("recipients of message %d: %w", seq, err)
	}
	return out, nil
}

// MarkRead implements MessageStore.
func (db *DB) MarkRead(ctx context.Context, conv string) ([]Message, error) {
	var out []Message
	err := db.Atomic(ctx, func(ctx context.Context) error {
		var err error
		out, err = db.messages(ctx, "unread in "+conv, "SELECT "+msgCols+
			" FROM messages WHERE conv = ? AND read = 0 AND outgoing = 0 ORDER BY sort_key", conv)
		if err != nil {
			return err
		}
		if _, err := db.wq(ctx).ExecContext(ctx, "UPDATE messages SET read = 1 WHERE conv = ? AND read = 0 AND outgoing = 0", conv); err != nil {
			return fmt.Errorf("mark %s read: %w", conv, err)
		}
		return nil
	})
	return out, err
}

// MarkReadByID implements MessageStore.
func (db *DB) MarkReadByID(ctx context.Context, ids [][]byte) ([]string, error) {
	convs := map[string]bool{}
	err := db.inTx(ctx, func(q querier) error {
		for _, id := range ids {
			rows, err := q.QueryContext(ctx, "UPDATE messages SET read = 1 WHERE msg_id = ? AND outgoing = 0 AND read = 0 RETURNING conv", id)
			if err != nil {
				return fmt.Errorf("mark message read: %w", err)
			}
			for rows.Next() {
				var c string
				if err := rows.Scan(&c); err != nil {
					rows.Close()
					return fmt.Errorf("mark message read: %w", err)
				}
				convs[c] = true
			}
			rows.Close()
			if err := rows.Err(); err != nil {
				return fmt.Errorf("mark message read: %w", err)
			}
		}
		return nil
	})
	out := make([]string, 0, len(convs))
	for c := range convs {
		out = append(out, c)
	}
	slices.Sort(out)
	return out, err
}
