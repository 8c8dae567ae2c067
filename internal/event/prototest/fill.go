// Package prototest helps tests hold hand-written protobuf codecs to the
// schema: Fill sets every field of a generated message, so a field added
// to the .proto shows up in a round trip through a codec that ignores it.
package prototest

import (
	"fmt"

	"google.golang.org/protobuf/reflect/protoreflect"
)

// Fill sets every field of m, recursively, to a value that is not the
// zero value and stays in the ranges a codec checks: strings name their
// field, numbers are small (100 + field number + seed), enums take their
// last declared value, lists hold two elements and maps one entry.
func Fill(m protoreflect.Message, seed int) {
	fields := m.Descriptor().Fields()
	for i := range fields.Len() {
		fd := fields.Get(i)
		switch {
		case fd.IsMap():
			mp := m.Mutable(fd).Map()
			k := scalar(fd.MapKey(), seed).MapKey()
			if fd.MapValue().Kind() == protoreflect.MessageKind {
				Fill(mp.Mutable(k).Message(), seed)
			} else {
				mp.Set(k, scalar(fd.MapValue(), seed))
			}
		case fd.IsList():
			l := m.Mutable(fd).List()
			for j := range 2 {
				if fd.Kind() == protoreflect.MessageKind || fd.Kind() == protoreflect.GroupKind {
					Fill(l.AppendMutable().Message(), seed+j)
				} else {
					l.Append(scalar(fd, seed+j))
				}
			}
		case fd.Kind() == protoreflect.MessageKind || fd.Kind() == protoreflect.GroupKind:
			Fill(m.Mutable(fd).Message(), seed)
		default:
			m.Set(fd, scalar(fd, seed))
		}
	}
}

func scalar(fd protoreflect.FieldDescriptor, seed int) protoreflect.Value {
	n := 100 + int(fd.Number()) + seed
	switch fd.Kind() {
	case protoreflect.BoolKind:
		return protoreflect.ValueOfBool(true)
	case protoreflect.EnumKind:
		vs := fd.Enum().Values()
		return protoreflect.ValueOfEnum(vs.Get(vs.Len() - 1).Number())
	case protoreflect.Int32Kind, protoreflect.Sint32Kind, protoreflect.Sfixed32Kind:
		return protoreflect.ValueOfInt32(int32(n))
	case protoreflect.Int64Kind, protoreflect.Sint64Kind, protoreflect.Sfixed64Kind:
		return protoreflect.ValueOfInt64(int64(n))
	case protoreflect.Uint32Kind, protoreflect.Fixed32Kind:
		return protoreflect.ValueOfUint32(uint32(n))
	case protoreflect.Uint64Kind, protoreflect.Fixed64Kind:
		return protoreflect.ValueOfUint64(uint64(n))
	case protoreflect.FloatKind:
		return protoreflect.ValueOfFloat32(float32(n) + 0.5)
	case protoreflect.DoubleKind:
		return protoreflect.ValueOfFloat64(float64(n) + 0.5)
	case protoreflect.StringKind:
		return protoreflect.ValueOfString(fmt.Sprintf("%s-%d", fd.Name(), seed))
	case protoreflect.BytesKind:
		b := make([]byte, 32)
		for i := range b {
			b[i] = byte(n + i)
		}
		return protoreflect.ValueOfBytes(b)
	}
	panic(fmt.Sprintf("prototest: field %s: kind %s", fd.FullName(), fd.Kind()))
}
