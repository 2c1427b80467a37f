// Package cassandra is the key server's distributed store on Apache
// Cassandra (gocql), for deployments where several key servers share one
// state.
//
// Data model: one partition per account in one table. The partition's
// static columns hold the account (next device id, the set of live device
// ids); rows keyed (device, 0) hold a device's keys; rows keyed (device, id)
// with id > 0 hold its one-time prekeys. Keeping an account in one partition
// is what makes every multi-row change a single-partition conditional batch
// — applied atomically or not at all — with no cross-partition coordination:
// registration (name claim + device + prekeys), adding a device (id
// allocation + device + prekeys), removing one (set update + range delete of
// the device's rows) and prekey upload (all ids IF NOT EXISTS, device still
// live).
//
// The one-time prekey claim is a lightweight transaction per key:
//
//	UPDATE … SET claimed = true, claimed_by = <uuid> WHERE … IF claimed = false
//
// Paxos makes at most one claimer succeed for a key, on any node. The claim
// id resolves the one ambiguous case, a CAS write timeout: a SERIAL read
// tells whether this claim won. The row is then deleted. Within one process,
// claims on the same device queue on a local lock first, so a burst of
// fetches costs one Paxos round per key instead of every claimer contending
// for the same lowest key; across processes, the LWT alone keeps claims
// exact.
//
// Deleted prekeys leave tombstones: keep the table's default gc_grace and
// run repairs within it, as for any Cassandra table with deletes — a
// tombstone dropped before every replica saw it could resurrect a claimed
// key.
package cassandra

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log"
	"log/slog"
	"math"
	"slices"
	"sync"
	"time"

	"github.com/gocql/gocql"

	"github.com/hushchat/hush/keyserver/store"
)

// schema is applied in order on open; the schema_version table records how
// many steps a keyspace has seen.
var schema = []string{
	`CREATE TABLE IF NOT EXISTS accounts (
		name               text,
		device             int,
		key_id             int,
		next_device        int static,
		devices            set<int> static,
		created            timestamp static,
		registration_id    int,
		identity_key       blob,
		spk_id             int,
		spk_public         blob,
		spk_signature      blob,
		prev_spk_id        int,
		prev_spk_public    blob,
		prev_spk_signature blob,
		prev_spk_expires   timestamp,
		lr_id              int,
		lr_public          blob,
		device_created     timestamp,
		public_key         blob,
		claimed            boolean,
		claimed_by         uuid,
		PRIMARY KEY ((name), device, key_id)
	) WITH CLUSTERING ORDER BY (device ASC, key_id ASC)`,
	`CREATE TABLE IF NOT EXISTS challenges (
		nonce   blob PRIMARY KEY,
		expires timestamp
	)`,
}

// Options configure Open.
type Options struct {
	// Hosts are contact points, "host" or "host:port".
	Hosts []string
	// Port is the CQL port for hosts given without one (default 9042).
	Port int
	// Keyspace is created if missing, with Replication.
	Keyspace string
	// Replication is the CQL replication map used when the keyspace is
	// created (default SimpleStrategy, replication_factor 1 — fine for one
	// node; set NetworkTopologyStrategy for a real cluster).
	Replication string
	// Timeout bounds each query (default 10 s).
	Timeout time.Duration
	// Logger receives the driver's own messages (connection trouble) at
	// warn level (nil: discarded). They never contain query values.
	Logger *slog.Logger
}

// Store is a store.Store on Cassandra.
type Store struct {
	s     *gocql.Session
	owned bool
	locks keyedLocks
}

var _ store.Store = (*Store)(nil)

// Open connects to the cluster, creates the keyspace if it is missing and
// migrates the schema.
func Open(ctx context.Context, o Options) (*Store, error) {
	if len(o.Hosts) == 0 || o.Keyspace == "" {
		return nil, errors.New("open cassandra: need hosts and a keyspace")
	}
	if !validIdent(o.Keyspace) {
		return nil, fmt.Errorf("open cassandra: keyspace %q must be 1–48 of [a-z0-9_], starting with a letter", o.Keyspace)
	}
	if o.Replication == "" {
		o.Replication = "{'class': 'SimpleStrategy', 'replication_factor': 1}"
	}
	if o.Timeout == 0 {
		o.Timeout = 10 * time.Second
	}
	cfg := gocql.NewCluster(o.Hosts...)
	if o.Port != 0 {
		cfg.Port = o.Port
	}
	cfg.Timeout = o.Timeout
	cfg.ConnectTimeout = o.Timeout
	cfg.Consistency = gocql.LocalQuorum
	cfg.SerialConsistency = gocql.LocalSerial
	if o.Logger != nil {
		cfg.Logger = slog.NewLogLogger(o.Logger.Handler(), slog.LevelWarn)
	} else {
		cfg.Logger = log.New(io.Discard, "", 0)
	}
	admin, err := cfg.CreateSession()
	if err != nil {
		return nil, fmt.Errorf("open cassandra %v: %w", o.Hosts, err)
	}
	err = admin.Query(fmt.Sprintf("CREATE KEYSPACE IF NOT EXISTS %s WITH replication = %s", o.Keyspace, o.Replication)).
		WithContext(ctx).Exec()
	admin.Close()
	if err != nil {
		return nil, fmt.Errorf("open cassandra: create keyspace %s: %w", o.Keyspace, err)
	}
	cfg.Keyspace = o.Keyspace
	s, err := cfg.CreateSession()
	if err != nil {
		return nil, fmt.Errorf("open cassandra %v/%s: %w", o.Hosts, o.Keyspace, err)
	}
	st, err := New(ctx, s)
	if err != nil {
		s.Close()
		return nil, err
	}
	st.owned = true
	return st, nil
}

func validIdent(s string) bool {
	if len(s) == 0 || len(s) > 48 || s[0] < 'a' || s[0] > 'z' {
		return false
	}
	for _, c := range []byte(s) {
		if !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '_') {
			return false
		}
	}
	return true
}

// New uses an existing session, whose keyspace must be set, and migrates
// the schema there. Close does not close a session passed to New. The
// session should use LOCAL_QUORUM (or stronger) and LOCAL_SERIAL.
func New(ctx context.Context, s *gocql.Session) (*Store, error) {
	st := &Store{s: s}
	if err := st.migrate(ctx); err != nil {
		return nil, fmt.Errorf("open cassandra: %w", err)
	}
	return st, nil
}

func (s *Store) migrate(ctx context.Context) error {
	if err := s.s.Query(`CREATE TABLE IF NOT EXISTS schema_version (id int PRIMARY KEY, version int)`).
		WithContext(ctx).Exec(); err != nil {
		return fmt.Errorf("create schema_version: %w", err)
	}
	var v int
	err := s.s.Query(`SELECT version FROM schema_version WHERE id = 0`).WithContext(ctx).Scan(&v)
	if err != nil && !errors.Is(err, gocql.ErrNotFound) {
		return fmt.Errorf("read schema version: %w", err)
	}
	if v > len(schema) {
		return fmt.Errorf("keyspace schema version %d is newer than this binary (%d)", v, len(schema))
	}
	for i := v; i < len(schema); i++ {
		if err := s.s.Query(schema[i]).WithContext(ctx).Exec(); err != nil {
			return fmt.Errorf("migrate schema to version %d: %w", i+1, err)
		}
		if err := s.s.Query(`INSERT INTO schema_version (id, version) VALUES (0, ?)`, i+1).WithContext(ctx).Exec(); err != nil {
			return fmt.Errorf("record schema version %d: %w", i+1, err)
		}
	}
	return nil
}

// Close closes the session if Open created it.
func (s *Store) Close() error {
	if s.owned {
		s.s.Close()
	}
	return nil
}

// Ping checks that a node answers.
func (s *Store) Ping(ctx context.Context) error {
	var v string
	if err := s.s.Query(`SELECT release_version FROM system.local`).WithContext(ctx).Scan(&v); err != nil {
		return fmt.Errorf("ping cassandra: %w", err)
	}
	return nil
}

// serialRead is LOCAL_SERIAL as a read consistency: the read sees every
// committed lightweight transaction (and completes any in flight).
const serialRead = gocql.Consistency(gocql.LocalSerial)

// maxAttempts bounds the retries of a compare-and-set that lost a race.
const maxAttempts = 20

var errContention = errors.New("too much contention on the account; retry")

// accountState reads the account's static columns at SERIAL consistency,
// so a following compare-and-set starts from the latest committed state.
func (s *Store) accountState(ctx context.Context, name string, serial bool) (next int, devices []int, err error) {
	q := s.s.Query(`SELECT next_device, devices FROM accounts WHERE name = ? LIMIT 1`, name).WithContext(ctx)
	if serial {
		q = q.Consistency(serialRead)
	}
	var nextP *int
	if err := q.Scan(&nextP, &devices); err != nil {
		if errors.Is(err, gocql.ErrNotFound) {
			return 0, nil, store.ErrAccountNotFound
		}
		return 0, nil, err
	}
	if nextP == nil || len(devices) == 0 {
		return 0, nil, store.ErrAccountNotFound
	}
	return *nextP, devices, nil
}

func (s *Store) missing(ctx context.Context, name string) error {
	if _, _, err := s.accountState(ctx, name, false); err != nil {
		return err
	}
	return store.ErrDeviceNotFound
}

// cas executes a conditional batch and reports whether it applied.
func (s *Store) cas(ctx context.Context, b *gocql.Batch) (bool, error) {
	applied, iter, err := s.s.MapExecuteBatchCAS(b.WithContext(ctx), map[string]any{})
	if iter != nil {
		iter.Close()
	}
	return applied, err
}

func (s *Store) addDeviceRows(b *gocql.Batch, name string, id int, k store.DeviceKeys, now time.Time) {
	b.Query(`INSERT INTO accounts (name, device, key_id, registration_id, identity_key, spk_id, spk_public,
		spk_signature, lr_id, lr_public, device_created) VALUES (?, ?, 0, ?, ?, ?, ?, ?, ?, ?, ?)`,
		name, id, int(k.RegistrationID), k.IdentityKey, int(k.SignedPreKey.ID), k.SignedPreKey.PublicKey,
		k.SignedPreKey.Signature, int(k.LastResort.ID), k.LastResort.PublicKey, now)
	for _, p := range k.OneTime {
		b.Query(`INSERT INTO accounts (name, device, key_id, public_key, claimed) VALUES (?, ?, ?, ?, false)`,
			name, id, int(p.ID), p.PublicKey)
	}
}

// CreateAccount implements store.Store: the name claim (IF next_device =
// null), device 1 and its prekeys are one conditional batch.
func (s *Store) CreateAccount(ctx context.Context, name string, keys store.DeviceKeys, now time.Time) error {
	b := s.s.NewBatch(gocql.LoggedBatch)
	b.Query(`UPDATE accounts SET next_device = 2, devices = {1}, created = ? WHERE name = ? IF next_device = null`, now, name)
	s.addDeviceRows(b, name, 1, keys, now)
	applied, err := s.cas(ctx, b)
	if err != nil {
		return fmt.Errorf("create account %s: %w", name, err)
	}
	if !applied {
		return fmt.Errorf("create account %s: %w", name, store.ErrNameTaken)
	}
	return nil
}

// AddDevice implements store.Store: the id is allocated by
// compare-and-set on next_device, in the same batch as the device's rows.
func (s *Store) AddDevice(ctx context.Context, name string, keys store.DeviceKeys, now time.Time) (uint32, error) {
	for range maxAttempts {
		next, _, err := s.accountState(ctx, name, true)
		if err != nil {
			return 0, fmt.Errorf("add device to %s: %w", name, err)
		}
		if next > store.MaxDeviceID {
			return 0, fmt.Errorf("add device to %s: %w", name, store.ErrDeviceLimit)
		}
		b := s.s.NewBatch(gocql.LoggedBatch)
		b.Query(`UPDATE accounts SET next_device = ?, devices = devices + ? WHERE name = ? IF next_device = ?`,
			next+1, []int{next}, name, next)
		s.addDeviceRows(b, name, next, keys, now)
		applied, err := s.cas(ctx, b)
		if err != nil {
			return 0, fmt.Errorf("add device to %s: %w", name, err)
		}
		if applied {
			return uint32(next), nil
		}
	}
	return 0, fmt.Errorf("add device to %s: %w", name, errContention)
}

// RemoveDevice implements store.Store: the live-device set shrinks by
// compare-and-set, in the same batch as the range delete of the device's
// rows (its keys and one-time prekeys).
func (s *Store) RemoveDevice(ctx context.Context, name string, device uint32) error {
	for range maxAttempts {
		_, devices, err := s.accountState(ctx, name, true)
		if err != nil {
			return fmt.Errorf("remove device %s/%d: %w", name, device, err)
		}
		if !slices.Contains(devices, int(device)) {
			return fmt.Errorf("remove device %s/%d: %w", name, device, store.ErrDeviceNotFound)
		}
		if len(devices) == 1 {
			return fmt.Errorf("remove device %s/%d: %w", name, device, store.ErrLastDevice)
		}
		b := s.s.NewBatch(gocql.LoggedBatch)
		b.Query(`UPDATE accounts SET devices = devices - ? WHERE name = ? IF devices = ?`, []int{int(device)}, name, devices)
		b.Query(`DELETE FROM accounts WHERE name = ? AND device = ?`, name, int(device))
		applied, err := s.cas(ctx, b)
		if err != nil {
			return fmt.Errorf("remove device %s/%d: %w", name, device, err)
		}
		if applied {
			return nil
		}
	}
	return fmt.Errorf("remove device %s/%d: %w", name, device, errContention)
}

const deviceColumns = `device, registration_id, identity_key, spk_id, spk_public, spk_signature,
	prev_spk_id, prev_spk_public, prev_spk_signature, prev_spk_expires, lr_id, lr_public, device_created`

func scanDevice(scan func(dest ...any) error) (store.Device, error) {
	var (
		d                store.Device
		id, reg, spk, lr int
		prev             *int
		prevPub, prevSig []byte
		prevExp          *time.Time
		created          time.Time
	)
	err := scan(&id, &reg, &d.IdentityKey, &spk, &d.SignedPreKey.PublicKey, &d.SignedPreKey.Signature,
		&prev, &prevPub, &prevSig, &prevExp, &lr, &d.LastResort.PublicKey, &created)
	if err != nil {
		return store.Device{}, err
	}
	d.ID, d.RegistrationID, d.SignedPreKey.ID, d.LastResort.ID = uint32(id), uint32(reg), uint32(spk), uint32(lr)
	if prev != nil && *prev != 0 {
		d.PrevSignedPreKey = store.SignedPreKey{ID: uint32(*prev), PublicKey: prevPub, Signature: prevSig}
		if prevExp != nil {
			d.PrevSignedExpires = prevExp.UTC()
		}
	}
	d.Created = created.UTC()
	return d, nil
}

// Devices implements store.Store.
func (s *Store) Devices(ctx context.Context, name string) ([]store.Device, error) {
	_, ids, err := s.accountState(ctx, name, false)
	if err != nil {
		return nil, fmt.Errorf("list devices of %s: %w", name, err)
	}
	iter := s.s.Query(`SELECT `+deviceColumns+` FROM accounts WHERE name = ? AND device IN ? AND key_id = 0`,
		name, ids).WithContext(ctx).Iter()
	sc := iter.Scanner()
	var out []store.Device
	for sc.Next() {
		d, err := scanDevice(sc.Scan)
		if err != nil {
			iter.Close()
			return nil, fmt.Errorf("list devices of %s: %w", name, err)
		}
		out = append(out, d)
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("list devices of %s: %w", name, err)
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("list devices of %s: %w", name, store.ErrAccountNotFound)
	}
	slices.SortFunc(out, func(a, b store.Device) int { return int(a.ID) - int(b.ID) })
	return out, nil
}

// Device implements store.Store. A device row exists exactly while the
// device is live (removal deletes it in the same batch that updates the
// set), so one read answers.
func (s *Store) Device(ctx context.Context, name string, device uint32) (store.Device, error) {
	d, err := scanDevice(s.s.Query(`SELECT `+deviceColumns+` FROM accounts WHERE name = ? AND device = ? AND key_id = 0`,
		name, int(device)).WithContext(ctx).Scan)
	if errors.Is(err, gocql.ErrNotFound) {
		err = s.missing(ctx, name)
	}
	if err != nil {
		return store.Device{}, fmt.Errorf("get device %s/%d: %w", name, device, err)
	}
	return d, nil
}

// countOneTime counts the device's unclaimed one-time prekeys.
func (s *Store) countOneTime(ctx context.Context, name string, device uint32) (int, error) {
	iter := s.s.Query(`SELECT claimed FROM accounts WHERE name = ? AND device = ? AND key_id > 0`,
		name, int(device)).WithContext(ctx).PageSize(1000).Iter()
	var claimed bool
	n := 0
	for iter.Scan(&claimed) {
		if !claimed {
			n++
		}
	}
	if err := iter.Close(); err != nil {
		return 0, err
	}
	return n, nil
}

// AddOneTimePreKeys implements store.Store: every key is inserted IF NOT
// EXISTS in one conditional batch that also checks the device is still
// live. The cap is checked against a count read just before, so concurrent
// uploads for one device can overshoot it by one batch each.
func (s *Store) AddOneTimePreKeys(ctx context.Context, name string, device uint32, keys []store.PreKey, max int) error {
	for range maxAttempts {
		_, devices, err := s.accountState(ctx, name, true)
		if err != nil {
			return fmt.Errorf("add one-time prekeys for %s/%d: %w", name, device, err)
		}
		if !slices.Contains(devices, int(device)) {
			return fmt.Errorf("add one-time prekeys for %s/%d: %w", name, device, store.ErrDeviceNotFound)
		}
		n, err := s.countOneTime(ctx, name, device)
		if err != nil {
			return fmt.Errorf("add one-time prekeys for %s/%d: %w", name, device, err)
		}
		if n+len(keys) > max {
			return fmt.Errorf("add one-time prekeys for %s/%d: %d stored + %d new > %d: %w", name, device, n, len(keys), max, store.ErrPreKeyLimit)
		}
		if len(keys) == 0 {
			return nil
		}
		b := s.s.NewBatch(gocql.LoggedBatch)
		// Rewriting the set with its own value is the batch's check that
		// the device was not removed meanwhile.
		b.Query(`UPDATE accounts SET devices = ? WHERE name = ? IF devices = ?`, devices, name, devices)
		for _, k := range keys {
			b.Query(`INSERT INTO accounts (name, device, key_id, public_key, claimed) VALUES (?, ?, ?, ?, false) IF NOT EXISTS`,
				name, int(device), int(k.ID), k.PublicKey)
		}
		applied, err := s.cas(ctx, b)
		if err != nil {
			return fmt.Errorf("add one-time prekeys for %s/%d: %w", name, device, err)
		}
		if applied {
			return nil
		}
		// Either a key id exists or the device set changed: tell which.
		_, now, err := s.accountState(ctx, name, true)
		if err != nil {
			return fmt.Errorf("add one-time prekeys for %s/%d: %w", name, device, err)
		}
		if slices.Equal(now, devices) {
			return fmt.Errorf("add one-time prekeys for %s/%d: %w", name, device, store.ErrPreKeyExists)
		}
	}
	return fmt.Errorf("add one-time prekeys for %s/%d: %w", name, device, errContention)
}

// RotateSignedPreKey implements store.Store with a compare-and-set on the
// current signed prekey id, so two rotations cannot interleave.
func (s *Store) RotateSignedPreKey(ctx context.Context, name string, device uint32, spk store.SignedPreKey, prevExpires time.Time) error {
	for range maxAttempts {
		var cur int
		var curPub, curSig []byte
		err := s.s.Query(`SELECT spk_id, spk_public, spk_signature FROM accounts WHERE name = ? AND device = ? AND key_id = 0`,
			name, int(device)).WithContext(ctx).Consistency(serialRead).Scan(&cur, &curPub, &curSig)
		if errors.Is(err, gocql.ErrNotFound) {
			err = s.missing(ctx, name)
		}
		if err != nil {
			return fmt.Errorf("rotate signed prekey of %s/%d: %w", name, device, err)
		}
		if uint32(cur) == spk.ID {
			return fmt.Errorf("rotate signed prekey of %s/%d: %w", name, device, store.ErrSignedPreKeyInUse)
		}
		m := map[string]any{}
		applied, err := s.s.Query(`UPDATE accounts SET prev_spk_id = ?, prev_spk_public = ?, prev_spk_signature = ?,
			prev_spk_expires = ?, spk_id = ?, spk_public = ?, spk_signature = ?
			WHERE name = ? AND device = ? AND key_id = 0 IF spk_id = ?`,
			cur, curPub, curSig, prevExpires, int(spk.ID), spk.PublicKey, spk.Signature, name, int(device), cur).
			WithContext(ctx).MapScanCAS(m)
		if err != nil {
			return fmt.Errorf("rotate signed prekey of %s/%d: %w", name, device, err)
		}
		if applied {
			return nil
		}
	}
	return fmt.Errorf("rotate signed prekey of %s/%d: %w", name, device, errContention)
}

// SetLastResort implements store.Store.
func (s *Store) SetLastResort(ctx context.Context, name string, device uint32, pk store.PreKey) error {
	applied, err := s.s.Query(`UPDATE accounts SET lr_id = ?, lr_public = ? WHERE name = ? AND device = ? AND key_id = 0 IF EXISTS`,
		int(pk.ID), pk.PublicKey, name, int(device)).WithContext(ctx).MapScanCAS(map[string]any{})
	if err == nil && !applied {
		err = s.missing(ctx, name)
	}
	if err != nil {
		return fmt.Errorf("set last-resort prekey of %s/%d: %w", name, device, err)
	}
	return nil
}

// CountOneTimePreKeys implements store.Store.
func (s *Store) CountOneTimePreKeys(ctx context.Context, name string, device uint32) (int, error) {
	if _, err := s.Device(ctx, name, device); err != nil {
		return 0, fmt.Errorf("count one-time prekeys: %w", err)
	}
	n, err := s.countOneTime(ctx, name, device)
	if err != nil {
		return 0, fmt.Errorf("count one-time prekeys of %s/%d: %w", name, device, err)
	}
	return n, nil
}

// claimBatch is how many candidate keys one read fetches.
const claimBatch = 16

// ClaimPreKey implements store.Store (see the package comment).
func (s *Store) ClaimPreKey(ctx context.Context, name string, device uint32) (store.Claim, error) {
	unlock, err := s.locks.lock(ctx, name+"\x00"+fmt.Sprint(device))
	if err != nil {
		return store.Claim{}, fmt.Errorf("claim prekey of %s/%d: %w", name, device, err)
	}
	defer unlock()
	c, err := s.claim(ctx, name, device)
	if err != nil {
		return store.Claim{}, fmt.Errorf("claim prekey of %s/%d: %w", name, device, err)
	}
	return c, nil
}

func (s *Store) claim(ctx context.Context, name string, device uint32) (store.Claim, error) {
	claimID, err := gocql.RandomUUID()
	if err != nil {
		return store.Claim{}, err
	}
	after := 0
	for {
		iter := s.s.Query(`SELECT key_id, public_key, claimed FROM accounts WHERE name = ? AND device = ? AND key_id > ? LIMIT ?`,
			name, int(device), after, claimBatch).WithContext(ctx).Iter()
		type cand struct {
			id  int
			pub []byte
		}
		var cands []cand
		rows := 0
		var (
			id      int
			pub     []byte
			claimed *bool
		)
		for iter.Scan(&id, &pub, &claimed) {
			rows++
			after = id
			if claimed != nil && !*claimed && len(pub) > 0 {
				cands = append(cands, cand{id, slices.Clone(pub)})
			}
		}
		if err := iter.Close(); err != nil {
			return store.Claim{}, err
		}
		for _, c := range cands {
			won, err := s.tryClaim(ctx, name, device, c.id, claimID)
			if err != nil {
				return store.Claim{}, err
			}
			if won {
				// The row is ours; delete it so reads and counts skip it.
				// A failed delete leaves a row marked claimed, which is
				// never handed out again.
				s.s.Query(`DELETE FROM accounts WHERE name = ? AND device = ? AND key_id = ?`, name, int(device), c.id).
					WithContext(ctx).Exec()
				return store.Claim{Key: store.PreKey{ID: uint32(c.id), PublicKey: c.pub}}, nil
			}
		}
		if rows < claimBatch {
			break
		}
	}
	var lrID int
	var lrPub []byte
	err = s.s.Query(`SELECT lr_id, lr_public FROM accounts WHERE name = ? AND device = ? AND key_id = 0`, name, int(device)).
		WithContext(ctx).Scan(&lrID, &lrPub)
	if errors.Is(err, gocql.ErrNotFound) {
		err = s.missing(ctx, name)
	}
	if err != nil {
		return store.Claim{}, err
	}
	return store.Claim{Key: store.PreKey{ID: uint32(lrID), PublicKey: lrPub}, LastResort: true}, nil
}

// tryClaim runs the claim LWT for one key. On a CAS write timeout the
// outcome is unknown; a SERIAL read of claimed_by settles it.
func (s *Store) tryClaim(ctx context.Context, name string, device uint32, id int, claimID gocql.UUID) (bool, error) {
	applied, err := s.s.Query(`UPDATE accounts SET claimed = true, claimed_by = ? WHERE name = ? AND device = ? AND key_id = ? IF claimed = false`,
		claimID, name, int(device), id).WithContext(ctx).MapScanCAS(map[string]any{})
	if err == nil {
		return applied, nil
	}
	var wt *gocql.RequestErrWriteTimeout
	if !errors.As(err, &wt) {
		return false, err
	}
	var by *gocql.UUID
	rerr := s.s.Query(`SELECT claimed_by FROM accounts WHERE name = ? AND device = ? AND key_id = ?`, name, int(device), id).
		WithContext(ctx).Consistency(serialRead).Scan(&by)
	switch {
	case errors.Is(rerr, gocql.ErrNotFound):
		return false, nil // claimed and deleted by someone else
	case rerr != nil:
		return false, fmt.Errorf("claim timed out (%v) and its outcome cannot be read: %w", err, rerr)
	}
	return by != nil && *by == claimID, nil
}

// PutChallenge implements store.Store; Cassandra's TTL removes the row a
// little after it expires.
func (s *Store) PutChallenge(ctx context.Context, nonce []byte, now, expires time.Time) error {
	ttl := int(math.Ceil(expires.Sub(now).Seconds())) + 60
	if ttl < 1 {
		ttl = 1
	}
	if err := s.s.Query(`INSERT INTO challenges (nonce, expires) VALUES (?, ?) USING TTL ?`, nonce, expires, ttl).
		WithContext(ctx).Exec(); err != nil {
		return fmt.Errorf("put challenge: %w", err)
	}
	return nil
}

// ConsumeChallenge implements store.Store: a conditional delete, so of
// several concurrent consumers exactly one sees it applied.
func (s *Store) ConsumeChallenge(ctx context.Context, nonce []byte, now time.Time) error {
	prev := map[string]any{}
	applied, err := s.s.Query(`DELETE FROM challenges WHERE nonce = ? IF expires > ?`, nonce, now).
		WithContext(ctx).MapScanCAS(prev)
	if err != nil {
		return fmt.Errorf("consume challenge: %w", err)
	}
	if !applied {
		if _, expired := prev["expires"]; expired {
			// Burn it, so a node with a slower clock cannot accept it later.
			s.s.Query(`DELETE FROM challenges WHERE nonce = ? IF EXISTS`, nonce).WithContext(ctx).MapScanCAS(map[string]any{})
		}
		return fmt.Errorf("consume challenge: %w", store.ErrChallengeInvalid)
	}
	return nil
}

// keyedLocks serialises work per key within one process, honouring
// context cancellation while waiting. Entries live only while in use.
type keyedLocks struct {
	mu sync.Mutex
	m  map[string]*keyedLock
}

type keyedLock struct {
	ch    chan struct{}
	users int
}

func (k *keyedLocks) lock(ctx context.Context, key string) (func(), error) {
	k.mu.Lock()
	if k.m == nil {
		k.m = make(map[string]*keyedLock)
	}
	l := k.m[key]
	if l == nil {
		l = &keyedLock{ch: make(chan struct{}, 1)}
		k.m[key] = l
	}
	l.users++
	k.mu.Unlock()
	release := func() {
		k.mu.Lock()
		if l.users--; l.users == 0 {
			delete(k.m, key)
		}
		k.mu.Unlock()
	}
	select {
	case l.ch <- struct{}{}:
		return func() { <-l.ch; release() }, nil
	case <-ctx.Done():
		release()
		return nil, ctx.Err()
	}
}
