package event

import (
	"bytes"
	"fmt"
	"io"
	"net/netip"
	"reflect"
	"strings"
	"syscall"
	"testing"
	"time"
)

var fastLine = `{"id":"ev-7-1","time":"2026-11-23T00:00:00.009818886Z","project":"proj_ledger","key_id":"key_urwnomjuumchpjeibr6bifk5","outcome":"valid","client_ip":"23.219.4.75","country":"KE","asn":20854,"method":"GET","host":"api.example.com","route":"/v1/search","status":200,"latency_us":13765,"bytes_out":18488,"user_agent":"okhttp/4.12.0 Koala/4.12.6","verifier_id":"edge-iz7pwk","cost_units":1}`

// The fast path and encoding/json accept the same lines and give the same
// events; what the fast path does not recognise goes to the slow one.
func TestFastDecodeAgreesWithDecodeJSON(t *testing.T) {
	lines := []string{
		fastLine,
		`{"id":"a","time":"2026-11-23T01:02:03Z","outcome":"missing"}`,
		` { "id" : "a" , "time" : "2026-11-23T01:02:03+02:00", "outcome":"valid" , "status": 0 } `,
		`{"id":"a","time":"2026-11-23T01:02:03.5-07:30","outcome":"valid"}`,
		`{"id":"a","time":"2026-02-30T01:02:03Z","outcome":"valid"}`,
		`{"id":"a","time":"2026-11-23T24:02:03Z","outcome":"valid"}`,
		`{"id":"a","time":"2026-11-23 01:02:03Z","outcome":"valid"}`,
		`{"id":"a","time":"2026-11-23T01:02:03.1234567891Z","outcome":"valid"}`,
		`{"id":"a","time":"2026-11-23T01:02:03Z","outcome":"valid","status":1000}`,
		`{"id":"a","time":"2026-11-23T01:02:03Z","outcome":"valid","status":999}`,
		`{"id":"a","time":"2026-11-23T01:02:03Z","outcome":"valid","asn":4294967296}`,
		`{"id":"a","time":"2026-11-23T01:02:03Z","outcome":"valid","asn":4294967295}`,
		`{"id":"a","time":"2026-11-23T01:02:03Z","outcome":"valid","asn":-1}`,
		`{"id":"a","time":"2026-11-23T01:02:03Z","outcome":"valid","asn":1.5}`,
		`{"id":"a","time":"2026-11-23T01:02:03Z","outcome":"valid","asn":012}`,
		`{"id":"a","time":"2026-11-23T01:02:03Z","outcome":"valid","asn":"12"}`,
		`{"id":"a","time":"2026-11-23T01:02:03Z","outcome":"valid","asn":null}`,
		`{"id":"a","time":"2026-11-23T01:02:03Z","outcome":"valid","client_ip":"1.2.3"}`,
		`{"id":"a","time":"2026-11-23T01:02:03Z","outcome":"valid","client_ip":"2001:db8::1"}`,
		`{"id":"a","time":"2026-11-23T01:02:03Z","outcome":"valid","country":"us"}`,
		`{"id":"a","time":"2026-11-23T01:02:03Z","outcome":"nope"}`,
		`{"id":"a","time":"2026-11-23T01:02:03Z"}`,
		`{"id":"","time":"2026-11-23T01:02:03Z","outcome":"valid"}`,
		`{"id":"a","time":"2026-11-23T01:02:03Z","outcome":"valid","extra":1}`,
		`{"id":"a","time":"2026-11-23T01:02:03Z","outcome":"valid"} x`,
		`{"id":"a","time":"2026-11-23T01:02:03Z","outcome":"valid"}{}`,
		`{"id":"a\"b","time":"2026-11-23T01:02:03Z","outcome":"valid","route":"/é"}`,
		`{"id":"a","id":"b","time":"2026-11-23T01:02:03Z","outcome":"valid"}`,
		`{"id":"a","time":"2026-11-23T01:02:03Z","outcome":"valid",}`,
		`{"id":"a","time":"1970-01-01T00:00:00Z","outcome":"valid"}`,
		`{}`, `[]`, `{"id":`, `nul`,
	}
	for _, l := range lines {
		want, werr := DecodeJSON([]byte(strings.TrimSpace(l)))
		rd := NewNDJSONReader(strings.NewReader(l + "\n"))
		got, gerr := rd.Next()
		if (werr == nil) != (gerr == nil) || (werr != nil && !strings.Contains(gerr.Error(), werr.Error())) {
			t.Errorf("%s:\n fast err %v\n slow err %v", l, gerr, werr)
			continue
		}
		if werr == nil && !reflect.DeepEqual(got, want) {
			t.Errorf("%s:\n fast %+v\n slow %+v", l, got, want)
		}
	}
}

func TestNDJSONReaderManyLines(t *testing.T) {
	var buf bytes.Buffer
	base := time.Date(2026, 11, 23, 23, 59, 0, 0, time.UTC)
	var want []Event
	for i := range 5000 {
		e := Event{ID: fmt.Sprintf("e%d", i), Time: base.Add(time.Duration(i) * 37 * time.Millisecond), KeyID: fmt.Sprintf("key_%d", i%7),
			Outcome: Outcome(1 + i%13), ClientIP: fmt.Sprintf("10.0.%d.%d", i%200, i%250), Country: "DE", ASN: uint32(i), Status: uint16(i % 600), BytesOut: uint64(i) << 33}
		want = append(want, e)
		buf.Write(e.AppendJSON(nil))
		buf.WriteByte('\n')
	}
	rd := NewNDJSONReader(&buf)
	for i := range want {
		got, err := rd.Next()
		if err != nil {
			t.Fatal(err)
		}
		if !reflect.DeepEqual(got, want[i]) {
			t.Fatalf("line %d: got %+v want %+v", i+1, got, want[i])
		}
	}
	if _, err := rd.Next(); err != io.EOF {
		t.Fatalf("want EOF, got %v", err)
	}
}

// BenchmarkNDJSONRead reads typical event lines (go test -bench NDJSON ./internal/event/).
func BenchmarkNDJSONRead(b *testing.B) {
	var buf bytes.Buffer
	for i := range 10000 {
		l := strings.Replace(fastLine, `"ev-7-1"`, fmt.Sprintf(`"ev-7-%d"`, i), 1)
		l = strings.Replace(l, `"23.219.4.75"`, fmt.Sprintf(`"23.219.%d.%d"`, i%250, i/250), 1)
		buf.WriteString(l + "\n")
	}
	data := buf.Bytes()
	b.SetBytes(int64(len(data) / 10000))
	b.ReportAllocs()
	cpu0 := cpuTime()
	b.ResetTimer()
	n := 0
	for n < b.N {
		rd := NewNDJSONReader(bytes.NewReader(data))
		for n < b.N {
			if _, err := rd.Next(); err != nil {
				break
			}
			n++
		}
	}
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "events/s")
	// The machine may be shared: events per second of this process's CPU
	// time is the figure that does not depend on the neighbours.
	b.ReportMetric(float64(b.N)/(cpuTime()-cpu0).Seconds(), "events/cpu-s")
}

func cpuTime() time.Duration {
	var ru syscall.Rusage
	_ = syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

func TestIsIPv4AgreesWithNetip(t *testing.T) {
	for _, s := range []string{"1.2.3.4", "0.0.0.0", "255.255.255.255", "256.1.1.1", "01.2.3.4", "1.2.3", "1.2.3.4.5", "1..3.4", "1.2.3.", ".1.2.3", "a.b.c.d", "1.2.3.04", "10.0.0.1", "1.2.3.1000", ""} {
		_, err := netip.ParseAddr(s)
		want := err == nil
		if got := isIPv4([]byte(s)); got != want {
			t.Errorf("isIPv4(%q) = %t, netip says %t", s, got, want)
		}
	}
}

// FuzzFastDecode: whatever the line, the reader (fast path first) and
// DecodeJSON agree on acceptance and on the event.
func FuzzFastDecode(f *testing.F) {
	f.Add(fastLine)
	f.Add(`{"id":"a","time":"2026-11-23T01:02:03+02:00","outcome":"valid","client_ip":"::1","asn":7}`)
	f.Add(`{"id":"a","time":"2026-11-23T01:02:03.123Z","outcome":"missing","status":0,"bytes_in":18446744073709551615}`)
	f.Fuzz(func(t *testing.T, line string) {
		if strings.ContainsAny(line, "\n\r") {
			return
		}
		want, werr := DecodeJSON([]byte(strings.TrimSpace(line)))
		got, gerr := NewNDJSONReader(strings.NewReader(line + "\n")).Next()
		if strings.TrimSpace(line) == "" {
			return
		}
		if (werr == nil) != (gerr == nil) {
			t.Fatalf("%q: reader err %v, DecodeJSON err %v", line, gerr, werr)
		}
		if werr == nil && !reflect.DeepEqual(got, want) {
			t.Fatalf("%q:\n reader %+v\n decode %+v", line, got, want)
		}
	})
}
