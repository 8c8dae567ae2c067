package event

import (
	"errors"
	"fmt"
	"os"
	"strings"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"

	"github.com/keymeter/keymeter/internal/event/keymeterv1"
	"github.com/santhosh-tekuri/jsonschema/v6"
)

func sampleEvent(i int) Event {
	return Event{
		ID: fmt.Sprintf("v1-%d", i), Time: time.Unix(1764072000, int64(i)*1000).UTC(), Project: "proj_demo",
		KeyID: "key_abc", Outcome: OutcomeValid, ClientIP: "203.0.113.7", Country: "DE", ASN: 3320,
		Method: "GET", Host: "api.example.com", Route: "/v1/items", Status: 200, LatencyUS: 1234,
		BytesIn: 120, BytesOut: 4096, UserAgent: "curl/8.5", VerifierID: "v1", CostUnits: 1,
	}
}

func sampleBatch(n int) *Batch {
	b := &Batch{ID: "batch-1", Producer: "v1", Created: time.Unix(1764072000, 5).UTC()}
	for i := range n {
		b.Events = append(b.Events, sampleEvent(i))
	}
	return b
}

// The hand-written codec must agree byte for byte with the generated one.
func TestCodecMatchesGeneratedCode(t *testing.T) {
	b := sampleBatch(3)
	b.Events[1].KeyID = ""
	b.Events[1].Outcome = OutcomeMissing
	b.Events[2].Status = 0
	data := AppendBatch(nil, b)

	var pb keymeterv1.EventBatch
	if err := proto.Unmarshal(data, &pb); err != nil {
		t.Fatalf("generated code cannot read our encoding: %v", err)
	}
	if pb.Id != b.ID || len(pb.Events) != 3 || pb.Events[0].Country != "DE" || pb.Events[1].Outcome != keymeterv1.Outcome_OUTCOME_MISSING {
		t.Fatalf("generated decode differs: %v", &pb)
	}
	again, err := proto.MarshalOptions{Deterministic: true}.Marshal(&pb)
	if err != nil {
		t.Fatal(err)
	}
	if string(again) != string(data) {
		t.Fatalf("generated encoding differs from ours:\n got %x\nwant %x", again, data)
	}
	var back Batch
	if err := DecodeBatch(again, &back); err != nil {
		t.Fatal(err)
	}
	for i := range b.Events {
		if back.Events[i] != b.Events[i] {
			t.Errorf("event %d: got %+v want %+v", i, back.Events[i], b.Events[i])
		}
	}
	if back.ID != b.ID || back.Producer != b.Producer || !back.Created.Equal(b.Created) {
		t.Errorf("batch header: got %+v", back)
	}
}

func TestDecodeBatchRefusesBadInput(t *testing.T) {
	good := AppendBatch(nil, sampleBatch(2))
	badOutcome := AppendBatch(nil, &Batch{ID: "b", Events: []Event{{ID: "e", Outcome: 99}}})
	cases := []struct {
		name, data, field string
	}{
		{"truncated", string(good[:len(good)-3]), "events[1]"},
		{"bad tag", "\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff", "batch"},
		{"outcome out of range", string(badOutcome), "events[0].outcome"},
		{"string field as varint", "\x22\x02\x08\x01", "events[0].id"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			var b Batch
			err := DecodeBatch([]byte(c.data), &b)
			var de *DecodeError
			if !errors.As(err, &de) || !errors.Is(err, ErrMalformed) {
				t.Fatalf("want DecodeError, got %v", err)
			}
			if de.Field != c.field {
				t.Errorf("field: got %q want %q (%v)", de.Field, c.field, err)
			}
		})
	}
}

func TestJSONRoundTripAndErrors(t *testing.T) {
	e := sampleEvent(7)
	data, err := e.MarshalJSON()
	if err != nil {
		t.Fatal(err)
	}
	back, err := DecodeJSON(data)
	if err != nil {
		t.Fatal(err)
	}
	if back != e {
		t.Fatalf("round trip: got %+v want %+v", back, e)
	}
	cases := []struct{ in, field string }{
		{`{"id":"a","time":"2026-11-25T12:00:00Z","outcome":"valid","colour":"red"}`, "colour"},
		{`{"id":"a","time":"2026-11-25T12:00:00Z","outcome":"great"}`, "outcome"},
		{`{"id":"a","time":"yesterday","outcome":"valid"}`, "time"},
		{`{"id":"a","outcome":"valid"}`, "time"},
		{`{"time":"2026-11-25T12:00:00Z","outcome":"valid"}`, "id"},
		{`{"id":"a","time":"2026-11-25T12:00:00Z","outcome":"valid","status":"200"}`, "status"},
		{`{"id":"a","time":"2026-11-25T12:00:00Z","outcome":"valid","status":-1}`, "status"},
		{`{"id":"a","time":"2026-11-25T12:00:00Z","outcome":"valid","client_ip":"999.1.1.1"}`, "client_ip"},
		{`{"id":"a","time":"2026-11-25T12:00:00Z","outcome":"valid","country":"germany"}`, "country"},
		{`{"id":"a",`, "(document)"},
	}
	for _, c := range cases {
		_, err := DecodeJSON([]byte(c.in))
		var fe *FieldError
		if !errors.As(err, &fe) {
			t.Errorf("%s: want FieldError, got %v", c.in, err)
			continue
		}
		if fe.Field != c.field {
			t.Errorf("%s: field %q, want %q (%v)", c.in, fe.Field, c.field, err)
		}
	}
}

// The JSON Schema and the codec must accept and refuse the same documents.
func TestJSONSchemaAgreesWithCodec(t *testing.T) {
	c := jsonschema.NewCompiler()
	c.AssertFormat()
	f, err := os.Open("../../schemas/usage-event.schema.json")
	if err != nil {
		t.Fatal(err)
	}
	doc, err := jsonschema.UnmarshalJSON(f)
	f.Close()
	if err != nil {
		t.Fatal(err)
	}
	if err := c.AddResource("usage-event.json", doc); err != nil {
		t.Fatal(err)
	}
	sch, err := c.Compile("usage-event.json")
	if err != nil {
		t.Fatal(err)
	}
	good, _ := sampleEvent(1).MarshalJSON()
	docs := []string{
		string(good),
		`{"id":"a","time":"2026-11-25T12:00:00Z","outcome":"missing","client_ip":"2001:db8::1"}`,
		`{"id":"a","time":"2026-11-25T12:00:00Z","outcome":"valid","colour":"red"}`,
		`{"id":"a","time":"2026-11-25T12:00:00Z","outcome":"great"}`,
		`{"id":"a","time":"yesterday","outcome":"valid"}`,
		`{"id":"a","outcome":"valid"}`,
		`{"id":"a","time":"2026-11-25T12:00:00Z","outcome":"valid","status":-1}`,
		`{"id":"a","time":"2026-11-25T12:00:00Z","outcome":"valid","country":"germany"}`,
		`{"id":"a","time":"2026-11-25T12:00:00Z","outcome":"valid","client_ip":"nope"}`,
	}
	for _, d := range docs {
		inst, err := jsonschema.UnmarshalJSON(strings.NewReader(d))
		if err != nil {
			t.Fatal(err)
		}
		schemaOK := sch.Validate(inst) == nil
		_, codecErr := DecodeJSON([]byte(d))
		if schemaOK != (codecErr == nil) {
			t.Errorf("%s: schema ok=%v, codec err=%v", d, schemaOK, codecErr)
		}
	}
}

func TestNDJSONReaderReportsLine(t *testing.T) {
	good, _ := sampleEvent(1).MarshalJSON()
	in := string(good) + "\n\n" + string(good) + "\n" + `{"id":"x"}` + "\n"
	r := NewNDJSONReader(strings.NewReader(in))
	for range 2 {
		if _, err := r.Next(); err != nil {
			t.Fatal(err)
		}
	}
	_, err := r.Next()
	var fe *FieldError
	if !errors.As(err, &fe) || fe.Line != 4 {
		t.Fatalf("want error on line 4, got %v", err)
	}
}

func TestPartitionKey(t *testing.T) {
	cases := map[string]string{"203.0.113.7": "203.0.113.0/24", "2001:db8:1:2::1": "2001:db8:1::/48", "junk": "junk"}
	for ip, want := range cases {
		e := Event{ClientIP: ip}
		if got := e.PartitionKey(); got != want {
			t.Errorf("%s: got %s want %s", ip, got, want)
		}
	}
	e := Event{KeyID: "key_1", ClientIP: "1.2.3.4"}
	if e.PartitionKey() != "key_1" {
		t.Error("key id must win")
	}
}

func FuzzDecodeBatch(f *testing.F) {
	f.Add(AppendBatch(nil, sampleBatch(2)))
	f.Add([]byte{})
	f.Add([]byte("\x22\x02\x08\x01"))
	f.Fuzz(func(t *testing.T, data []byte) {
		var b Batch
		if err := DecodeBatch(data, &b); err != nil {
			if !errors.Is(err, ErrMalformed) {
				t.Fatalf("error does not wrap ErrMalformed: %v", err)
			}
			return
		}
		// What decodes must re-encode and decode to the same events.
		var again Batch
		if err := DecodeBatch(AppendBatch(nil, &b), &again); err != nil {
			t.Fatalf("re-encoded batch does not decode: %v", err)
		}
		if len(again.Events) != len(b.Events) {
			t.Fatalf("event count changed: %d -> %d", len(b.Events), len(again.Events))
		}
	})
}

func FuzzDecodeJSON(f *testing.F) {
	good, _ := sampleEvent(1).MarshalJSON()
	f.Add(good)
	f.Add([]byte(`{"id":"a","time":"2026-11-25T12:00:00Z","outcome":"valid"}`))
	f.Fuzz(func(t *testing.T, data []byte) {
		e, err := DecodeJSON(data)
		if err != nil {
			return
		}
		out, err := e.MarshalJSON()
		if err != nil {
			t.Fatal(err)
		}
		back, err := DecodeJSON(out)
		if err != nil || back != e {
			t.Fatalf("round trip of accepted event failed: %v", err)
		}
	})
}

func BenchmarkEncodeBatch(b *testing.B) {
	batch := sampleBatch(1000)
	buf := make([]byte, 0, 256*1024)
	b.ReportAllocs()
	for b.Loop() {
		buf = AppendBatch(buf[:0], batch)
	}
	b.ReportMetric(float64(b.N)*1000/b.Elapsed().Seconds(), "events/s")
	b.ReportMetric(float64(len(buf))/1000, "bytes/event")
}

func BenchmarkDecodeBatch(b *testing.B) {
	data := AppendBatch(nil, sampleBatch(1000))
	var batch Batch
	b.ReportAllocs()
	b.SetBytes(int64(len(data)))
	for b.Loop() {
		if err := DecodeBatch(data, &batch); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(b.N)*1000/b.Elapsed().Seconds(), "events/s")
}

// For comparison: the generated protobuf code.
func BenchmarkDecodeBatchGenerated(b *testing.B) {
	data := AppendBatch(nil, sampleBatch(1000))
	b.ReportAllocs()
	for b.Loop() {
		var pb keymeterv1.EventBatch
		if err := proto.Unmarshal(data, &pb); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(b.N)*1000/b.Elapsed().Seconds(), "events/s")
}
