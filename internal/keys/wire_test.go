package keys

import (
	"fmt"
	"math/rand/v2"
	"reflect"
	"strings"
	"testing"

	"google.golang.org/protobuf/proto"

	"github.com/keymeter/keymeter/internal/event/keymeterv1"
)

// recordFromState is the reference for decodeRecord: it builds the compact record of a key state. intern returns
// the canonical copy of a project name.
func recordFromState(st *keymeterv1.KeyState, intern func(string) string) (*Record, error) {
	if st.GetId() == "" {
		return nil, fmt.Errorf("keys: key state without id")
	}
	if len(st.GetHash()) != len(Hash{}) {
		return nil, fmt.Errorf("keys: key %s: hash is %d bytes, want %d", st.GetId(), len(st.GetHash()), len(Hash{}))
	}
	r := &Record{
		ID:               strings.Clone(st.GetId()),
		Project:          intern(st.GetProject()),
		Kind:             KindOf(st.GetKind()),
		Status:           Status(st.GetStatus()),
		QuotaState:       QuotaState(st.GetQuotaState()),
		ExpiresAt:        st.GetExpiresUnixNano(),
		GraceUntil:       st.GetGraceUntilUnixNano(),
		RateInterval:     interval(st.GetRateLimitPerS()),
		MonthlyQuota:     st.GetMonthlyQuota(),
		QuotaUsed:        st.GetQuotaUsed(),
		QuotaPeriodStart: st.GetQuotaPeriodStartUnixNano(),
		Version:          st.GetVersion(),
	}
	r.Env, _ = ParseEnv(st.GetEnv())
	finishLimits(r, st.GetRateLimitPerS(), st.GetRateLimitBurst())
	if l := throttleLimits(st.GetThrottlePerS(), st.GetThrottleUntilUnixNano()); l != nil || len(st.GetScopes()) > 0 || len(st.GetAllowedCidrs()) > 0 {
		if l == nil {
			l = &Limits{}
		}
		for _, s := range st.GetScopes() {
			l.Scopes = append(l.Scopes, strings.Clone(s))
		}
		for _, c := range st.GetAllowedCidrs() {
			p, err := ParseCIDR(c)
			if err != nil {
				return nil, fmt.Errorf("keys: key %s: allowed_cidrs: %w", st.GetId(), err)
			}
			l.CIDRs = append(l.CIDRs, p)
		}
		r.Limits = l
	}
	return r, nil
}

func TestDecodeRecordMatchesProto(t *testing.T) {
	rng := rand.New(rand.NewPCG(3, 4))
	intern := func(s string) string { return s }
	for i := range 2000 {
		st, _ := newState(t, fmt.Sprintf("proj_%d", rng.IntN(5)))
		st.Name, st.Owner = "n", "o"
		st.Metadata = map[string]string{"a": "b"}
		if rng.IntN(2) == 0 {
			st.Env = "test"
		}
		st.Status = keymeterv1.KeyStatus(rng.IntN(5))
		if rng.IntN(2) == 0 {
			st.ExpiresUnixNano = rng.Int64()
		}
		if rng.IntN(2) == 0 {
			st.Scopes = []string{"read", "write:*"}[:1+rng.IntN(2)]
		}
		if rng.IntN(3) == 0 {
			st.AllowedCidrs = []string{"10.0.0.0/8", "2001:db8::/32", "192.0.2.1/32"}[:1+rng.IntN(3)]
		}
		if rng.IntN(2) == 0 {
			st.RateLimitPerS = rng.Float64() * 1000
			st.RateLimitBurst = uint32(rng.IntN(3) * 10)
		}
		st.MonthlyQuota, st.QuotaUsed = uint64(rng.IntN(3))*1000, uint64(rng.IntN(2000))
		st.QuotaPeriodStartUnixNano = rng.Int64N(2) * rng.Int64()
		st.QuotaState = keymeterv1.QuotaState(rng.IntN(4))
		if rng.IntN(2) == 0 {
			st.ThrottlePerS = rng.Float64() * 10
			st.ThrottleUntilUnixNano = rng.Int64N(2) * rng.Int64()
		}
		if rng.IntN(2) == 0 {
			st.GraceUntilUnixNano, st.Replaces = rng.Int64(), "key_x"
		}
		st.Kind = []string{"", KindServer, KindBrowser, KindMobile, KindBatch, "quantum"}[rng.IntN(6)]
		st.Version = rng.Uint64()
		b, err := proto.Marshal(st)
		if err != nil {
			t.Fatal(err)
		}
		got, k, err := decodeRecord(b, func(b []byte) string { return string(b) })
		if err != nil {
			t.Fatal(err)
		}
		want, err := recordFromState(st, intern)
		if err != nil {
			t.Fatal(err)
		}
		if !reflect.DeepEqual(got, want) || k != hkey(st.Hash[:16]) {
			t.Fatalf("case %d:\n got %+v\nwant %+v", i, got, want)
		}
	}
	if _, _, err := decodeRecord([]byte{0xff}, nil); err == nil {
		t.Fatal("garbage decoded")
	}
	if _, _, err := decodeRecord(nil, nil); err == nil || !strings.Contains(err.Error(), "hash") {
		t.Fatalf("record without hash: %v", err)
	}
}

// A record written before kinds existed (no field 28) and one with a kind
// this version does not know both decode as server keys; known kinds stay.
func TestDecodeRecordKind(t *testing.T) {
	for _, tc := range []struct{ kind, want string }{
		{"", KindServer}, {"mobile", KindMobile}, {"batch", KindBatch}, {"browser", KindBrowser}, {"quantum", KindServer},
	} {
		st, _ := newState(t, "p")
		st.Kind = tc.kind
		b, err := proto.Marshal(st)
		if err != nil {
			t.Fatal(err)
		}
		r, _, err := decodeRecord(b, func(b []byte) string { return string(b) })
		if err != nil {
			t.Fatal(err)
		}
		if r.Kind != tc.want {
			t.Errorf("kind %q decoded as %q, want %q", tc.kind, r.Kind, tc.want)
		}
	}
	for _, ok := range []string{"", "server", "browser", "mobile", "batch"} {
		if _, err := ParseKind(ok); err != nil {
			t.Errorf("ParseKind(%q): %v", ok, err)
		}
	}
	for _, bad := range []string{"Mobile", "desktop", " server"} {
		if _, err := ParseKind(bad); err == nil || !strings.Contains(err.Error(), "accepted values") {
			t.Errorf("ParseKind(%q) accepted: %v", bad, err)
		}
	}
}
