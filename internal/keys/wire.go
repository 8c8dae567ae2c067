package keys

import (
	"fmt"
	"math"

	"google.golang.org/protobuf/encoding/protowire"
)

// keyStateFields names every field of keymeter.v1.KeyState and says
// whether decodeRecord reads it (true) or the verifier has no use for it
// (false). TestWireCoversEveryKeyStateField fails when the .proto gains a
// field missing here, and when a field's entry disagrees with what
// decodeRecord does with it.
var keyStateFields = map[protowire.Number]bool{
	1: true, 2: true, // id, project
	3: false, 4: false, // name, owner: for people, not for verifying
	5: true, 6: true, // env, hash
	7:  false,            // display_prefix
	8:  true,             // status
	9:  false,            // created_unix_nano
	10: true,             // expires_unix_nano
	11: false, 12: false, // revoked_unix_nano, revoke_reason: status says revoked
	13: true, 14: true, 15: true, 16: true, 17: true, // scopes, allowed_cidrs, rate limit, burst, monthly quota
	18: false, 19: false, // metadata, replaces
	20: true, 21: true, 22: true, 23: true, 24: true, 25: true, // grace, quota state/used/period, throttle
	26: false,            // updated_unix_nano
	27: true,             // version
	28: true,             // kind: detection reads a key's declared kind from the table
	29: false, 30: false, // suspension_id, suspended_until: status says suspended
	31: false, // replaced_by: grace says how long a rotated-out key verifies
}

// decodeRecord builds a Record straight from the protobuf encoding of a
// keymeter.v1.KeyState, reading only the fields the verifier needs and
// allocating only what the record keeps (its id, limits, and new project
// names). Loading a million keys through proto.Unmarshal would allocate
// ~0.5 GB of short-lived messages; this keeps the load's peak memory close
// to the table's size. TestDecodeRecordMatchesProto holds it to the
// generated code.
func decodeRecord(b []byte, intern func([]byte) string) (*Record, hkey, error) {
	r := &Record{}
	var (
		hash                []byte
		ratePerS, throttleS float64
		throttleUntil       int64
		burst               uint32
		scopes, cidrs       [][]byte
		env, kind           []byte
	)
	for len(b) > 0 {
		num, typ, n := protowire.ConsumeTag(b)
		if n < 0 {
			return nil, hkey{}, protowire.ParseError(n)
		}
		b = b[n:]
		var v uint64
		var bs []byte
		switch typ {
		case protowire.VarintType:
			v, n = protowire.ConsumeVarint(b)
		case protowire.Fixed64Type:
			v, n = protowire.ConsumeFixed64(b)
		case protowire.BytesType:
			bs, n = protowire.ConsumeBytes(b)
		default:
			n = protowire.ConsumeFieldValue(num, typ, b)
		}
		if n < 0 {
			return nil, hkey{}, fmt.Errorf("field %d: %w", num, protowire.ParseError(n))
		}
		b = b[n:]
		switch num {
		case 1:
			r.ID = string(bs)
		case 2:
			r.Project = intern(bs)
		case 5:
			env = bs
		case 6:
			hash = bs
		case 8:
			r.Status = Status(v)
		case 10:
			r.ExpiresAt = int64(v)
		case 13:
			scopes = append(scopes, bs)
		case 14:
			cidrs = append(cidrs, bs)
		case 15:
			ratePerS = math.Float64frombits(v)
		case 16:
			burst = uint32(v)
		case 17:
			r.MonthlyQuota = v
		case 20:
			r.GraceUntil = int64(v)
		case 21:
			r.QuotaState = QuotaState(v)
		case 22:
			r.QuotaUsed = v
		case 23:
			r.QuotaPeriodStart = int64(v)
		case 24:
			throttleS = math.Float64frombits(v)
		case 25:
			throttleUntil = int64(v)
		case 27:
			r.Version = v
		case 28:
			kind = bs
		}
	}
	if len(hash) != len(Hash{}) {
		return nil, hkey{}, fmt.Errorf("hash is %d bytes, want %d", len(hash), len(Hash{}))
	}
	switch string(env) {
	case "live":
		r.Env = EnvLive
	case "test":
		r.Env = EnvTest
	}
	// Records written before kinds have none: server.
	r.Kind = KindOf(string(kind))
	r.RateInterval = interval(ratePerS)
	finishLimits(r, ratePerS, burst)
	if l := throttleLimits(throttleS, throttleUntil); l != nil || len(scopes) > 0 || len(cidrs) > 0 {
		if l == nil {
			l = &Limits{}
		}
		for _, s := range scopes {
			l.Scopes = append(l.Scopes, string(s))
		}
		for _, c := range cidrs {
			p, err := ParseCIDR(string(c))
			if err != nil {
				return nil, hkey{}, fmt.Errorf("allowed_cidrs: %w", err)
			}
			l.CIDRs = append(l.CIDRs, p)
		}
		r.Limits = l
	}
	return r, hkey(hash[:16]), nil
}

// throttleLimits returns Limits carrying a throttle, nil when none. A
// throttle without a deadline lasts until it is lifted.
func throttleLimits(perS float64, until int64) *Limits {
	iv := interval(perS)
	if iv == 0 {
		return nil
	}
	if until == 0 {
		until = math.MaxInt64
	}
	return &Limits{ThrottleInterval: iv, ThrottleUntil: until}
}

// finishLimits derives the default burst.
func finishLimits(r *Record, ratePerS float64, burst uint32) {
	if r.RateInterval > 0 {
		r.Burst = burst
		if r.Burst == 0 {
			// Default burst: one second's worth, at least 1.
			r.Burst = uint32(max(1, min(ratePerS, math.MaxUint32)))
		}
		// Keep interval × burst (the bucket's span in ns) far from overflow.
		if limit := uint64(1<<62) / uint64(r.RateInterval); uint64(r.Burst) > limit {
			r.Burst = uint32(limit)
		}
	}
}
