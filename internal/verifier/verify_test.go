package verifier

import (
	"net/netip"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"

	"github.com/keymeter/keymeter/internal/bus"
	"github.com/keymeter/keymeter/internal/event"
	"github.com/keymeter/keymeter/internal/event/keymeterv1"
	"github.com/keymeter/keymeter/internal/keys"
)

// testKey issues a key directly into a table (no bus): for unit tests of
// the decision function. Tests through the bus use keys.Service.
func testKey(t testing.TB, tbl *keys.Table, st *keymeterv1.KeyState) string {
	t.Helper()
	sec, err := keys.Generate(keys.EnvLive)
	if err != nil {
		t.Fatal(err)
	}
	h := sec.Hash()
	if st.Id == "" {
		st.Id, _ = keys.NewID()
	}
	if st.Project == "" {
		st.Project = "proj_test"
	}
	if st.Status == 0 {
		st.Status = keymeterv1.KeyStatus_KEY_STATUS_ACTIVE
	}
	st.Hash, st.Env = h[:], "live"
	st.Version++
	b, err := proto.Marshal(st)
	if err != nil {
		t.Fatal(err)
	}
	tbl.Apply([]bus.KeyUpdate{{ID: st.Id, Value: b}, {EndOfSnapshot: true}})
	return sec.Reveal()
}

func newTestVerifier(t testing.TB, routes ...Route) (*Verifier, *keys.Table) {
	tbl, err := keys.NewTable(keys.TableConfig{})
	if err != nil {
		t.Fatal(err)
	}
	tbl.Apply([]bus.KeyUpdate{{EndOfSnapshot: true}})
	v, err := New(Config{Table: tbl, Routes: routes})
	if err != nil {
		t.Fatal(err)
	}
	return v, tbl
}

var (
	ip1 = netip.MustParseAddr("203.0.113.7")
	ip2 = netip.MustParseAddr("198.51.100.9")
)

func TestVerifyOutcomes(t *testing.T) {
	v, tbl := newTestVerifier(t,
		Route{Prefix: "/public", Anonymous: true, AnonRatePerS: 1, AnonBurst: 2},
		Route{Prefix: "/admin", Scope: "admin"},
		Route{Prefix: "/read", Scope: "read:items"},
	)
	now := time.Now()
	ns := now.UnixNano()
	valid := testKey(t, tbl, &keymeterv1.KeyState{})
	revoked := testKey(t, tbl, &keymeterv1.KeyState{Status: keymeterv1.KeyStatus_KEY_STATUS_REVOKED, RevokeReason: "leaked"})
	suspended := testKey(t, tbl, &keymeterv1.KeyState{Status: keymeterv1.KeyStatus_KEY_STATUS_SUSPENDED})
	expired := testKey(t, tbl, &keymeterv1.KeyState{ExpiresUnixNano: ns - 1})
	notYetExpired := testKey(t, tbl, &keymeterv1.KeyState{ExpiresUnixNano: ns + int64(time.Hour)})
	graceOver := testKey(t, tbl, &keymeterv1.KeyState{GraceUntilUnixNano: ns - 1})
	inGrace := testKey(t, tbl, &keymeterv1.KeyState{GraceUntilUnixNano: ns + int64(time.Minute)})
	cidr := testKey(t, tbl, &keymeterv1.KeyState{AllowedCidrs: []string{"203.0.113.0/24", "2001:db8::/32"}})
	scoped := testKey(t, tbl, &keymeterv1.KeyState{Scopes: []string{"read:*"}})
	limited := testKey(t, tbl, &keymeterv1.KeyState{RateLimitPerS: 1, RateLimitBurst: 2})
	u := now.UTC()
	month := time.Date(u.Year(), u.Month(), 1, 0, 0, 0, 0, time.UTC).UnixNano()
	quota := testKey(t, tbl, &keymeterv1.KeyState{MonthlyQuota: 10, QuotaUsed: 9, QuotaPeriodStartUnixNano: month})
	quotaState := testKey(t, tbl, &keymeterv1.KeyState{MonthlyQuota: 1000, QuotaState: keymeterv1.QuotaState_QUOTA_STATE_EXCEEDED, QuotaPeriodStartUnixNano: month})
	quotaLastPeriod := testKey(t, tbl, &keymeterv1.KeyState{MonthlyQuota: 1000, QuotaUsed: 5000, QuotaState: keymeterv1.QuotaState_QUOTA_STATE_EXCEEDED,
		QuotaPeriodStartUnixNano: time.Date(u.Year(), u.Month()-1, 1, 0, 0, 0, 0, time.UTC).UnixNano()})
	throttled := testKey(t, tbl, &keymeterv1.KeyState{ThrottlePerS: 1, ThrottleUntilUnixNano: ns + int64(time.Hour)})
	throttleOver := testKey(t, tbl, &keymeterv1.KeyState{ThrottlePerS: 0.001, ThrottleUntilUnixNano: ns - 1})
	unknown, _ := keys.Generate(keys.EnvLive)
	blocked := netip.MustParseAddr("192.0.2.66")
	v.Blocks().Block(blocked, now.Add(time.Hour))

	steps := []struct {
		name   string
		key    string
		ip     netip.Addr
		path   string
		want   event.Outcome
		status int
	}{
		{"valid", valid, ip1, "/x", event.OutcomeValid, 200},
		{"missing", "", ip1, "/x", event.OutcomeMissing, 401},
		{"malformed", "km_live_nope", ip1, "/x", event.OutcomeMalformed, 401},
		{"bad checksum", valid[:len(valid)-1] + flipChar(valid[len(valid)-1]), ip1, "/x", event.OutcomeMalformed, 401},
		{"unknown", unknown.Reveal(), ip1, "/x", event.OutcomeUnknown, 401},
		{"revoked", revoked, ip1, "/x", event.OutcomeRevoked, 401},
		{"suspended", suspended, ip1, "/x", event.OutcomeSuspended, 403},
		{"expired", expired, ip1, "/x", event.OutcomeExpired, 401},
		{"not yet expired", notYetExpired, ip1, "/x", event.OutcomeValid, 200},
		{"rotation grace over", graceOver, ip1, "/x", event.OutcomeExpired, 401},
		{"in rotation grace", inGrace, ip1, "/x", event.OutcomeValid, 200},
		{"cidr allowed", cidr, ip1, "/x", event.OutcomeValid, 200},
		{"cidr allowed v6", cidr, netip.MustParseAddr("2001:db8::1"), "/x", event.OutcomeValid, 200},
		{"cidr allowed v4-mapped", cidr, netip.MustParseAddr("::ffff:203.0.113.9"), "/x", event.OutcomeValid, 200},
		{"cidr denied", cidr, ip2, "/x", event.OutcomeIPDenied, 403},
		{"scope granted by wildcard", scoped, ip1, "/read/items", event.OutcomeValid, 200},
		{"scope denied", scoped, ip1, "/admin", event.OutcomeScopeDenied, 403},
		{"no scopes on scoped route", valid, ip1, "/admin", event.OutcomeScopeDenied, 403},
		{"rate 1", limited, ip1, "/x", event.OutcomeValid, 200},
		{"rate 2 (burst)", limited, ip1, "/x", event.OutcomeValid, 200},
		{"rate limited", limited, ip1, "/x", event.OutcomeRateLimited, 429},
		{"quota last", quota, ip1, "/x", event.OutcomeValid, 200},
		{"quota exceeded by local count", quota, ip1, "/x", event.OutcomeQuotaExceeded, 429},
		{"quota exceeded by state", quotaState, ip1, "/x", event.OutcomeQuotaExceeded, 429},
		{"quota exceeded last period only", quotaLastPeriod, ip1, "/x", event.OutcomeValid, 200},
		{"throttle first", throttled, ip1, "/x", event.OutcomeValid, 200},
		{"throttled", throttled, ip1, "/x", event.OutcomeThrottled, 429},
		{"throttle ended", throttleOver, ip1, "/x", event.OutcomeValid, 200},
		{"throttle ended again", throttleOver, ip1, "/x", event.OutcomeValid, 200},
		{"blocked ip", "", blocked, "/x", event.OutcomeBlockedIP, 403},
		{"anonymous allowed", "", ip1, "/public/a", event.OutcomeValid, 200},
		{"anonymous burst", "", ip1, "/public/a", event.OutcomeValid, 200},
		{"anonymous limited", "", ip1, "/public/a", event.OutcomeRateLimited, 429},
		{"anonymous other ip", "", ip2, "/public/a", event.OutcomeValid, 200},
		{"anonymous route still checks keys", revoked, ip1, "/public/a", event.OutcomeRevoked, 401},
	}
	for _, s := range steps {
		d := v.Verify(&Request{Key: s.key, ClientIP: s.ip, Path: s.path, Method: "GET", Now: ns})
		if d.Outcome != s.want {
			t.Errorf("%s: outcome %v, want %v", s.name, d.Outcome, s.want)
		}
		if got := StatusCode(d.Outcome); got != s.status {
			t.Errorf("%s: status %d, want %d", s.name, got, s.status)
		}
	}
	// The rate-limited key passes again once a token is back.
	if d := v.Verify(&Request{Key: limited, ClientIP: ip1, Path: "/x", Now: ns + int64(time.Second)}); d.Outcome != event.OutcomeValid {
		t.Errorf("after refill: %v", d.Outcome)
	}
	// Every outcome is covered.
	covered := map[event.Outcome]bool{}
	for _, s := range steps {
		covered[s.want] = true
	}
	for _, o := range event.Outcomes() {
		if !covered[o] {
			t.Errorf("outcome %v not tested", o)
		}
	}
}

// TestBlockSparesValidKeys: an address block (detection's block_ip
// against credential stuffing) refuses every request without a valid,
// active key, but lets a valid key through: one abuser behind a carrier or
// office NAT must not lock out every paying key there. Before the fix the
// block was checked first and refused the valid key. BlockValidKeys
// restores the block-everything behaviour.
func TestBlockSparesValidKeys(t *testing.T) {
	now := time.Now()
	ns := now.UnixNano()
	blocked := netip.MustParseAddr("192.0.2.66")
	for _, all := range []bool{false, true} {
		tbl, err := keys.NewTable(keys.TableConfig{})
		if err != nil {
			t.Fatal(err)
		}
		tbl.Apply([]bus.KeyUpdate{{EndOfSnapshot: true}})
		v, err := New(Config{Table: tbl, BlockValidKeys: all, Routes: []Route{
			{Prefix: "/public", Anonymous: true, AnonRatePerS: 100, AnonBurst: 100}, {Prefix: "/admin", Scope: "admin"}}})
		if err != nil {
			t.Fatal(err)
		}
		v.Blocks().Block(blocked, now.Add(time.Hour))
		valid := testKey(t, tbl, &keymeterv1.KeyState{})
		limited := testKey(t, tbl, &keymeterv1.KeyState{RateLimitPerS: 0.001, RateLimitBurst: 1})
		revoked := testKey(t, tbl, &keymeterv1.KeyState{Status: keymeterv1.KeyStatus_KEY_STATUS_REVOKED})
		suspended := testKey(t, tbl, &keymeterv1.KeyState{Status: keymeterv1.KeyStatus_KEY_STATUS_SUSPENDED})
		expired := testKey(t, tbl, &keymeterv1.KeyState{ExpiresUnixNano: ns - 1})
		graceOver := testKey(t, tbl, &keymeterv1.KeyState{GraceUntilUnixNano: ns - 1})
		unknown, _ := keys.Generate(keys.EnvLive)
		validWant := event.OutcomeValid
		if all {
			validWant = event.OutcomeBlockedIP
		}
		for _, c := range []struct {
			name, key, path string
			want            event.Outcome
		}{
			{"valid key", valid, "/x", validWant},
			{"valid key, anonymous route", valid, "/public/x", validWant},
			{"missing", "", "/x", event.OutcomeBlockedIP},
			{"anonymous route", "", "/public/x", event.OutcomeBlockedIP},
			{"malformed", "km_live_nope", "/x", event.OutcomeBlockedIP},
			{"unknown", unknown.Reveal(), "/x", event.OutcomeBlockedIP},
			{"revoked", revoked, "/x", event.OutcomeBlockedIP},
			{"suspended", suspended, "/x", event.OutcomeBlockedIP},
			{"expired", expired, "/x", event.OutcomeBlockedIP},
			{"rotation grace over", graceOver, "/x", event.OutcomeBlockedIP},
		} {
			if d := v.Verify(&Request{Key: c.key, ClientIP: blocked, Path: c.path, Now: ns}); d.Outcome != c.want {
				t.Errorf("BlockValidKeys %v, %s from a blocked address: %v, want %v", all, c.name, d.Outcome, c.want)
			}
		}
		if all {
			continue
		}
		// A valid key's own limits still apply.
		if d := v.Verify(&Request{Key: valid, ClientIP: blocked, Path: "/admin", Now: ns}); d.Outcome != event.OutcomeScopeDenied {
			t.Errorf("valid key without the scope from a blocked address: %v", d.Outcome)
		}
		for i, want := range []event.Outcome{event.OutcomeValid, event.OutcomeRateLimited} {
			if d := v.Verify(&Request{Key: limited, ClientIP: blocked, Path: "/x", Now: ns}); d.Outcome != want {
				t.Errorf("rate-limited key from a blocked address, request %d: %v, want %v", i, d.Outcome, want)
			}
		}
		// Other addresses are not blocked.
		if d := v.Verify(&Request{Key: unknown.Reveal(), ClientIP: ip1, Path: "/x", Now: ns}); d.Outcome != event.OutcomeUnknown {
			t.Errorf("unknown key from another address: %v", d.Outcome)
		}
	}
}

func flipChar(c byte) string {
	if c == 'a' {
		return "b"
	}
	return "a"
}

func TestVerifyNoAlloc(t *testing.T) {
	v, tbl := newTestVerifier(t)
	k := testKey(t, tbl, &keymeterv1.KeyState{RateLimitPerS: 1e9, RateLimitBurst: 1000, AllowedCidrs: []string{"203.0.113.0/24"}, MonthlyQuota: 1 << 40})
	req := &Request{Key: k, ClientIP: ip1, Path: "/x", Method: "GET"}
	if n := testing.AllocsPerRun(1000, func() {
		if d := v.Verify(req); d.Outcome != event.OutcomeValid {
			t.Fatal(d.Outcome)
		}
	}); n != 0 {
		t.Fatalf("Verify allocates %v times", n)
	}
}

// BenchmarkVerify: 1,000,000 keys, a valid key with a rate limit.
func BenchmarkVerify(b *testing.B) {
	tbl, err := keys.NewTable(keys.TableConfig{})
	if err != nil {
		b.Fatal(err)
	}
	const n = 1_000_000
	batch := make([]bus.KeyUpdate, 0, n+1)
	var secret string
	for i := range n {
		sec, _ := keys.Generate(keys.EnvLive)
		h := sec.Hash()
		id, _ := keys.NewID()
		st := &keymeterv1.KeyState{Id: id, Project: "proj_" + string(rune('a'+i%26)), Hash: h[:], Env: "live",
			Status: keymeterv1.KeyStatus_KEY_STATUS_ACTIVE, RateLimitPerS: 1e9, RateLimitBurst: 1 << 20, Version: 1}
		data, _ := proto.Marshal(st)
		batch = append(batch, bus.KeyUpdate{ID: id, Value: data})
		if i == n/2 {
			secret = sec.Reveal()
		}
	}
	batch = append(batch, bus.KeyUpdate{EndOfSnapshot: true})
	tbl.Apply(batch)
	batch = nil
	v, err := New(Config{Table: tbl})
	if err != nil {
		b.Fatal(err)
	}
	req := &Request{Key: secret, ClientIP: ip1, Path: "/v1/items", Method: "GET"}
	b.ReportAllocs()
	b.ResetTimer()
	for b.Loop() {
		if d := v.Verify(req); d.Outcome != event.OutcomeValid {
			b.Fatal(d.Outcome)
		}
	}
}

func newState(rate float64, burst uint32) *keymeterv1.KeyState {
	return &keymeterv1.KeyState{RateLimitPerS: rate, RateLimitBurst: burst}
}

func TestParseRoutes(t *testing.T) {
	rs, err := ParseRoutes([]string{"/public,anonymous=5/10,/admin,scope=admin", "/v1/search,cost=3"})
	if err != nil {
		t.Fatal(err)
	}
	if len(rs) != 3 || !rs[0].Anonymous || rs[0].AnonRatePerS != 5 || rs[0].AnonBurst != 10 || rs[1].Scope != "admin" || rs[2].CostUnits != 3 {
		t.Fatalf("%+v", rs)
	}
	for _, bad := range []string{"public", "/x,anonymous=fast", "/x,colour=red", "/x,cost=many"} {
		if _, err := ParseRoutes([]string{bad}); err == nil {
			t.Errorf("%q accepted", bad)
		}
	}
}
