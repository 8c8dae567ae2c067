package keys

import (
	"reflect"
	"testing"

	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"

	"github.com/keymeter/keymeter/internal/event/keymeterv1"
	"github.com/keymeter/keymeter/internal/event/prototest"
)

// A field added to KeyState in schemas/keymeter/v1/keymeter.proto must be
// placed in keyStateFields (wire.go): read by decodeRecord or not needed
// by the verifier. Each entry is checked against what decodeRecord does:
// clearing a field it reads changes the record, clearing one it does not
// read changes nothing.
func TestWireCoversEveryKeyStateField(t *testing.T) {
	full := &keymeterv1.KeyState{}
	prototest.Fill(full.ProtoReflect(), 1)
	full.Env = "test"
	full.Kind = KindMobile // an unknown kind reads as server, like an absent one
	full.AllowedCidrs = []string{"10.0.0.0/8", "192.0.2.0/24"}
	decode := func(st *keymeterv1.KeyState) (*Record, hkey, error) {
		b, err := proto.MarshalOptions{Deterministic: true}.Marshal(st)
		if err != nil {
			t.Fatal(err)
		}
		return decodeRecord(b, func(b []byte) string { return string(b) })
	}
	base, baseKey, err := decode(full)
	if err != nil {
		t.Fatal(err)
	}
	fields := full.ProtoReflect().Descriptor().Fields()
	inProto := map[protowire.Number]bool{}
	for i := range fields.Len() {
		fd := fields.Get(i)
		inProto[fd.Number()] = true
		read, listed := keyStateFields[fd.Number()]
		if !listed {
			t.Errorf("KeyState field %d (%s) is not in keyStateFields (wire.go): say whether decodeRecord reads it, and read it if the verifier needs it", fd.Number(), fd.Name())
			continue
		}
		st := proto.Clone(full).(*keymeterv1.KeyState)
		st.ProtoReflect().Clear(fd)
		r, key, err := decode(st)
		changed := err != nil || key != baseKey || !reflect.DeepEqual(r, base)
		if changed != read {
			t.Errorf("KeyState field %d (%s): keyStateFields says read=%v, but clearing it changes the record: %v", fd.Number(), fd.Name(), read, changed)
		}
	}
	for n := range keyStateFields {
		if !inProto[n] {
			t.Errorf("keyStateFields lists field %d, which KeyState does not have", n)
		}
	}
	if n := countSet(full.ProtoReflect()); n != fields.Len() {
		t.Fatalf("the filler set %d of %d fields", n, fields.Len())
	}
}

func countSet(m protoreflect.Message) int {
	n := 0
	m.Range(func(protoreflect.FieldDescriptor, protoreflect.Value) bool { n++; return true })
	return n
}
