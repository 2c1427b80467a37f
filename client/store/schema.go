package store

// schema is the list of migrations, applied in order. PRAGMA user_version
// records how many a database has seen, so an older profile is migrated
// forward when it is opened and a newer one is refused (an older binary
// must not write a schema it does not understand). Never edit a step that
// has shipped: append a new one.
var schema = []string{
	// 1: the first schema.
	`
	-- This device's account: exactly one row once registered.
	CREATE TABLE account (
		id                       INTEGER PRIMARY KEY CHECK (id = 1),
		name                     TEXT NOT NULL,
		device_id                INTEGER NOT NULL,
		server_url               TEXT NOT NULL,
		relay_url                TEXT NOT NULL,
		identity_private         BLOB NOT NULL,
		registration_id          INTEGER NOT NULL,
		token                    TEXT NOT NULL DEFAULT '',
		token_expiry_ms          INTEGER NOT NULL DEFAULT 0,
		next_prekey_id           INTEGER NOT NULL,
		next_signed_prekey_id    INTEGER NOT NULL,
		signed_prekey_id         INTEGER NOT NULL,
		signed_prekey_created_ms INTEGER NOT NULL,
		created_ms               INTEGER NOT NULL
	) STRICT;

	-- Signal protocol state (crypto.Store). Records are opaque blobs.
	CREATE TABLE identities (
		name          TEXT NOT NULL,
		device        INTEGER NOT NULL,
		key           BLOB NOT NULL,
		verified      INTEGER NOT NULL DEFAULT 0,
		first_seen_ms INTEGER NOT NULL,
		PRIMARY KEY (name, device)
	) STRICT, WITHOUT ROWID;
	CREATE TABLE prekeys (
		id     INTEGER PRIMARY KEY,
		record BLOB NOT NULL
	) STRICT;
	CREATE TABLE signed_prekeys (
		id              INTEGER PRIMARY KEY,
		record          BLOB NOT NULL,
		remove_after_ms INTEGER NOT NULL DEFAULT 0
	) STRICT;
	CREATE TABLE sessions (
		name   TEXT NOT NULL,
		device INTEGER NOT NULL,
		record BLOB NOT NULL,
		PRIMARY KEY (name, device)
	) STRICT, WITHOUT ROWID;
	CREATE TABLE sender_keys (
		group_id BLOB NOT NULL,
		name     TEXT NOT NULL,
		device   INTEGER NOT NULL,
		record   BLOB NOT NULL,
		PRIMARY KEY (group_id, name, device)
	) STRICT, WITHOUT ROWID;

	-- A remote device's identity key changed and the user has not accepted
	-- the new one yet (trust on first use).
	CREATE TABLE identity_changes (
		name    TEXT NOT NULL,
		device  INTEGER NOT NULL,
		old_key BLOB NOT NULL,
		new_key BLOB NOT NULL,
		seen_ms INTEGER NOT NULL,
		PRIMARY KEY (name, device)
	) STRICT, WITHOUT ROWID;

	-- Devices that hold this device's current sender key for a group.
	CREATE TABLE sender_key_shared (
		group_id BLOB NOT NULL,
		name     TEXT NOT NULL,
		device   INTEGER NOT NULL,
		PRIMARY KEY (group_id, name, device)
	) STRICT, WITHOUT ROWID;

	CREATE TABLE contacts (
		name       TEXT PRIMARY KEY,
		created_ms INTEGER NOT NULL
	) STRICT, WITHOUT ROWID;

	-- id is "@name" for a 1-1 conversation, "#<hex group id>" for a group.
	CREATE TABLE conversations (
		id               TEXT PRIMARY KEY,
		peer             TEXT NOT NULL DEFAULT '',
		group_id         BLOB,
		send_counter     INTEGER NOT NULL DEFAULT 0,
		created_ms       INTEGER NOT NULL,
		last_activity_ms INTEGER NOT NULL DEFAULT 0,
		muted            INTEGER NOT NULL DEFAULT 0
	) STRICT, WITHOUT ROWID;

	-- sort_key orders a conversation: appended messages get the next step,
	-- a late message from a sender is slotted before that sender's later
	-- counters. content is the message's encoded Content (kept for
	-- re-sends, quotes and attachments).
	CREATE TABLE messages (
		seq           INTEGER PRIMARY KEY,
		conv          TEXT NOT NULL,
		msg_id        BLOB NOT NULL,
		sender        TEXT NOT NULL,
		sender_device INTEGER NOT NULL,
		outgoing      INTEGER NOT NULL,
		counter       INTEGER NOT NULL,
		sort_key      INTEGER NOT NULL,
		sent_ms       INTEGER NOT NULL,
		received_ms   INTEGER NOT NULL,
		server_id     INTEGER NOT NULL DEFAULT 0,
		kind          INTEGER NOT NULL,
		body          TEXT NOT NULL DEFAULT '',
		content       BLOB,
		status        INTEGER NOT NULL DEFAULT 0,
		read          INTEGER NOT NULL DEFAULT 0,
		error         TEXT NOT NULL DEFAULT '',
		UNIQUE (sender, msg_id)
	) STRICT;
	CREATE INDEX messages_conv_sort ON messages (conv, sort_key);
	CREATE INDEX messages_conv_sender ON messages (conv, sender, sender_device, counter);
	CREATE INDEX messages_unread ON messages (conv) WHERE read = 0 AND outgoing = 0;
	CREATE INDEX messages_server_id ON messages (server_id) WHERE server_id != 0;

	-- Every relay id an outgoing message was stored under (its first send
	-- and any re-sends), so a retry request naming any of them finds it.
	CREATE TABLE message_server_ids (
		server_id INTEGER PRIMARY KEY,
		message   INTEGER NOT NULL REFERENCES messages (seq) ON DELETE CASCADE
	) STRICT;

	-- Per recipient account status of an outgoing message (per member in
	-- a group).
	CREATE TABLE message_recipients (
		message    INTEGER NOT NULL REFERENCES messages (seq) ON DELETE CASCADE,
		account    TEXT NOT NULL,
		status     INTEGER NOT NULL,
		updated_ms INTEGER NOT NULL,
		PRIMARY KEY (message, account)
	) STRICT, WITHOUT ROWID;

	CREATE VIRTUAL TABLE messages_fts USING fts5 (
		body, content = 'messages', content_rowid = 'seq',
		tokenize = 'unicode61 remove_diacritics 2'
	);
	CREATE TRIGGER messages_fts_insert AFTER INSERT ON messages WHEN new.body != '' BEGIN
		INSERT INTO messages_fts (rowid, body) VALUES (new.seq, new.body);
	END;
	CREATE TRIGGER messages_fts_delete AFTER DELETE ON messages WHEN old.body != '' BEGIN
		INSERT INTO messages_fts (messages_fts, rowid, body) VALUES ('delete', old.seq, old.body);
	END;
	CREATE TRIGGER messages_fts_update AFTER UPDATE OF body ON messages BEGIN
		INSERT INTO messages_fts (messages_fts, rowid, body)
			SELECT 'delete', old.seq, old.body WHERE old.body != '';
		INSERT INTO messages_fts (rowid, body)
			SELECT new.seq, new.body WHERE new.body != '';
	END;

	-- Sends not yet acknowledged by the relay, in the order they were made.
	CREATE TABLE outbox (
		seq           INTEGER PRIMARY KEY AUTOINCREMENT,
		kind          INTEGER NOT NULL,
		message       INTEGER,
		group_id      BLOB,
		accounts      TEXT NOT NULL DEFAULT '',
		own_devices   INTEGER NOT NULL DEFAULT 0,
		depends_on    INTEGER NOT NULL DEFAULT 0,
		content       BLOB NOT NULL,
		sync_content  BLOB,
		client_id     BLOB,
		frame         BLOB,
		state         INTEGER NOT NULL DEFAULT 0,
		attempts      INTEGER NOT NULL DEFAULT 0,
		not_before_ms INTEGER NOT NULL DEFAULT 0,
		error         TEXT NOT NULL DEFAULT '',
		created_ms    INTEGER NOT NULL
	) STRICT;
	CREATE INDEX outbox_due ON outbox (state, not_before_ms);

	CREATE TABLE groups (
		id         BLOB PRIMARY KEY,
		name       TEXT NOT NULL,
		revision   INTEGER NOT NULL,
		member     INTEGER NOT NULL,
		actor      TEXT NOT NULL DEFAULT '',
		created_ms INTEGER NOT NULL,
		updated_ms INTEGER NOT NULL
	) STRICT, WITHOUT ROWID;
	CREATE TABLE group_members (
		group_id BLOB NOT NULL REFERENCES groups (id) ON DELETE CASCADE,
		account  TEXT NOT NULL,
		admin    INTEGER NOT NULL DEFAULT 0,
		PRIMARY KEY (group_id, account)
	) STRICT, WITHOUT ROWID;
	CREATE INDEX group_members_account ON group_members (account);

	-- Envelopes already stored (decrypted or recorded as undecryptable):
	-- a redelivery after a crash between commit and ACK is only ACKed.
	CREATE TABLE processed (
		server_id INTEGER PRIMARY KEY,
		at_ms     INTEGER NOT NULL
	) STRICT;
	CREATE INDEX processed_at ON processed (at_ms);

	-- Envelopes that cannot be processed yet (a changed identity awaiting
	-- the user's decision, a group message before its sender key).
	CREATE TABLE held (
		server_id INTEGER PRIMARY KEY,
		sender    TEXT NOT NULL,
		device    INTEGER NOT NULL,
		type      INTEGER NOT NULL,
		payload   BLOB NOT NULL,
		server_ms INTEGER NOT NULL,
		reason    TEXT NOT NULL,
		held_ms   INTEGER NOT NULL
	) STRICT;
	CREATE INDEX held_sender ON held (sender);

	-- Delivery receipts owed for stored messages, queued in the same
	-- transaction as the message so that a crash cannot lose them.
	CREATE TABLE pending_receipts (
		sender TEXT NOT NULL,
		msg_id BLOB NOT NULL,
		PRIMARY KEY (sender, msg_id)
	) STRICT, WITHOUT ROWID;

	-- Durable events not yet handled by the application.
	CREATE TABLE events (
		seq        INTEGER PRIMARY KEY AUTOINCREMENT,
		kind       TEXT NOT NULL,
		data       BLOB NOT NULL,
		created_ms INTEGER NOT NULL
	) STRICT;

	CREATE TABLE settings (
		key   TEXT PRIMARY KEY,
		value TEXT NOT NULL
	) STRICT, WITHOUT ROWID;
	`,
}
