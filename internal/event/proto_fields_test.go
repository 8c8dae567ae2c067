package event

import (
	"slices"
	"testing"

	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"

	"github.com/keymeter/keymeter/internal/event/keymeterv1"
	"github.com/keymeter/keymeter/internal/event/prototest"
)

// A field added to schemas/keymeter/v1/keymeter.proto must be added to
// the hand-written codec too: the list in codec.go names every field of
// the messages it handles, and a batch with every field set comes back
// from the codec unchanged.
func TestCodecCoversEveryProtoField(t *testing.T) {
	for _, m := range []proto.Message{&keymeterv1.EventBatch{}, &keymeterv1.UsageEvent{}} {
		d := m.ProtoReflect().Descriptor()
		listed, ok := codecFields[string(d.FullName())]
		if !ok {
			t.Fatalf("%s: not in codecFields", d.FullName())
		}
		var inProto []protowire.Number
		fields := d.Fields()
		for i := range fields.Len() {
			fd := fields.Get(i)
			inProto = append(inProto, fd.Number())
			if !slices.Contains(listed, fd.Number()) {
				t.Errorf("%s field %d (%s) is not handled by the codec (codecFields in codec.go)", d.FullName(), fd.Number(), fd.Name())
			}
		}
		for _, n := range listed {
			if !slices.Contains(inProto, n) {
				t.Errorf("%s: codecFields lists field %d, which the .proto does not have", d.FullName(), n)
			}
		}
	}

	want := &keymeterv1.EventBatch{}
	prototest.Fill(want.ProtoReflect(), 1)
	data, err := proto.MarshalOptions{Deterministic: true}.Marshal(want)
	if err != nil {
		t.Fatal(err)
	}
	var b Batch
	if err := DecodeBatch(data, &b); err != nil {
		t.Fatal(err)
	}
	got := &keymeterv1.EventBatch{}
	if err := proto.Unmarshal(AppendBatch(nil, &b), got); err != nil {
		t.Fatal(err)
	}
	if !proto.Equal(got, want) {
		t.Fatalf("a batch with every field set does not survive the codec:\nsent %v\ngot  %v", want, got)
	}
	// The filler did set every field (a message whose fields it skipped
	// would make the round trip above prove nothing).
	for _, m := range []protoreflect.Message{want.ProtoReflect(), want.Events[0].ProtoReflect()} {
		if n, all := countSet(m), m.Descriptor().Fields().Len(); n != all {
			t.Fatalf("%s: the filler set %d of %d fields", m.Descriptor().FullName(), n, all)
		}
	}
}

func countSet(m protoreflect.Message) int {
	n := 0
	m.Range(func(protoreflect.FieldDescriptor, protoreflect.Value) bool { n++; return true })
	return n
}
