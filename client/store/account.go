package store

import (
	"context"
	"fmt"
	"time"
)

// LoadAccount implements AccountStore.
func (db *DB) LoadAccount(ctx context.Context) (*Account, error) {
	a := new(Account)
	var expiry, spkCreated, created int64
	err := db.rq(ctx).QueryRowContext(ctx, `SELECT name, device_id, server_url, relay_url, identity_private,
		registration_id, token, token_expiry_ms, next_prekey_id, next_signed_prekey_id, signed_prekey_id,
		signed_prekey_created_ms, created_ms FROM account WHERE id = 1`).Scan(
		&a.Name, &a.DeviceID, &a.ServerURL, &a.RelayURL, &a.IdentityPrivate, &a.RegistrationID, &a.Token,
		&expiry, &a.NextPreKeyID, &a.NextSignedPreKeyID, &a.SignedPreKeyID, &spkCreated, &created)
	if err != nil {
		return nil, notFound(err, "load account")
	}
	a.TokenExpiry, a.SignedPreKeyCreated, a.Created = fromMS(expiry), fromMS(spkCreated), fromMS(created)
	return a, nil
}

// SaveAccount implements AccountStore.
func (db *DB) SaveAccount(ctx context.Context, a *Account) error {
	_, err := db.wq(ctx).ExecContext(ctx, `INSERT INTO account (id, name, device_id, server_url, relay_url,
		identity_private, registration_id, token, token_expiry_ms, next_prekey_id, next_signed_prekey_id,
		signed_prekey_id, signed_prekey_created_ms, created_ms) VALUES (1, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
		ON CONFLICT (id) DO UPDATE SET name = excluded.name, device_id = excluded.device_id,
		server_url = excluded.server_url, relay_url = excluded.relay_url,
		identity_private = excluded.identity_private, registration_id = excluded.registration_id,
		token = excluded.token, token_expiry_ms = excluded.token_expiry_ms,
		next_prekey_id = excluded.next_prekey_id, next_signed_prekey_id = excluded.next_signed_prekey_id,
		signed_prekey_id = excluded.signed_prekey_id, signed_prekey_created_ms = excluded.signed_prekey_created_ms,
		created_ms = excluded.created_ms`,
		a.Name, a.DeviceID, a.ServerURL, a.RelayURL, a.IdentityPrivate, a.RegistrationID, a.Token,
		ms(a.TokenExpiry), a.NextPreKeyID, a.NextSignedPreKeyID, a.SignedPreKeyID, ms(a.SignedPreKeyCreated), ms(a.Created))
	if err != nil {
		return fmt.Errorf("save account: %w", err)
	}
	return nil
}

// Identities implements TrustStore.
func (db *DB) Identities(ctx context.Context, name string) ([]DeviceIdentity, error) {
	rows, err := db.rq(ctx).QueryContext(ctx, "SELECT device, key, verified, first_seen_ms FROM identities WHERE name = ? ORDER BY device", name)
	if err != nil {
		return nil, fmt.Errorf("identities of %s: %w", name, err)
	}
	defer rows.Close()
	var out []DeviceIdentity
	for rows.Next() {
		var d DeviceIdentity
		var verified int
		var seen int64
		if err := rows.Scan(&d.Device, &d.Key, &verified, &seen); err != nil {
			return nil, fmt.Errorf("identities of %s: %w", name, err)
		}
		d.Verified, d.FirstSeen = verified != 0, fromMS(seen)
		out = append(out, d)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("identities of %s: %w", name, err)
	}
	return out, nil
}

// SetVerified implements TrustStore.
func (db *DB) SetVerified(ctx context.Context, name string, verified bool) error {
	if _, err := db.wq(ctx).ExecContext(ctx, "UPDATE identities SET verified = ? WHERE name = ?", b2i(verified), name); err != nil {
		return fmt.Errorf("set %s verified: %w", name, err)
	}
	return nil
}

// RecordIdentityChange implements TrustStore.
func (db *DB) RecordIdentityChange(ctx context.Context, c IdentityChange) error {
	_, err := db.wq(ctx).ExecContext(ctx, `INSERT INTO identity_changes (name, device, old_key, new_key, seen_ms) VALUES (?, ?, ?, ?, ?)
		ON CONFLICT (name, device) DO UPDATE SET old_key = excluded.old_key, new_key = excluded.new_key, seen_ms = excluded.seen_ms`,
		c.Name, c.Device, c.OldKey, c.NewKey, ms(c.Seen))
	if err != nil {
		return fmt.Errorf("record identity change of %s.%d: %w", c.Name, c.Device, err)
	}
	return nil
}

// IdentityChanges implements TrustStore.
func (db *DB) IdentityChanges(ctx context.Context, name string) ([]IdentityChange, error) {
	rows, err := db.rq(ctx).QueryContext(ctx, `SELECT name, device, old_key, new_key, seen_ms FROM identity_changes
		WHERE ? = '' OR name = ? ORDER BY name, device`, name, name)
	if err != nil {
		return nil, fmt.Errorf("identity changes: %w", err)
	}
	defer rows.Close()
	var out []IdentityChange
	for rows.Next() {
		var c IdentityChange
		var seen int64
		if err := rows.Scan(&c.Name, &c.Device, &c.OldKey, &c.NewKey, &seen); err != nil {
			return nil, fmt.Errorf("identity changes: %w", err)
		}
		c.Seen = fromMS(seen)
		out = append(out, c)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("identity changes: %w", err)
	}
	return out, nil
}

// ClearIdentityChanges implements TrustStore.
func (db *DB) ClearIdentityChanges(ctx context.Context, name string) error {
	if _, err := db.wq(ctx).ExecContext(ctx, "DELETE FROM identity_changes WHERE name = ?", name); err != nil {
		return fmt.Errorf("clear identity changes of %s: %w", name, err)
	}
	return nil
}

// EnsureContact implements ContactStore.
func (db *DB) EnsureContact(ctx context.Context, name string, now time.Time) error {
	if _, err := db.wq(ctx).ExecContext(ctx, "INSERT INTO contacts (name, created_ms) VALUES (?, ?) ON CONFLICT DO NOTHING", name, ms(now)); err != nil {
		return fmt.Errorf("add contact %s: %w", name, err)
	}
	return nil
}

// Contacts implements ContactStore.
func (db *DB) Contacts(ctx context.Context) ([]Contact, error) {
	rows, err := db.rq(ctx).QueryContext(ctx, "SELECT name, created_ms FROM contacts ORDER BY name")
	if err != nil {
		return nil, fmt.Errorf("list contacts: %w", err)
	}
	defer rows.Close()
	var out []Contact
	for rows.Next() {
		var c Contact
		var created int64
		if err := rows.Scan(&c.Name, &created); err != nil {
			return nil, fmt.Errorf("list contacts: %w", err)
		}
		c.Created = fromMS(created)
		out = append(out, c)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("list contacts: %w", err)
	}
	return out, nil
}

// EnsureConversation implements ConversationStore.
func (db *DB) EnsureConversation(ctx context.Context, c Conversation) error {
	var gid any
	if c.GroupID != nil {
		gid = c.GroupID
	}
	_, err := db.wq(ctx).ExecContext(ctx, `INSERT INTO conversations (id, peer, group_id, created_ms, last_activity_ms)
		VALUES (?, ?, ?, ?, ?) ON CONFLICT DO NOTHING`, c.ID, c.Peer, gid, ms(c.Created), ms(c.Created))
	if err != nil {
		return fmt.Errorf("create conversation %s: %w", c.ID, err)
	}
	return nil
}

const convCols = "id, peer, group_id, created_ms, last_activity_ms, muted"

func scanConv(sc interface{ Scan(...any) error }, c *Conversation) error {
	var created, last int64
	var muted int
	if err := sc.Scan(&c.ID, &c.Peer, &c.GroupID, &created, &last, &muted); err != nil {
		return err
	}
	c.Created, c.LastActivity, c.Muted = fromMS(created), fromMS(last), muted != 0
	return nil
}

// Conversation implements ConversationStore.
func (db *DB) Conversation(ctx context.Context, id string) (*Conversation, error) {
	c := new(Conversation)
	if err := scanConv(db.rq(ctx).QueryRowContext(ctx, "SELECT "+convCols+" FROM conversations WHERE id = ?", id), c); err != nil {
		return nil, notFound(err, "conversation %s", id)
	}
	return c, nil
}

// Conversations implements ConversationStore.
func (db *DB) Conversations(ctx context.Context) ([]Conversation, error) {
	rows, err := db.rq(ctx).QueryContext(ctx, "SELECT "+convCols+" FROM conversations ORDER BY last_activity_ms DESC, id")
	if err != nil {
		return nil, fmt.Errorf("list conversations: %w", err)
	}
	var out []Conversation
	for rows.Next() {
		var c Conversation
		if err := scanConv(rows, &c); err != nil {
			rows.Close()
			return nil, fmt.Errorf("list conversations: %w", err)
		}
		out = append(out, c)
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("list conversations: %w", err)
	}
	for i := range out {
		c := &out[i]
		if err := db.rq(ctx).QueryRowContext(ctx, "SELECT COUNT(*) FROM messages WHERE conv = ? AND read = 0 AND outgoing = 0", c.ID).Scan(&c.Unread); err != nil {
			return nil, fmt.Errorf("count unread in %s: %w", c.ID, err)
		}
		last, err := db.History(ctx, c.ID, 1, 0)
		if err != nil {
			return nil, err
		}
		if len(last) == 1 {
			c.Last = &last[0]
		}
	}
	return out, nil
}

// NextCounter implements ConversationStore.
func (db *DB) NextCounter(ctx context.Context, id string) (uint64, error) {
	var n uint64
	err := db.wq(ctx).QueryRowContext(ctx, "UPDATE conversations SET send_counter = send_counter + 1 WHERE id = ? RETURNING send_counter", id).Scan(&n)
	if err != nil {
		return 0, notFound(err, "next counter of %s", id)
	}
	return n, nil
}

// SetMuted implements ConversationStore.
func (db *DB) SetMuted(ctx context.Context, id string, muted bool) error {
	res, err := db.wq(ctx).ExecContext(ctx, "UPDATE conversations SET muted = ? WHERE id = ?", b2i(muted), id)
	if err != nil {
		return fmt.Errorf("mute %s: %w", id, err)
	}
	if n, _ := res.RowsAffected(); n == 0 {
		return fmt.Errorf("mute %s: %w", id, ErrNotFound)
	}
	return nil
}
