package keys

import (
	"context"
	"errors"
	"log/slog"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"google.golang.org/protobuf/proto"

	"github.com/keymeter/keymeter/internal/bus"
	"github.com/keymeter/keymeter/internal/event/keymeterv1"
)

// The table is sharded copy-on-write. Readers do two atomic loads and one
// probe of an open-addressing index (index.go), and never lock:
//
//	shards[hash bits] → hashIndex (first 16 bytes of hash) → slot index → chunk → Slot
//
// A Slot is a key's stable home: its Record is replaced atomically when the
// key changes (revocations, throttles and quota updates touch no map), and
// it carries the lock-free token-bucket and quota counters that must survive
// those updates. Only inserting or deleting a key copies a map, and only its
// shard (~1/1024 of the table).
//
// Keys are compared on the first 128 bits of the SHA-256: finding a secret
// whose truncated hash matches a stored key still takes ~2^128 work, and an
// accidental collision among 10^6 keys has probability ~2^-89. It saves
// 16 bytes per key.
const (
	shardBits = 10
	nShards   = 1 << shardBits
	chunkBits = 12
	chunkSize = 1 << chunkBits
	maxChunks = 1 << 12 // 16.7M keys

	maxBatch = 4096
)

type hkey [16]byte

func shardOf(k hkey) int { return int(k[0])<<2 | int(k[1])>>6 }

// Slot is one key's mutable state, shared by every request for the key.
type Slot struct {
	rec atomic.Pointer[Record]
	key hkey // set before the slot is published, never changed
	// RateTAT and ThrottleTAT are GCRA theoretical arrival times (unix ns)
	// of the key's rate-limit and throttle buckets.
	RateTAT     atomic.Int64
	ThrottleTAT atomic.Int64
	// Used counts requests this verifier allowed since the aggregator last
	// published the key's quota usage.
	Used atomic.Uint64
}

// Record is the key's current record, nil once deleted.
func (s *Slot) Record() *Record { return s.rec.Load() }

// TableConfig configures a Table.
type TableConfig struct {
	// KeepState keeps every key's full state for State/States (admin
	// processes). Verifiers leave it off to save memory.
	KeepState bool
}

// Table is the in-memory key table, fed from the key-state log.
type Table struct {
	shards [nShards]atomic.Pointer[hashIndex]
	chunks [maxChunks]atomic.Pointer[[chunkSize]Slot]
	size   atomic.Int64
	ready  chan struct{}
	loaded atomic.Bool

	log       *slog.Logger
	keepState bool

	// Writer state, guarded by mu. One goroutine (Run) writes in practice.
	mu       sync.Mutex
	byID     idIndex
	next     uint32
	projects map[string]string
	// pendingRevoked holds revocation records (RevocationRecordID) of keys
	// not in the table: applied when the key's own record arrives, dropped
	// with either's tombstone. A revocation record alone never makes a key
	// (it may come after the key was deleted: a retried Revoke, or another
	// partition of the key log).
	pendingRevoked map[string]pendingRevocation
	private        *[nShards]*hashIndex // during the first snapshot: unpublished indexes
	seen           map[string]struct{}
	changed        chan struct{}

	smu    sync.RWMutex
	states map[string]*keymeterv1.KeyState
	// revs is the key log's revision of each key's latest record (KeepState
	// only), for compare-and-set writes.
	revs map[string]uint64

	applied atomic.Uint64 // updates applied, for metrics
	invalid atomic.Uint64 // updates that could not be decoded
}

// NewTable returns an empty table; Run fills it. An option that does not
// apply is an error.
func NewTable(cfg TableConfig, opts ...Option) (*Table, error) {
	o, err := applyOptions(opts)
	if err != nil {
		return nil, err
	}
	t := &Table{
		ready:          make(chan struct{}),
		log:            o.log,
		keepState:      cfg.KeepState,
		projects:       make(map[string]string),
		pendingRevoked: make(map[string]pendingRevocation),
		changed:        make(chan struct{}),
		private:        new([nShards]*hashIndex),
	}
	empty := &hashIndex{}
	for i := range t.shards {
		t.shards[i].Store(empty)
	}
	if cfg.KeepState {
		t.states = make(map[string]*keymeterv1.KeyState)
		t.revs = make(map[string]uint64)
	}
	return t, nil
}

// Lookup returns the slot of the key with hash h, or nil. It never locks and
// never allocates.
func (t *Table) Lookup(h *Hash) *Slot {
	k := (*hkey)(h[:16])
	x := t.shards[shardOf(*k)].Load()
	if len(x.cells) == 0 {
		return nil
	}
	mask := uint32(len(x.cells) - 1)
	fp := fingerprint(k)
	for i := homeOf(k, mask); ; i = (i + 1) & mask {
		c := x.cells[i]
		if c == 0 {
			return nil
		}
		if c>>cellIdxBits == fp {
			idx := c&cellIdxMask - 1
			if s := &t.chunks[idx>>chunkBits].Load()[idx&(chunkSize-1)]; s.key == *k {
				return s
			}
		}
	}
}

func (t *Table) keyOf(idx uint32) *hkey { return &t.slot(idx).key }

func (t *Table) idOf(idx uint32) string {
	if r := t.slot(idx).Record(); r != nil {
		return r.ID
	}
	return ""
}

func (t *Table) findID(id string) (uint32, bool) {
	i := t.byID.find(id, t.idOf)
	return uint32(i), i >= 0
}

// Len is the number of keys in the table.
func (t *Table) Len() int { return int(t.size.Load()) }

// Ready is closed once the initial snapshot is loaded.
func (t *Table) Ready() <-chan struct{} { return t.ready }

// Loaded reports whether the initial snapshot is loaded.
func (t *Table) Loaded() bool { return t.loaded.Load() }

// Applied is the number of key updates applied; Invalid the number skipped.
func (t *Table) Applied() uint64 { return t.applied.Load() }
func (t *Table) Invalid() uint64 { return t.invalid.Load() }

// ByID returns the record of key id, or nil.
func (t *Table) ByID(id string) *Record {
	t.mu.Lock()
	idx, ok := t.findID(id)
	t.mu.Unlock()
	if !ok {
		return nil
	}
	return t.slot(idx).Record()
}

// SlotByID returns the slot of key id, or nil.
func (t *Table) SlotByID(id string) *Slot {
	t.mu.Lock()
	idx, ok := t.findID(id)
	t.mu.Unlock()
	if !ok {
		return nil
	}
	return t.slot(idx)
}

func (t *Table) slot(idx uint32) *Slot {
	return &t.chunks[idx>>chunkBits].Load()[idx&(chunkSize-1)]
}

// State returns a copy of the full state of key id (KeepState only).
func (t *Table) State(id string) (*keymeterv1.KeyState, bool) {
	t.smu.RLock()
	st, ok := t.states[id]
	t.smu.RUnlock()
	if !ok {
		return nil, false
	}
	return proto.CloneOf(st), true
}

// States returns copies of the full states of the keys for which keep
// returns true (all when keep is nil), sorted by id (KeepState only).
func (t *Table) States(keep func(*keymeterv1.KeyState) bool) []*keymeterv1.KeyState {
	t.smu.RLock()
	out := make([]*keymeterv1.KeyState, 0, len(t.states))
	for _, st := range t.states {
		if keep == nil || keep(st) {
			out = append(out, proto.CloneOf(st))
		}
	}
	t.smu.RUnlock()
	sort.Slice(out, func(i, j int) bool { return out[i].GetId() < out[j].GetId() })
	return out
}

// WaitVersion waits until key id has at least version v (or, with v == 0,
// is absent), so that writers can read their own writes.
func (t *Table) WaitVersion(ctx context.Context, id string, v uint64) error {
	for {
		t.mu.Lock()
		ch := t.changed
		idx, ok := t.findID(id)
		t.mu.Unlock()
		if v == 0 && !ok {
			return nil
		}
		if ok && v > 0 {
			if r := t.slot(idx).Record(); r != nil && r.Version >= v {
				return nil
			}
		}
		select {
		case <-ch:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

// Run watches the key-state log and applies every update until ctx ends.
// If the watch breaks, it watches again: the new snapshot replaces the
// table's content (keys missing from it are removed).
func (t *Table) Run(ctx context.Context, kl bus.KeyLog) error {
	backoff := 100 * time.Millisecond
	for {
		ch, err := kl.WatchKeys(ctx)
		if err == nil {
			backoff = 100 * time.Millisecond
			t.consume(ctx, ch)
		}
		if ctx.Err() != nil {
			return nil
		}
		t.log.Warn("key-state watch ended; watching again", "err", err, "backoff", backoff)
		select {
		case <-time.After(backoff):
		case <-ctx.Done():
			return nil
		}
		backoff = min(backoff*2, 5*time.Second)
		t.mu.Lock()
		t.seen = make(map[string]struct{}) // resync: remember which keys the new snapshot has
		t.mu.Unlock()
	}
}

func (t *Table) consume(ctx context.Context, ch <-chan bus.KeyUpdate) {
	batch := make([]bus.KeyUpdate, 0, maxBatch)
	for {
		var u bus.KeyUpdate
		var ok bool
		select {
		case u, ok = <-ch:
		case <-ctx.Done():
			return
		}
		if !ok {
			return
		}
		batch = append(batch[:0], u)
	drain:
		for len(batch) < maxBatch && !u.EndOfSnapshot {
			select {
			case u, ok = <-ch:
				if !ok {
					break drain
				}
				batch = append(batch, u)
			default:
				break drain
			}
		}
		t.Apply(batch)
		if !ok {
			return
		}
	}
}

// Apply applies a batch of key-log updates. Readers see each inserted key
// once its shard is republished at the end of the batch; updates of
// existing keys are visible at once.
func (t *Table) Apply(batch []bus.KeyUpdate) {
	t.mu.Lock()
	defer t.mu.Unlock()
	var dirty map[int]*hashIndex
	writable := func(i int) *hashIndex {
		if t.private != nil {
			if t.private[i] == nil {
				t.private[i] = &hashIndex{}
			}
			return t.private[i]
		}
		if x, ok := dirty[i]; ok {
			return x
		}
		if dirty == nil {
			dirty = make(map[int]*hashIndex)
		}
		x := t.shards[i].Load().clone()
		dirty[i] = x
		return x
	}
	endOfSnapshot := false
	for i := range batch {
		u := &batch[i]
		switch {
		case u.EndOfSnapshot:
			endOfSnapshot = true
		case u.Deleted:
			t.tombstone(u.ID, writable)
		default:
			t.put(u, writable)
			if _, rr := RevocationOf(u.ID); !rr {
				t.noteRevision(u.ID, u.Revision)
			}
		}
		if t.seen != nil && u.ID != "" {
			id := u.ID
			if k, rr := RevocationOf(id); rr {
				id = k
			}
			t.seen[id] = struct{}{}
		}
		t.applied.Add(1)
	}
	if endOfSnapshot && t.seen != nil {
		// After a resync, drop keys the new snapshot no longer has.
		var gone []string
		t.byID.each(func(idx uint32) {
			if id := t.idOf(idx); id != "" {
				if _, ok := t.seen[id]; !ok {
					gone = append(gone, id)
				}
			}
		})
		for _, id := range gone {
			t.remove(id, writable)
		}
		t.seen = nil
	}
	for i, x := range dirty {
		t.shards[i].Store(x)
	}
	if endOfSnapshot && t.private != nil {
		for i, x := range t.private {
			if x != nil {
				t.shards[i].Store(x)
			}
		}
		t.private = nil
	}
	close(t.changed)
	t.changed = make(chan struct{})
	if endOfSnapshot && !t.loaded.Load() {
		t.loaded.Store(true)
		close(t.ready)
		t.log.Info("key table loaded", "keys", t.size.Load())
	}
}

func (t *Table) internBytes(b []byte) string {
	if c, ok := t.projects[string(b)]; ok {
		return c
	}
	s := string(b)
	t.projects[s] = s
	return s
}

func (t *Table) put(u *bus.KeyUpdate, writable func(int) *hashIndex) {
	rec, k, st, ok := t.decodeUpdate(u)
	if !ok {
		return
	}
	_, revocation := RevocationOf(u.ID)
	if idx, ok := t.findID(rec.ID); ok {
		if s := t.slot(idx); s.key == k {
			t.update(s, rec, st)
			return
		}
		t.remove(rec.ID, writable) // the hash changed: a different secret
	}
	if revocation {
		t.pendingRevoked[rec.ID] = pendingRevocation{st: st}
		return
	}
	if p, ok := t.pendingRevoked[rec.ID]; ok {
		delete(t.pendingRevoked, rec.ID)
		if rec.Status != StatusRevoked {
			// The revocation came first (another partition of the key
			// log): this record, written without it, is not to undo it.
			rec.Status = StatusRevoked
			if st != nil && p.st != nil {
				st.Status, st.RevokedUnixNano, st.RevokeReason = p.st.Status, p.st.RevokedUnixNano, p.st.RevokeReason
			}
		}
	}
	idx := t.next
	if idx >= maxKeys {
		t.invalid.Add(1)
		t.log.Error("key table full; key not loaded", "key_id", rec.ID, "capacity", maxChunks*chunkSize)
		return
	}
	t.next++
	c := t.chunks[idx>>chunkBits].Load()
	if c == nil {
		c = new([chunkSize]Slot)
		t.chunks[idx>>chunkBits].Store(c)
	}
	s := &c[idx&(chunkSize-1)]
	s.key = k
	s.rec.Store(rec)
	writable(shardOf(k)).insert(&k, idx, t.keyOf)
	t.byID.insert(rec.ID, idx, t.idOf)
	t.size.Add(1)
	t.storeState(st)
}

// pendingRevocation is a revocation record whose key is not in the table
// (yet); st is its state when the table keeps states.
type pendingRevocation struct{ st *keymeterv1.KeyState }

// decodeUpdate decodes a key update's record (and, with keepState, its
// whole state); false when it is invalid (counted and logged).
func (t *Table) decodeUpdate(u *bus.KeyUpdate) (*Record, hkey, *keymeterv1.KeyState, bool) {
	rec, k, err := decodeRecord(u.Value, t.internBytes)
	if err != nil {
		t.invalid.Add(1)
		t.log.Error("skipping invalid key state", "key_id", u.ID, "revision", u.Revision, "err", err)
		return nil, k, nil, false
	}
	if rec.ID == "" {
		rec.ID = u.ID
		if id, ok := RevocationOf(u.ID); ok {
			rec.ID = id
		}
	}
	var st *keymeterv1.KeyState
	if t.keepState {
		st = &keymeterv1.KeyState{}
		if err := proto.Unmarshal(u.Value, st); err != nil {
			t.invalid.Add(1)
			t.log.Error("skipping undecodable key state", "key_id", u.ID, "revision", u.Revision, "err", err)
			return nil, k, nil, false
		}
		st.Id = rec.ID
	}
	return rec, k, st, true
}

// update applies rec (and st) to the slot of the same key and secret.
func (t *Table) update(s *Slot, rec *Record, st *keymeterv1.KeyState) {
	old := s.rec.Load()
	if old != nil && rec.Version != 0 && rec.Version < old.Version {
		if rec.Status == StatusRevoked && old.Status != StatusRevoked {
			// Revocation is final whatever the order: a revocation
			// (its own record, RevocationRecordID, comes in any
			// order with the key's) wins over a later write that
			// does not carry it, from a writer that read the key
			// before it. Keep the later write's other fields.
			t.log.Warn("applying a revocation over a later key state that does not carry it", "key_id", rec.ID, "version", rec.Version, "have", old.Version)
			nr := *old
			nr.Status = StatusRevoked
			s.rec.Store(&nr)
			if st != nil {
				if prev, ok := t.stateOf(rec.ID); ok {
					cur := proto.CloneOf(prev)
					cur.Status, cur.RevokedUnixNano, cur.RevokeReason = st.Status, st.RevokedUnixNano, st.RevokeReason
					t.storeState(cur)
				}
			}
			return
		}
		t.log.Warn("ignoring stale key state", "key_id", rec.ID, "version", rec.Version, "have", old.Version)
		return
	}
	if old != nil && old.Status == StatusSuspended && rec.Status == StatusActive && rec.Version == old.Version {
		// Two writers made the same version from the same read: one
		// suspended the key, the other changed something else. The
		// more restrictive status wins, whatever the arrival order.
		rec.Status = StatusSuspended
		if st != nil {
			st.Status = keymeterv1.KeyStatus_KEY_STATUS_SUSPENDED
			if prev, ok := t.stateOf(rec.ID); ok {
				st.SuspensionId, st.SuspendedUntilUnixNano = prev.SuspensionId, prev.SuspendedUntilUnixNano
			}
		}
	}
	if old != nil && old.Status == StatusRevoked && rec.Status != StatusRevoked {
		// Revocation is final (Service.Resume refuses it). A write
		// that un-revokes comes from a writer that read the key
		// before the revocation (the key log has no compare-and-set):
		// keep its other fields, never its status.
		t.log.Warn("keeping a key revoked against a concurrent writer's stale copy", "key_id", rec.ID, "version", rec.Version)
		rec.Status = StatusRevoked
		if st != nil {
			if prev, ok := t.stateOf(rec.ID); ok {
				st.Status, st.RevokedUnixNano, st.RevokeReason = prev.Status, prev.RevokedUnixNano, prev.RevokeReason
			}
		}
	}
	if old == nil || old.QuotaUsed != rec.QuotaUsed || old.QuotaState != rec.QuotaState {
		s.Used.Store(0)
	}
	s.rec.Store(rec)
	t.storeState(st)
}

// tombstone applies the deletion of key-log record id: a key, or a
// revocation record (whose key, if any, keeps its own status).
func (t *Table) tombstone(id string, writable func(int) *hashIndex) {
	if k, rr := RevocationOf(id); rr {
		delete(t.pendingRevoked, k)
		return
	}
	delete(t.pendingRevoked, id)
	t.remove(id, writable)
	t.noteRevision(id, 0)
}

// remove deletes key id. Its slot is not reused: a reader that found the
// slot index just before the delete must not see another key's record.
func (t *Table) remove(id string, writable func(int) *hashIndex) {
	idx, ok := t.findID(id)
	if !ok {
		return
	}
	s := t.slot(idx)
	t.byID.remove(id, t.idOf) // before the record goes: the index reads ids from records
	writable(shardOf(s.key)).remove(&s.key, t.keyOf)
	s.rec.Store(nil)
	t.size.Add(-1)
	if t.keepState {
		t.smu.Lock()
		delete(t.states, id)
		t.smu.Unlock()
	}
}

func (t *Table) stateOf(id string) (*keymeterv1.KeyState, bool) {
	t.smu.RLock()
	defer t.smu.RUnlock()
	st, ok := t.states[id]
	return st, ok
}

func (t *Table) storeState(st *keymeterv1.KeyState) {
	if !t.keepState || st == nil {
		return
	}
	t.smu.Lock()
	t.states[st.GetId()] = st
	t.smu.Unlock()
}

// noteRevision records the key log's latest revision of id, whether or not
// the table applied the record (a stale one is still the log's latest).
func (t *Table) noteRevision(id string, rev uint64) {
	if !t.keepState || id == "" {
		return
	}
	t.smu.Lock()
	if rev == 0 {
		delete(t.revs, id)
	} else {
		t.revs[id] = rev
	}
	t.smu.Unlock()
}

// StateRevision returns a copy of key id's full state and the key log's
// revision of its latest record (0 when unknown), for a compare-and-set
// write (KeepState only).
func (t *Table) StateRevision(id string) (*keymeterv1.KeyState, uint64, bool) {
	t.smu.RLock()
	st, ok := t.states[id]
	rev := t.revs[id]
	t.smu.RUnlock()
	if !ok {
		return nil, 0, false
	}
	return proto.CloneOf(st), rev, true
}

// RevocationSuffix makes the id of a key's revocation record from the key's
// id. On a key log without compare-and-set (Kafka) a writer that read a
// key before its revocation can write it back unrevoked after it (the
// quota writer, a detector's throttle), and that write, not the
// revocation, is then the key's latest record: the one a new reader's
// snapshot, or log compaction, keeps. Service.Revoke therefore also writes
// the revoked state under RevocationRecordID(id), which nothing else
// writes, so every reader sees the revocation whatever came later; the
// table holds a revocation final in any order (a revoked state is never
// ignored as older, and a later unrevoked one never lifts it).
const RevocationSuffix = ".revoked"

// RevocationRecordID is the key-log id of key id's revocation record.
func RevocationRecordID(id string) string { return id + RevocationSuffix }

// RevocationOf reports whether rid is a revocation record's id, and whose.
func RevocationOf(rid string) (string, bool) {
	if id, ok := strings.CutSuffix(rid, RevocationSuffix); ok && id != "" {
		return id, true
	}
	return "", false
}

// ErrNotFound: no key with that id.
var ErrNotFound = errors.New("keys: no such key")
