package evaluate

import (
	"strings"
	"testing"
	"time"

	"github.com/keymeter/keymeter/internal/event"
	"github.com/keymeter/keymeter/internal/event/keymeterv1"
)

const labelFile = `{"id":"geo-1","scenario":"geo-shift","group":"key_geo","start":"2026-11-24T10:00:00Z","end":"2026-11-24T10:30:00Z","intended_action":"revoke","forbidden_actions":[]}
{"id":"flood-1","scenario":"anon-burst","group":"203.0.113.0/24","start":"2026-11-24T11:00:00Z","end":"2026-11-24T11:10:00Z","intended_action":"block_ip","forbidden_actions":[]}
{"id":"spike-1","scenario":"quota-spike","group":"key_spike","start":"2026-11-24T12:00:00Z","end":"2026-11-24T12:20:00Z","intended_action":"throttle","forbidden_actions":["revoke","suspend"]}
{"id":"asn-1","scenario":"credential-stuffing-asn","group":"198.18.0.0/16","asn":64999,"start":"2026-11-24T13:00:00Z","end":"2026-11-24T14:00:00Z","intended_action":"block_ip","forbidden_actions":[]}
`

func at(s string) int64 { t, _ := time.Parse(time.RFC3339, s); return t.UnixNano() }

func dec(ts, rule, group, key string, a keymeterv1.Action, m keymeterv1.Mode) *keymeterv1.Decision {
	return &keymeterv1.Decision{TimeUnixNano: at(ts), RuleId: rule, Group: group, KeyId: key, Action: a, Mode: m}
}

func TestScorer(t *testing.T) {
	ls, err := ReadLabels(strings.NewReader(labelFile))
	if err != nil {
		t.Fatal(err)
	}
	s, err := NewScorer(ls, 0)
	if err != nil {
		t.Fatal(err)
	}
	en, dry := keymeterv1.Mode_MODE_ENFORCE, keymeterv1.Mode_MODE_DRY_RUN
	A := keymeterv1.Action_ACTION_ALERT
	for i := range 1000 {
		s.Event(&event.Event{Time: time.Unix(0, at("2026-11-24T09:00:00Z")).Add(time.Duration(i) * time.Second), KeyID: "key_benign"})
	}
	s.Event(&event.Event{Time: time.Unix(0, at("2026-11-24T11:05:00Z")), ClientIP: "203.0.113.7"})
	s.Event(&event.Event{Time: time.Unix(0, at("2026-11-24T10:05:00Z")), KeyID: "key_geo"})
	for _, d := range []*keymeterv1.Decision{
		dec("2026-11-24T09:00:00Z", "geo", "key_geo", "key_geo", keymeterv1.Action_ACTION_THROTTLE, en),   // before the attack: false
		dec("2026-11-24T10:00:30Z", "geo", "key_geo", "key_geo", A, en),                                   // detected
		dec("2026-11-24T10:01:00Z", "geo", "key_geo", "key_geo", keymeterv1.Action_ACTION_REVOKE, dry),    // dry-run: not taken
		dec("2026-11-24T10:02:00Z", "geo", "key_geo", "key_geo", keymeterv1.Action_ACTION_REVOKE, en),     // taken after 2m
		dec("2026-11-24T11:00:10Z", "flood", "203.0.113.9", "", keymeterv1.Action_ACTION_BLOCK_IP, en),    // one address: detected, not the intended block
		dec("2026-11-24T11:01:00Z", "flood", "203.0.113.0/24", "", keymeterv1.Action_ACTION_BLOCK_IP, en), // the /24: taken
		dec("2026-11-24T12:05:00Z", "spike", "key_spike", "key_spike", keymeterv1.Action_ACTION_THROTTLE, en),
		dec("2026-11-24T12:06:00Z", "spike", "key_spike", "key_spike", keymeterv1.Action_ACTION_SUSPEND, en), // forbidden
		dec("2026-11-24T13:30:00Z", "asn", "64999", "", keymeterv1.Action_ACTION_BLOCK_IP, en),
		dec("2026-11-24T15:00:00Z", "mob", "key_mobile", "key_mobile", keymeterv1.Action_ACTION_REVOKE, en), // benign key revoked
		dec("2026-11-24T15:00:00Z", "mob", "key_mobile2", "key_mobile2", A, en),                             // benign alert
		dec("2026-11-24T15:00:00Z", "net", "198.51.100.0/24", "", keymeterv1.Action_ACTION_BLOCK_IP, dry),   // dry-run false
	} {
		s.Decide(d)
	}
	r := s.Result()
	got := map[string]LabelResult{}
	for _, l := range r.Labels {
		got[l.ID] = l
	}
	if g := got["geo-1"]; !g.Detected || !g.Intended || g.TimeToAction != 2*time.Minute || g.DryRun != 1 {
		t.Errorf("geo-1: %+v", g)
	}
	if g := got["flood-1"]; !g.Intended || g.TimeToAction != time.Minute {
		t.Errorf("flood-1: %+v", g)
	}
	if g := got["spike-1"]; !g.Intended || g.Passed() || len(g.Forbidden) != 1 {
		t.Errorf("spike-1 (suspended, forbidden): %+v", g)
	}
	if g := got["asn-1"]; !g.Passed() {
		t.Errorf("asn-1: %+v", g)
	}
	if r.IntendedTaken != 3 || r.Detected != 4 || r.Passed() {
		t.Errorf("totals: intended %d detected %d passed %t", r.IntendedTaken, r.Detected, r.Passed())
	}
	if len(r.BenignRevoked) != 2 || r.FalseActions["revoke"] != 1 || r.FalseActions["suspend"] != 1 || r.FalseActions["throttle"] != 1 || r.BenignAlerts != 1 || r.FalseDryRun["block_ip"] != 1 {
		t.Errorf("false actions: %+v revoked %+v alerts %d dry %v", r.FalseActions, r.BenignRevoked, r.BenignAlerts, r.FalseDryRun)
	}
	if r.Events != 1002 || r.BenignEvents != 1000 {
		t.Errorf("events %d benign %d", r.Events, r.BenignEvents)
	}
	var b strings.Builder
	_ = r.WriteText(&b)
	for _, want := range []string{"key_mobile revoke by mob", "spike-1", "!suspend"} {
		if !strings.Contains(b.String(), want) {
			t.Errorf("text lacks %q:\n%s", want, b.String())
		}
	}
	if sum := r.Summary(); !strings.Contains(sum, "intended_recall=0.750") || !strings.Contains(sum, "passed=false") {
		t.Errorf("summary: %s", sum)
	}
}

func TestReadLabelsErrors(t *testing.T) {
	for in, want := range map[string]string{
		`{"id":"a","group":"k","start":"2026-11-24T10:00:00Z","end":"2026-11-24T09:00:00Z","intended_action":"revoke"}`: "line 1: field end",
		`{"id":"a","group":"k","start":"2026-11-24T10:00:00Z","end":"2026-11-24T11:00:00Z","intended_action":"nuke"}`:   "field intended_action",
		`{"id":"a","grup":"k"}`: `unknown field "grup"`,
		"\n{\"id\":\"a\",\"group\":\"k\",\"start\":\"2026-11-24T10:00:00Z\",\"end\":\"2026-11-24T11:00:00Z\",\"intended_action\":\"alert\",\"forbidden_actions\":[\"x\"]}": "line 2: field forbidden_actions",
	} {
		if _, err := ReadLabels(strings.NewReader(in)); err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%s: got %v, want %q", in, err, want)
		}
	}
}
