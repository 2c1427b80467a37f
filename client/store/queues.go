package store

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/hushchat/hush/crypto"
)

// --- OutboxStore ---

const outboxCols = `seq, kind, message, group_id, accounts, own_devices, depends_on, content, sync_content, client_id, frame,
	state, attempts, not_before_ms, error, created_ms`

func scanOutbox(sc interface{ Scan(...any) error }, it *OutboxItem) error {
	var msg *int64
	var accounts string
	var own int
	var notBefore, created int64
	if err := sc.Scan(&it.Seq, &it.Kind, &msg, &it.GroupID, &accounts, &own, &it.DependsOn, &it.Content, &it.SyncContent,
		&it.ClientID, &it.Frame, &it.State, &it.Attempts, &notBefore, &it.Error, &created); err != nil {
		return err
	}
	if msg != nil {
		it.Message = *msg
	}
	it.Accounts = splitAccounts(accounts)
	it.OwnDevices = own != 0
	it.NotBefore, it.Created = fromMS(notBefore), fromMS(created)
	return nil
}

func splitAccounts(s string) []string {
	if s == "" {
		return nil
	}
	return strings.Split(s, ",")
}

// Enqueue implements OutboxStore.
func (db *DB) Enqueue(ctx context.Context, it *OutboxItem) error {
	var msg any
	if it.Message != 0 {
		msg = it.Message
	}
	err := db.wq(ctx).QueryRowContext(ctx, `INSERT INTO outbox (kind, message, group_id, accounts, own_devices, depends_on,
		content, sync_content, client_id, frame, state, attempts, not_before_ms, error, created_ms)
		VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) RETURNING seq`,
		it.Kind, msg, it.GroupID, strings.Join(it.Accounts, ","), b2i(it.OwnDevices), it.DependsOn, it.Content, it.SyncContent,
		it.ClientID, it.Frame, it.State, it.Attempts, ms(it.NotBefore), it.Error, ms(it.Created)).Scan(&it.Seq)
	if err != nil {
		return fmt.Errorf("enqueue send: %w", err)
	}
	return nil
}

// PendingOutbox implements OutboxStore.
func (db *DB) PendingOutbox(ctx context.Context, now time.Time, limit int) ([]int64, error) {
	// The unary + keeps SQLite from using outbox_due here: walking the
	// primary key in order and stopping at limit is what is cheap. LIMIT
	// ?+0 rather than LIMIT ?: SQLite re-prepares a statement whose bare
	// LIMIT parameter is bound to a new value, on every call here.
	rows, err := db.rq(ctx).QueryContext(ctx, `SELECT seq FROM outbox o WHERE +state = ? AND +not_before_ms <= ?
		AND (depends_on = 0 OR NOT EXISTS (SELECT 1 FROM outbox d WHERE d.seq = o.depends_on)) ORDER BY seq LIMIT ?+0`,
		OutboxQueued, now.UnixMilli(), limit)
	if err != nil {
		return nil, fmt.Errorf("list outbox: %w", err)
	}
	defer rows.Close()
	var out []int64
	for rows.Next() {
		var seq int64
		if err := rows.Scan(&seq); err != nil {
			return nil, fmt.Errorf("list outbox: %w", err)
		}
		out = append(out, seq)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("list outbox: %w", err)
	}
	return out, nil
}

// NextOutboxDue implements OutboxStore.
func (db *DB) NextOutboxDue(ctx context.Context, now time.Time) (time.Time, bool, error) {
	var next sql.NullInt64
	err := db.rq(ctx).QueryRowContext(ctx, "SELECT MIN(not_before_ms) FROM outbox WHERE state = ? AND not_before_ms > ?",
		OutboxQueued, now.UnixMilli()).Scan(&next)
	if err != nil {
		return time.Time{}, false, fmt.Errorf("next outbox due: %w", err)
	}
	if !next.Valid {
		return time.Time{}, false, nil
	}
	return time.UnixMilli(next.Int64), true, nil
}

// OutboxItem implements OutboxStore.
func (db *DB) OutboxItem(ctx context.Context, seq int64) (*OutboxItem, error) {
	it := new(OutboxItem)
	if err := scanOutbox(db.rq(ctx).QueryRowContext(ctx, "SELECT "+outboxCols+" FROM outbox WHERE seq = ?", seq), it); err != nil {
		return nil, notFound(err, "outbox item %d", seq)
	}
	return it, nil
}

// OutboxForMessage implements OutboxStore.
func (db *DB) OutboxForMessage(ctx context.Context, msg int64) (*OutboxItem, error) {
	it := new(OutboxItem)
	if err := scanOutbox(db.rq(ctx).QueryRowContext(ctx, "SELECT "+outboxCols+" FROM outbox WHERE message = ? ORDER BY seq LIMIT 1", msg), it); err != nil {
		return nil, notFound(err, "outbox item of message %d", msg)
	}
	return it, nil
}

// PendingDistribution implements OutboxStore.
func (db *DB) PendingDistribution(ctx context.Context, groupID []byte) (bool, error) {
	var n int
	err := db.rq(ctx).QueryRowContext(ctx, "SELECT COUNT(*) FROM outbox WHERE kind = ? AND group_id = ?", OutboxPairwise, groupID).Scan(&n)
	if err != nil {
		return false, fmt.Errorf("pending distributions: %w", err)
	}
	return n > 0, nil
}

// UpdateOutbox implements OutboxStore.
func (db *DB) UpdateOutbox(ctx context.Context, it *OutboxItem) error {
	_, err := db.wq(ctx).ExecContext(ctx, `UPDATE outbox SET client_id = ?, frame = ?, state = ?, attempts = ?,
		not_before_ms = ?, error = ?, accounts = ? WHERE seq = ?`,
		it.ClientID, it.Frame, it.State, it.Attempts, ms(it.NotBefore), it.Error, strings.Join(it.Accounts, ","), it.Seq)
	if err != nil {
		return fmt.Errorf("update outbox item %d: %w", it.Seq, err)
	}
	return nil
}

// DeleteOutbox implements OutboxStore.
func (db *DB) DeleteOutbox(ctx context.Context, seq int64) error {
	if _, err := db.wq(ctx).ExecContext(ctx, "DELETE FROM outbox WHERE seq = ?", seq); err != nil {
		return fmt.Errorf("delete outbox item %d: %w", seq, err)
	}
	return nil
}

// UnblockOutbox implements OutboxStore.
func (db *DB) UnblockOutbox(ctx context.Context, name string) (int, error) {
	res, err := db.wq(ctx).ExecContext(ctx, `UPDATE outbox SET state = ?, error = '', frame = NULL, client_id = NULL
		WHERE state = ? AND (',' || accounts || ',' LIKE '%,' || ? || ',%' OR kind = ?)`,
		OutboxQueued, OutboxBlocked, name, OutboxGroup)
	if err != nil {
		return 0, fmt.Errorf("unblock sends to %s: %w", name, err)
	}
	n, _ := res.RowsAffected()
	return int(n), nil
}

// --- GroupStore ---

// SaveGroup implements GroupStore.
func (db *DB) SaveGroup(ctx context.Context, g *Group) error {
	return db.inTx(ctx, func(q querier) error {
		_, err := q.ExecContext(ctx, `INSERT INTO groups (id, name, revision, member, actor, created_ms, updated_ms)
			VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (id) DO UPDATE SET name = excluded.name, revision = excluded.revision,
			member = excluded.member, actor = excluded.actor, updated_ms = excluded.updated_ms`,
			g.ID, g.Name, g.Revision, b2i(g.Member), g.Actor, ms(g.Created), ms(g.Updated))
		if err != nil {
			return fmt.Errorf("save group: %w", err)
		}
		if _, err := q.ExecContext(ctx, "DELETE FROM group_members WHERE group_id = ?", g.ID); err != nil {
			return fmt.Errorf("save group members: %w", err)
		}
		for _, m := range g.Members {
			if _, err := q.ExecContext(ctx, "INSERT INTO group_members (group_id, account, admin) VALUES (?, ?, ?)",
				g.ID, m.Account, b2i(m.Admin)); err != nil {
				return fmt.Errorf("save group member %s: %w", m.Account, err)
			}
		}
		return nil
	})
}

func (db *DB) members(ctx context.Context, id []byte) ([]Member, error) {
	rows, err := db.rq(ctx).QueryContext(ctx, "SELECT account, admin FROM group_members WHERE group_id = ? ORDER BY account", id)
	if err != nil {
		return nil, fmt.Errorf("group members: %w", err)
	}
	defer rows.Close()
	var out []Member
	for rows.Next() {
		var m Member
		var admin int
		if err := rows.Scan(&m.Account, &admin); err != nil {
			return nil, fmt.Errorf("group members: %w", err)
		}
		m.Admin = admin != 0
		out = append(out, m)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("group members: %w", err)
	}
	return out, nil
}

const groupCols = "id, name, revision, member, actor, created_ms, updated_ms"

func scanGroup(sc interface{ Scan(...any) error }, g *Group) error {
	var member int
	var created, updated int64
	if err := sc.Scan(&g.ID, &g.Name, &g.Revision, &member, &g.Actor, &created, &updated); err != nil {
		return err
	}
	g.Member, g.Created, g.Updated = member != 0, fromMS(created), fromMS(updated)
	return nil
}

// Group implements GroupStore.
func (db *DB) Group(ctx context.Context, id []byte) (*Group, error) {
	g := new(Group)
	if err := scanGroup(db.rq(ctx).QueryRowContext(ctx, "SELECT "+groupCols+" FROM groups WHERE id = ?", id), g); err != nil {
		return nil, notFound(err, "group %x", id)
	}
	var err error
	if g.Members, err = db.members(ctx, id); err != nil {
		return nil, err
	}
	return g, nil
}

// Groups implements GroupStore.
func (db *DB) Groups(ctx context.Context) ([]Group, error) {
	rows, err := db.rq(ctx).QueryContext(ctx, "SELECT "+groupCols+" FROM groups ORDER BY name, id")
	if err != nil {
		return nil, fmt.Errorf("list groups: %w", err)
	}
	var out []Group
	for rows.Next() {
		var g Group
		if err := scanGroup(rows, &g); err != nil {
			rows.Close()
			return nil, fmt.Errorf("list groups: %w", err)
		}
		out = append(out, g)
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("list groups: %w", err)
	}
	for i := range out {
		if out[i].Members, err = db.members(ctx, out[i].ID); err != nil {
			return nil, err
		}
	}
	return out, nil
}

// GroupsWithMember implements GroupStore.
func (db *DB) GroupsWithMember(ctx context.Context, account string) ([][]byte, error) {
	rows, err := db.rq(ctx).QueryContext(ctx, `SELECT g.id FROM groups g JOIN group_members m ON m.group_id = g.id
		WHERE m.account = ? AND g.member = 1 ORDER BY g.updated_ms DESC`, account)
	if err != nil {
		return nil, fmt.Errorf("groups of %s: %w", account, err)
	}
	defer rows.Close()
	var out [][]byte
	for rows.Next() {
		var id []byte
		if err := rows.Scan(&id); err != nil {
			return nil, fmt.Errorf("groups of %s: %w", account, err)
		}
		out = append(out, id)
	}
	return out, rows.Err()
}

// SenderKeyHolders implements GroupStore.
func (db *DB) SenderKeyHolders(ctx context.Context, groupID []byte) ([]crypto.Address, error) {
	rows, err := db.rq(ctx).QueryContext(ctx, "SELECT name, device FROM sender_key_shared WHERE group_id = ? ORDER BY name, device", groupID)
	if err != nil {
		return nil, fmt.Errorf("sender key holders: %w", err)
	}
	defer rows.Close()
	var out []crypto.Address
	for rows.Next() {
		var a crypto.Address
		if err := rows.Scan(&a.Name, &a.DeviceID); err != nil {
			return nil, fmt.Errorf("sender key holders: %w", err)
		}
		out = append(out, a)
	}
	return out, rows.Err()
}

// AddSenderKeyHolders implements GroupStore.
func (db *DB) AddSenderKeyHolders(ctx context.Context, groupID []byte, devices []crypto.Address) error {
	return db.inTx(ctx, func(q querier) error {
		for _, d := range devices {
			if _, err := q.ExecContext(ctx, "INSERT INTO sender_key_shared (group_id, name, device) VALUES (?, ?, ?) ON CONFLICT DO NOTHING",
				groupID, d.Name, d.DeviceID); err != nil {
				return fmt.Errorf("add sender key holder %s: %w", d, err)
			}
		}
		return nil
	})
}

// RemoveSenderKeyHolder implements GroupStore.
func (db *DB) RemoveSenderKeyHolder(ctx context.Context, device crypto.Address) error {
	if _, err := db.wq(ctx).ExecContext(ctx, "DELETE FROM sender_key_shared WHERE name = ? AND device = ?", device.Name, device.DeviceID); err != nil {
		return fmt.Errorf("remove sender key holder %s: %w", device, err)
	}
	return nil
}

// ResetSenderKeyHolders implements GroupStore.
func (db *DB) ResetSenderKeyHolders(ctx context.Context, groupID []byte) error {
	if _, err := db.wq(ctx).ExecContext(ctx, "DELETE FROM sender_key_shared WHERE group_id = ?", groupID); err != nil {
		return fmt.Errorf("reset sender key holders: %w", err)
	}
	return nil
}

// DeleteSenderKeysOf implements GroupStore.
func (db *DB) DeleteSenderKeysOf(ctx context.Context, groupID []byte, account string) error {
	if _, err := db.wq(ctx).ExecContext(ctx, "DELETE FROM sender_keys WHERE group_id = ? AND name = ?", groupID, account); err != nil {
		return fmt.Errorf("delete sender keys of %s: %w", account, err)
	}
	return nil
}

// --- InboxStore ---

// MarkProcessed implements InboxStore.
func (db *DB) MarkProcessed(ctx context.Context, serverID uint64, at time.Time) (bool, error) {
	res, err := db.wq(ctx).ExecContext(ctx, "INSERT INTO processed (server_id, at_ms) VALUES (?, ?) ON CONFLICT DO NOTHING", serverID, ms(at))
	if err != nil {
		return false, fmt.Errorf("mark envelope %d processed: %w", serverID, err)
	}
	n, _ := res.RowsAffected()
	return n == 1, nil
}

// Processed implements InboxStore.
func (db *DB) Processed(ctx context.Context, serverID uint64) (bool, error) {
	var n int
	if err := db.rq(ctx).QueryRowContext(ctx, "SELECT COUNT(*) FROM processed WHERE server_id = ?", serverID).Scan(&n); err != nil {
		return false, fmt.Errorf("check envelope %d: %w", serverID, err)
	}
	return n > 0, nil
}

// PruneProcessed implements InboxStore.
func (db *DB) PruneProcessed(ctx context.Context, before time.Time) error {
	if _, err := db.wq(ctx).ExecContext(ctx, "DELETE FROM processed WHERE at_ms < ?", ms(before)); err != nil {
		return fmt.Errorf("prune processed envelopes: %w", err)
	}
	return nil
}

// Hold implements InboxStore.
func (db *DB) Hold(ctx context.Context, e HeldEnvelope) error {
	_, err := db.wq(ctx).ExecContext(ctx, `INSERT INTO held (server_id, sender, device, type, payload, server_ms, reason, held_ms)
		VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (server_id) DO UPDATE SET reason = excluded.reason`,
		e.ServerID, e.Sender, e.Device, e.Type, e.Payload, ms(e.ServerTime), e.Reason, ms(e.Held))
	if err != nil {
		return fmt.Errorf("hold envelope %d: %w", e.ServerID, err)
	}
	return nil
}

// HeldEnvelopes implements InboxStore.
func (db *DB) HeldEnvelopes(ctx context.Context, sender string) ([]HeldEnvelope, error) {
	rows, err := db.rq(ctx).QueryContext(ctx, `SELECT server_id, sender, device, type, payload, server_ms, reason, held_ms
		FROM held WHERE ? = '' OR sender = ? ORDER BY server_id`, sender, sender)
	if err != nil {
		return nil, fmt.Errorf("list held envelopes: %w", err)
	}
	defer rows.Close()
	var out []HeldEnvelope
	for rows.Next() {
		var e HeldEnvelope
		var st, held int64
		if err := rows.Scan(&e.ServerID, &e.Sender, &e.Device, &e.Type, &e.Payload, &st, &e.Reason, &held); err != nil {
			return nil, fmt.Errorf("list held envelopes: %w", err)
		}
		e.ServerTime, e.Held = fromMS(st), fromMS(held)
		out = append(out, e)
	}
	return out, rows.Err()
}

// Unhold implements InboxStore.
func (db *DB) Unhold(ctx context.Context, serverID uint64) error {
	if _, err := db.wq(ctx).ExecContext(ctx, "DELETE FROM held WHERE server_id = ?", serverID); err != nil {
		return fmt.Errorf("unhold envelope %d: %w", serverID, err)
	}
	return nil
}

// OweReceipt implements InboxStore.
func (db *DB) OweReceipt(ctx context.Context, sender string, id []byte) error {
	_, err := db.wq(ctx).ExecContext(ctx, "INSERT INTO pending_receipts (sender, msg_id) VALUES (?, ?) ON CONFLICT DO NOTHING", sender, id)
	if err != nil {
		return fmt.Errorf("owe receipt: %w", err)
	}
	return nil
}

// TakeReceipts implements InboxStore.
func (db *DB) TakeReceipts(ctx context.Context) (map[string][][]byte, error) {
	out := map[string][][]byte{}
	err := db.inTx(ctx, func(q querier) error {
		rows, err := q.QueryContext(ctx, "DELETE FROM pending_receipts RETURNING sender, msg_id")
		if err != nil {
			return err
		}
		defer rows.Close()
		for rows.Next() {
			var s string
			var id []byte
			if err := rows.Scan(&s, &id); err != nil {
				return err
			}
			out[s] = append(out[s], id)
		}
		return rows.Err()
	})
	if err != nil {
		return nil, fmt.Errorf("take owed receipts: %w", err)
	}
	return out, nil
}

// --- EventStore ---

// AppendEvent implements EventStore.
func (db *DB) AppendEvent(ctx context.Context, kind string, data []byte, at time.Time) (int64, error) {
	var seq int64
	err := db.wq(ctx).QueryRowContext(ctx, "INSERT INTO events (kind, data, created_ms) VALUES (?, ?, ?) RETURNING seq",
		kind, data, ms(at)).Scan(&seq)
	if err != nil {
		return 0, fmt.Errorf("append %s event: %w", kind, err)
	}
	return seq, nil
}

// EventsAfter implements EventStore.
func (db *DB) EventsAfter(ctx context.Context, after int64, limit int) ([]StoredEvent, error) {
	rows, err := db.rq(ctx).QueryContext(ctx, "SELECT seq, kind, data, created_ms FROM events WHERE seq > ? ORDER BY seq LIMIT ?+0", after, limit)
	if err != nil {
		return nil, fmt.Errorf("list events: %w", err)
	}
	defer rows.Close()
	var out []StoredEvent
	for rows.Next() {
		var e StoredEvent
		var at int64
		if err := rows.Scan(&e.Seq, &e.Kind, &e.Data, &at); err != nil {
			return nil, fmt.Errorf("list events: %w", err)
		}
		e.Created = fromMS(at)
		out = append(out, e)
	}
	return out, rows.Err()
}

// DeleteEvent implements EventStore.
func (db *DB) DeleteEvent(ctx context.Context, seq int64) error {
	if _, err := db.wq(ctx).ExecContext(ctx, "DELETE FROM events WHERE seq = ?", seq); err != nil {
		return fmt.Errorf("delete event %d: %w", seq, err)
	}
	return nil
}

// DeleteEventsThrough implements EventStore.
func (db *DB) DeleteEventsThrough(ctx context.Context, seq int64) error {
	if _, err := db.wq(ctx).ExecContext(ctx, "DELETE FROM events WHERE seq <= ?", seq); err != nil {
		return fmt.Errorf("delete events through %d: %w", seq, err)
	}
	return nil
}

// --- SettingsStore ---

// Setting implements SettingsStore.
func (db *DB) Setting(ctx context.Context, key string) (string, bool, error) {
	var v string
	err := db.rq(ctx).QueryRowContext(ctx, "SELECT value FROM settings WHERE key = ?", key).Scan(&v)
	if err != nil {
		if errors.Is(err, sql.ErrNoRows) {
			return "", false, nil
		}
		return "", false, fmt.Errorf("setting %s: %w", key, err)
	}
	return v, true, nil
}

// SetSetting implements SettingsStore.
func (db *DB) SetSetting(ctx context.Context, key, value string) error {
	_, err := db.wq(ctx).ExecContext(ctx, "INSERT INTO settings (key, value) VALUES (?, ?) ON CONFLICT (key) DO UPDATE SET value = excluded.value", key, value)
	if err != nil {
		return fmt.Errorf("set %s: %w", key, err)
	}
	return nil
}
