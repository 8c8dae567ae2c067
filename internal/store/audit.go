package store

import (
	"context"
	"fmt"
	"strconv"
	"strings"
	"time"
)

// AuditEntry is one change made through the API.
type AuditEntry struct {
	ID      string
	Time    time.Time
	Actor   string // the admin token's label (role and hash prefix), never the token
	Role    string // admin | read | reporter
	Action  string // e.g. key.create, key.revoke, billing.close, leak.report
	Target  string // what changed: a key id, a period
	Project string
	Detail  string // JSON: what was asked (never a secret)
}

// AuditQuery selects audit entries, newest first.
type AuditQuery struct {
	Actor    string
	Action   string
	Target   string
	From, To time.Time // [From, To)
	Limit    int       // 1-10000; 0: 100
	Cursor   string    // AuditCursor of the last entry of the previous page
}

// AuditLog keeps the audit trail.
type AuditLog interface {
	WriteAudit(ctx context.Context, es []AuditEntry) error
	Audit(ctx context.Context, q AuditQuery) ([]AuditEntry, error)
}

// AuditCursor is the cursor that continues after e (newest first).
func AuditCursor(e AuditEntry) string { return encodeCursor(e.Time.UnixMilli(), e.ID) }

// WriteAudit implements AuditLog. Entries are few; one statement each. The
// same entry written twice (a retry) is one row.
func (d *DB) WriteAudit(ctx context.Context, es []AuditEntry) error {
	if err := d.check(); err != nil {
		return err
	}
	for _, e := range es {
		if e.ID == "" || e.Action == "" || e.Time.IsZero() {
			return fmt.Errorf("%w: an audit entry needs an id, a time and an action", ErrInvalidQuery)
		}
		p := Params{}.Str("id", e.ID).Ms("t", e.Time).Str("actor", e.Actor).Str("role", e.Role).Str("action", e.Action).
			Str("target", e.Target).Str("project", e.Project).Str("detail", e.Detail)
		err := d.conn.Exec(ctx, d.sql(`INSERT INTO {db}.audit (id, time, actor, role, action, target, project, detail)
SELECT {id:String}, fromUnixTimestamp64Milli({t:Int64}, 'UTC'), {actor:String}, {role:String}, {action:String},
 {target:String}, {project:String}, {detail:String}`), p)
		if err != nil {
			return fmt.Errorf("store: write audit entry %s: %w", e.ID, err)
		}
	}
	return nil
}

// Audit implements AuditLog.
func (d *DB) Audit(ctx context.Context, q AuditQuery) ([]AuditEntry, error) {
	if q.Limit < 0 || q.Limit > 10000 {
		return nil, badFilter("limit", strconv.Itoa(q.Limit), "out of range", "1-10000")
	}
	if err := d.check(); err != nil {
		return nil, err
	}
	limit := q.Limit
	if limit == 0 {
		limit = 100
	}
	where := []string{"1"}
	p := Params{}.U64("limit", uint64(limit))
	if q.Actor != "" {
		where, p = append(where, "actor = {actor:String}"), p.Str("actor", q.Actor)
	}
	if q.Action != "" {
		where, p = append(where, "action = {action:String}"), p.Str("action", q.Action)
	}
	if q.Target != "" {
		where, p = append(where, "target = {target:String}"), p.Str("target", q.Target)
	}
	if !q.From.IsZero() {
		where, p = append(where, "time >= fromUnixTimestamp64Milli({from:Int64}, 'UTC')"), p.Ms("from", q.From)
	}
	if !q.To.IsZero() {
		where, p = append(where, "time < fromUnixTimestamp64Milli({to:Int64}, 'UTC')"), p.Ms("to", q.To)
	}
	if q.Cursor != "" {
		ms, id, err := decodeCursor(q.Cursor)
		if err != nil {
			return nil, err
		}
		where = append(where, "(time, id) < (fromUnixTimestamp64Milli({cms:Int64}, 'UTC'), {cid:String})")
		p = p.I64("cms", ms).Str("cid", id)
	}
	rows, err := d.conn.Query(ctx, d.sql(`SELECT id, toInt64(toUnixTimestamp64Milli(time)), actor, toString(role), toString(action),
 target, toString(project), detail
FROM {db}.audit FINAL WHERE `+strings.Join(where, " AND ")+` ORDER BY time DESC, id DESC LIMIT {limit:UInt32}`), p)
	if err != nil {
		return nil, fmt.Errorf("store: audit: %w", err)
	}
	defer rows.Close()
	var out []AuditEntry
	for rows.Next() {
		var e AuditEntry
		var ms int64
		if err := rows.Scan(&e.ID, &ms, &e.Actor, &e.Role, &e.Action, &e.Target, &e.Project, &e.Detail); err != nil {
			return nil, err
		}
		e.Time = msTime(ms)
		out = append(out, e)
	}
	return out, rows.Err()
}
