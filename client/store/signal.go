package store

import (
	"bytes"
	"context"
	"fmt"
	"time"

	"github.com/hushchat/hush/crypto"
)

// This file implements crypto.Store: the protocol's records as opaque blobs
// keyed by address, prekey id or (group, sender).

// LoadIdentity implements crypto.IdentityStore.
func (db *DB) LoadIdentity(ctx context.Context, addr crypto.Address) (crypto.IdentityRecord, error) {
	var rec crypto.IdentityRecord
	var verified int
	err := db.rq(ctx).QueryRowContext(ctx, "SELECT key, verified FROM identities WHERE name = ? AND device = ?",
		addr.Name, addr.DeviceID).Scan(&rec.Key, &verified)
	if err != nil {
		return crypto.IdentityRecord{}, notFound(err, "load identity of %s", addr)
	}
	rec.Verified = verified != 0
	return rec, nil
}

// StoreIdentity implements crypto.IdentityStore. The first-seen time is
// kept while the key stays the same.
func (db *DB) StoreIdentity(ctx context.Context, addr crypto.Address, rec crypto.IdentityRecord) error {
	return db.inTx(ctx, func(q querier) error {
		var old []byte
		err := q.QueryRowContext(ctx, "SELECT key FROM identities WHERE name = ? AND device = ?", addr.Name, addr.DeviceID).Scan(&old)
		now := time.Now().UnixMilli()
		switch {
		case err == nil && bytes.Equal(old, rec.Key):
			_, err = q.ExecContext(ctx, "UPDATE identities SET verified = ? WHERE name = ? AND device = ?",
				b2i(rec.Verified), addr.Name, addr.DeviceID)
		default:
			_, err = q.ExecContext(ctx, `INSERT INTO identities (name, device, key, verified, first_seen_ms) VALUES (?, ?, ?, ?, ?)
				ON CONFLICT (name, device) DO UPDATE SET key = excluded.key, verified = excluded.verified, first_seen_ms = excluded.first_seen_ms`,
				addr.Name, addr.DeviceID, rec.Key, b2i(rec.Verified), now)
		}
		if err != nil {
			return fmt.Errorf("store identity of %s: %w", addr, err)
		}
		return nil
	})
}

// LoadPreKey implements crypto.PreKeyStore.
func (db *DB) LoadPreKey(ctx context.Context, id uint32) ([]byte, error) {
	var rec []byte
	if err := db.rq(ctx).QueryRowContext(ctx, "SELECT record FROM prekeys WHERE id = ?", id).Scan(&rec); err != nil {
		return nil, notFound(err, "load prekey %d", id)
	}
	return rec, nil
}

// StorePreKey implements crypto.PreKeyStore.
func (db *DB) StorePreKey(ctx context.Context, id uint32, record []byte) error {
	_, err := db.wq(ctx).ExecContext(ctx, "INSERT INTO prekeys (id, record) VALUES (?, ?) ON CONFLICT (id) DO UPDATE SET record = excluded.record", id, record)
	if err != nil {
		return fmt.Errorf("store prekey %d: %w", id, err)
	}
	return nil
}

// RemovePreKey implements crypto.PreKeyStore.
func (db *DB) RemovePreKey(ctx context.Context, id uint32) error {
	if _, err := db.wq(ctx).ExecContext(ctx, "DELETE FROM prekeys WHERE id = ?", id); err != nil {
		return fmt.Errorf("remove prekey %d: %w", id, err)
	}
	return nil
}

// PreKeyCount counts stored one-time and last-resort prekeys.
func (db *DB) PreKeyCount(ctx context.Context) (int, error) {
	var n int
	if err := db.rq(ctx).QueryRowContext(ctx, "SELECT COUNT(*) FROM prekeys").Scan(&n); err != nil {
		return 0, fmt.Errorf("count prekeys: %w", err)
	}
	return n, nil
}

// LoadSignedPreKey implements crypto.SignedPreKeyStore.
func (db *DB) LoadSignedPreKey(ctx context.Context, id uint32) ([]byte, error) {
	var rec []byte
	if err := db.rq(ctx).QueryRowContext(ctx, "SELECT record FROM signed_prekeys WHERE id = ?", id).Scan(&rec); err != nil {
		return nil, notFound(err, "load signed prekey %d", id)
	}
	return rec, nil
}

// StoreSignedPreKey implements crypto.SignedPreKeyStore.
func (db *DB) StoreSignedPreKey(ctx context.Context, id uint32, record []byte) error {
	_, err := db.wq(ctx).ExecContext(ctx, "INSERT INTO signed_prekeys (id, record) VALUES (?, ?) ON CONFLICT (id) DO UPDATE SET record = excluded.record", id, record)
	if err != nil {
		return fmt.Errorf("store signed prekey %d: %w", id, err)
	}
	return nil
}

// RemoveSignedPreKey implements crypto.SignedPreKeyStore.
func (db *DB) RemoveSignedPreKey(ctx context.Context, id uint32) error {
	if _, err := db.wq(ctx).ExecContext(ctx, "DELETE FROM signed_prekeys WHERE id = ?", id); err != nil {
		return fmt.Errorf("remove signed prekey %d: %w", id, err)
	}
	return nil
}

// SignedPreKeyIDs implements crypto.SignedPreKeyStore.
func (db *DB) SignedPreKeyIDs(ctx context.Context) ([]uint32, error) {
	return db.ids(ctx, "SELECT id FROM signed_prekeys ORDER BY id", "list signed prekeys")
}

// RetireSignedPreKey implements KeyStore.
func (db *DB) RetireSignedPreKey(ctx context.Context, id uint32, removeAfter time.Time) error {
	if _, err := db.wq(ctx).ExecContext(ctx, "UPDATE signed_prekeys SET remove_after_ms = ? WHERE id = ?", ms(removeAfter), id); err != nil {
		return fmt.Errorf("retire signed prekey %d: %w", id, err)
	}
	return nil
}

// ExpiredSignedPreKeys implements KeyStore.
func (db *DB) ExpiredSignedPreKeys(ctx context.Context, now time.Time) ([]uint32, error) {
	return db.ids(ctx, "SELECT id FROM signed_prekeys WHERE remove_after_ms != 0 AND remove_after_ms <= ? ORDER BY id",
		"list expired signed prekeys", now.UnixMilli())
}

func (db *DB) ids(ctx context.Context, query, what string, args ...any) ([]uint32, error) {
	rows, err := db.rq(ctx).QueryContext(ctx, query, args...)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", what, err)
	}
	defer rows.Close()
	var out []uint32
	for rows.Next() {
		var id uint32
		if err := rows.Scan(&id); err != nil {
			return nil, fmt.Errorf("%s: %w", what, err)
		}
		out = append(out, id)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("%s: %w", what, err)
	}
	return out, nil
}

// LoadSession implements crypto.SessionStore.
func (db *DB) LoadSession(ctx context.Context, addr crypto.Address) ([]byte, error) {
	var rec []byte
	err := db.rq(ctx).QueryRowContext(ctx, "SELECT record FROM sessions WHERE name = ? AND device = ?", addr.Name, addr.DeviceID).Scan(&rec)
	if err != nil {
		return nil, notFound(err, "load session with %s", addr)
	}
	return rec, nil
}

// StoreSession implements crypto.SessionStore.
func (db *DB) StoreSession(ctx context.Context, addr crypto.Address, record []byte) error {
	_, err := db.wq(ctx).ExecContext(ctx, `INSERT INTO sessions (name, device, record) VALUES (?, ?, ?)
		ON CONFLICT (name, device) DO UPDATE SET record = excluded.record`, addr.Name, addr.DeviceID, record)
	if err != nil {
		return fmt.Errorf("store session with %s: %w", addr, err)
	}
	return nil
}

// DeleteSession implements crypto.SessionStore.
func (db *DB) DeleteSession(ctx context.Context, addr crypto.Address) error {
	if _, err := db.wq(ctx).ExecContext(ctx, "DELETE FROM sessions WHERE name = ? AND device = ?", addr.Name, addr.DeviceID); err != nil {
		return fmt.Errorf("delete session with %s: %w", addr, err)
	}
	return nil
}

// SessionDeviceIDs implements crypto.SessionStore.
func (db *DB) SessionDeviceIDs(ctx context.Context, name string) ([]uint32, error) {
	return db.ids(ctx, "SELECT device FROM sessions WHERE name = ? ORDER BY device", "list sessions of "+name, name)
}

// LoadSenderKey implements crypto.SenderKeyStore.
func (db *DB) LoadSenderKey(ctx context.Context, groupID string, sender crypto.Address) ([]byte, error) {
	var rec []byte
	err := db.rq(ctx).QueryRowContext(ctx, "SELECT record FROM sender_keys WHERE group_id = ? AND name = ? AND device = ?",
		[]byte(groupID), sender.Name, sender.DeviceID).Scan(&rec)
	if err != nil {
		return nil, notFound(err, "load sender key of %s", sender)
	}
	return rec, nil
}

// StoreSenderKey implements crypto.SenderKeyStore.
func (db *DB) StoreSenderKey(ctx context.Context, groupID string, sender crypto.Address, record []byte) error {
	_, err := db.wq(ctx).ExecContext(ctx, `INSERT INTO sender_keys (group_id, name, device, record) VALUES (?, ?, ?, ?)
		ON CONFLICT (group_id, name, device) DO UPDATE SET record = excluded.record`,
		[]byte(groupID), sender.Name, sender.DeviceID, record)
	if err != nil {
		return fmt.Errorf("store sender key of %s: %w", sender, err)
	}
	return nil
}

// DeleteSenderKey implements crypto.SenderKeyStore.
func (db *DB) DeleteSenderKey(ctx context.Context, groupID string, sender crypto.Address) error {
	_, err := db.wq(ctx).ExecContext(ctx, "DELETE FROM sender_keys WHERE group_id = ? AND name = ? AND device = ?",
		[]byte(groupID), sender.Name, sender.DeviceID)
	if err != nil {
		return fmt.Errorf("delete sender key of %s: %w", sender, err)
	}
	return nil
}
