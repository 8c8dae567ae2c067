package store

import (
	"context"
	"fmt"
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
	page, err := newNewestFirst(q.Limit, q.From, q.To, q.Cursor, nil)
	if err != nil {
		return nil, err
	}
	if err := d.check(); err != nil {
		return nil, err
	}
	page.eq("actor", "actor", q.Actor)
	page.eq("action", "action", q.Action)
	page.eq("target", "target", q.Target)
	rows, err := d.conn.Query(ctx, d.sql(`SELECT id, toInt64(toUnixTimestamp64Milli(time)), actor, toString(role), toString(action),
 target, toString(project), detail
FROM {db}.audit FINAL WHERE `+page.whereSQL()+` ORDER BY time DESC, id DESC LIMIT {limit:UInt32}`), page.p)
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
