// Package evaluate scores what a rule set decided over a labelled history:
// per attack label, whether it was detected and whether the intended action
// was taken in time; overall, false actions and alerts on benign traffic.
//
// A label file is NDJSON, one attack per line:
//
//	{"id":"geo-shift-1","scenario":"geo-shift","group":"key_3kq8...","start":"2026-11-25T14:02:11Z",
//	 "end":"2026-11-25T14:40:00Z","intended_action":"revoke","forbidden_actions":[]}
//
// group is a key id, or a network in CIDR form (203.0.113.0/24, 198.51.100.7/32)
// for anonymous and network attacks; asn (optional) names the attacker's ASN
// when the attack is spread over one. Every key id and network not covered by
// a label is benign.
package evaluate

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net/netip"
	"os"
	"time"
)

// Actions a label may name, as in rule files and decisions.
var Actions = []string{"alert", "throttle", "block_ip", "suspend", "revoke"}

// Label is one attack in a labelled history.
type Label struct {
	ID               string    `json:"id"`
	Scenario         string    `json:"scenario"`
	Group            string    `json:"group"`
	ASN              uint32    `json:"asn,omitempty"`
	Start            time.Time `json:"start"`
	End              time.Time `json:"end"`
	IntendedAction   string    `json:"intended_action"`
	ForbiddenActions []string  `json:"forbidden_actions"`
	Note             string    `json:"note,omitempty"`

	prefix netip.Prefix // parsed Group when it is a network
}

// Network reports whether the label's group is a network (CIDR) rather than a key.
func (l *Label) Network() (netip.Prefix, bool) { return l.prefix, l.prefix.IsValid() }

func validAction(a string) bool {
	for _, x := range Actions {
		if x == a {
			return true
		}
	}
	return false
}

// Check validates a label and prepares it for matching.
func (l *Label) Check() error {
	switch {
	case l.ID == "":
		return fmt.Errorf("field id: required")
	case l.Group == "":
		return fmt.Errorf("field group: required (a key id or a CIDR)")
	case l.Start.IsZero():
		return fmt.Errorf("field start: required (RFC 3339)")
	case l.End.Before(l.Start):
		return fmt.Errorf("field end: %s is before start %s", l.End.Format(time.RFC3339), l.Start.Format(time.RFC3339))
	case !validAction(l.IntendedAction):
		return fmt.Errorf("field intended_action: %q is not one of alert, throttle, block_ip, suspend, revoke", l.IntendedAction)
	}
	for _, a := range l.ForbiddenActions {
		if !validAction(a) {
			return fmt.Errorf("field forbidden_actions: %q is not one of alert, throttle, block_ip, suspend, revoke", a)
		}
	}
	l.prefix = netip.Prefix{}
	if p, err := netip.ParsePrefix(l.Group); err == nil {
		l.prefix = p.Masked()
	}
	return nil
}

// ReadLabels reads an NDJSON label file; errors name the line and field.
func ReadLabels(r io.Reader) ([]Label, error) {
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64*1024), 1<<20)
	var out []Label
	ids := map[string]int{}
	for n := 1; sc.Scan(); n++ {
		b := bytes.TrimSpace(sc.Bytes())
		if len(b) == 0 || b[0] == '#' {
			continue
		}
		var l Label
		dec := json.NewDecoder(bytes.NewReader(b))
		dec.DisallowUnknownFields()
		if err := dec.Decode(&l); err != nil {
			return nil, fmt.Errorf("line %d: %v", n, err)
		}
		if err := l.Check(); err != nil {
			return nil, fmt.Errorf("line %d: %v", n, err)
		}
		if prev, ok := ids[l.ID]; ok {
			return nil, fmt.Errorf("line %d: field id: %q already used on line %d", n, l.ID, prev)
		}
		ids[l.ID] = n
		out = append(out, l)
	}
	if err := sc.Err(); err != nil {
		return nil, err
	}
	return out, nil
}

// ReadLabelFile reads labels from a file, naming it in errors.
func ReadLabelFile(path string) ([]Label, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	ls, err := ReadLabels(f)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return ls, nil
}

// WriteLabels writes labels as NDJSON.
func WriteLabels(w io.Writer, ls []Label) error {
	enc := json.NewEncoder(w)
	for i := range ls {
		l := ls[i]
		l.Start, l.End = l.Start.UTC(), l.End.UTC()
		if l.ForbiddenActions == nil {
			l.ForbiddenActions = []string{}
		}
		if err := enc.Encode(l); err != nil {
			return err
		}
	}
	return nil
}
