package storetest

import (
	"context"
	"testing"
	"time"

	"github.com/keymeter/keymeter/internal/store"
)

// testAudit: entries come back newest first, filtered, paged by cursor,
// and a retried write is one entry.
func testAudit(t *testing.T, f Factory) {
	s, _ := fresh(t, f)
	defer s.Close(context.Background())
	al, ok := s.(store.AuditLog)
	if !ok {
		t.Fatalf("%T keeps no audit trail (store.AuditLog)", s)
	}
	c := ctx(t)
	es := []store.AuditEntry{
		{ID: "a1", Time: base, Actor: "admin:0123abcd", Role: "admin", Action: "key.create", Target: "key_1", Project: "p1", Detail: `{"name":"it's \\ odd\n"}`},
		{ID: "a2", Time: base.Add(time.Second), Actor: "admin:0123abcd", Role: "admin", Action: "key.revoke", Target: "key_1", Project: "p1", Detail: `{"reason":"leaked"}`},
		{ID: "a3", Time: base.Add(2 * time.Second), Actor: "admin:99990000", Role: "admin", Action: "billing.close", Target: "2026-10"},
	}
	if err := al.WriteAudit(c, es); err != nil {
		t.Fatal(err)
	}
	if err := al.WriteAudit(c, es[:1]); err != nil { // a retried write
		t.Fatal(err)
	}
	all, err := al.Audit(c, store.AuditQuery{})
	if err != nil {
		t.Fatal(err)
	}
	if len(all) != 3 || all[0].ID != "a3" || all[2] != es[0] {
		t.Fatalf("audit = %+v", all)
	}
	byKey, _ := al.Audit(c, store.AuditQuery{Target: "key_1", Action: "key.revoke"})
	if len(byKey) != 1 || byKey[0] != es[1] {
		t.Fatalf("by target and action = %+v", byKey)
	}
	byActor, _ := al.Audit(c, store.AuditQuery{Actor: "admin:0123abcd", From: base, To: base.Add(time.Second)})
	if len(byActor) != 1 || byActor[0].ID != "a1" {
		t.Fatalf("by actor and time = %+v", byActor)
	}
	page1, _ := al.Audit(c, store.AuditQuery{Limit: 2})
	page2, err := al.Audit(c, store.AuditQuery{Limit: 2, Cursor: store.AuditCursor(page1[1])})
	if err != nil || len(page1) != 2 || len(page2) != 1 || page2[0].ID != "a1" {
		t.Fatalf("pages = %+v / %+v (%v)", page1, page2, err)
	}
	if err := al.WriteAudit(c, []store.AuditEntry{{ID: "x"}}); err == nil {
		t.Fatal("an entry without time or action was written")
	}
}
