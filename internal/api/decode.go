package api

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/big"
	"mime"
	"net/http"
	"reflect"
	"slices"
	"strings"
	"time"
	"unicode/utf8"
)

// maxBody is the largest JSON request body outside POST /v1/events.
const maxBody = 1 << 20

// readJSONBody reads a request body of at most limit bytes that must be
// sent as application/json (415 otherwise, 413 when too large). An empty
// body is returned as nil.
func readJSONBody(w http.ResponseWriter, r *http.Request, limit int64) ([]byte, error) {
	if r.Body == nil {
		return nil, nil
	}
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, limit))
	if err != nil {
		var mb *http.MaxBytesError
		if errors.As(err, &mb) {
			return nil, &Error{Status: http.StatusRequestEntityTooLarge, Code: "too_large", Message: fmt.Sprintf("request body over %d bytes", limit)}
		}
		return nil, badRequest("", "reading the body: %v", err)
	}
	if len(bytes.TrimSpace(body)) == 0 {
		return nil, nil
	}
	mt, _, err := mime.ParseMediaType(r.Header.Get("Content-Type"))
	if err != nil || mt != "application/json" {
		return nil, &Error{Status: http.StatusUnsupportedMediaType, Code: "unsupported_media_type",
			Message: fmt.Sprintf("Content-Type %q: send the body as application/json", r.Header.Get("Content-Type"))}
	}
	return body, nil
}

// decode reads a JSON object body strictly into v (a pointer to a struct):
// field names match their JSON names exactly (no case folding), unknown
// fields, null values and trailing data are errors, integers may be
// written as integral numbers (662.0), and every error names the field as
// the API names it.
func decode(w http.ResponseWriter, r *http.Request, v any) error {
	body, err := readJSONBody(w, r, maxBody)
	if err != nil {
		return err
	}
	if body == nil {
		return badRequest("", "request body required: a JSON object")
	}
	return decodeObject(body, v, "")
}

// decodeOptional is decode for an optional body: an empty one leaves v as is.
func decodeOptional(w http.ResponseWriter, r *http.Request, v any) error {
	body, err := readJSONBody(w, r, maxBody)
	if err != nil || body == nil {
		return err
	}
	return decodeObject(body, v, "")
}

// decodeObject decodes one JSON object into the struct v points to; prefix
// goes before field names in errors ("[3]." for the fourth element).
func decodeObject(raw []byte, v any, prefix string) error {
	dec := json.NewDecoder(bytes.NewReader(raw))
	dec.UseNumber()
	var m map[string]json.RawMessage
	if err := dec.Decode(&m); err != nil || m == nil {
		var se *json.SyntaxError
		if errors.As(err, &se) {
			return badRequest(strings.TrimSuffix(prefix, "."), "invalid JSON at byte %d: %v", se.Offset, err)
		}
		return badRequest(strings.TrimSuffix(prefix, "."), "want a JSON object")
	}
	if _, err := dec.Token(); err != io.EOF {
		return badRequest(strings.TrimSuffix(prefix, "."), "trailing data after the JSON object")
	}
	fields := jsonFields(reflect.TypeOf(v).Elem())
	names := make([]string, 0, len(m))
	for k := range m {
		names = append(names, k)
	}
	slices.Sort(names)
	rv := reflect.ValueOf(v).Elem()
	for _, k := range names {
		idx, ok := fields[k]
		path := prefix + k
		if !ok {
			return badRequest(path, "unknown field %q (accepted: %s)", path, strings.Join(fieldNames(fields), ", "))
		}
		val := m[k]
		if containsNull(val) {
			return badRequest(path, "%s: null is not accepted (omit the field instead)", path)
		}
		f := rv.FieldByIndex(idx)
		if isIntegerType(f.Type()) {
			n, err := integralNumber(val)
			if err != nil {
				return badRequest(path, "%s: want an integer, got %s", path, abbrevJSON(val))
			}
			val = n
		}
		if err := json.Unmarshal(val, f.Addr().Interface()); err != nil {
			return badRequest(path, "%s: want %s, got %s", path, describeType(f.Type()), abbrevJSON(val))
		}
	}
	return nil
}

// jsonFields maps each JSON field name of t (a struct, embedded structs
// flattened) to its field index.
func jsonFields(t reflect.Type) map[string][]int {
	out := map[string][]int{}
	for i := range t.NumField() {
		f := t.Field(i)
		if f.Anonymous && f.Type.Kind() == reflect.Struct {
			for name, idx := range jsonFields(f.Type) {
				out[name] = append([]int{i}, idx...)
			}
			continue
		}
		name, _, _ := strings.Cut(f.Tag.Get("json"), ",")
		if name == "" || name == "-" {
			continue
		}
		out[name] = []int{i}
	}
	return out
}

func fieldNames(m map[string][]int) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	slices.Sort(out)
	return out
}

// containsNull reports whether a JSON value is or holds a null.
func containsNull(raw json.RawMessage) bool {
	dec := json.NewDecoder(bytes.NewReader(raw))
	for {
		tok, err := dec.Token()
		if err != nil {
			return false
		}
		if tok == nil {
			return true
		}
	}
}

func isIntegerType(t reflect.Type) bool {
	for t.Kind() == reflect.Pointer {
		t = t.Elem()
	}
	switch t.Kind() {
	case reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64,
		reflect.Uint, reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64:
		return true
	}
	return false
}

// integralNumber rewrites a JSON number with an integral value (662.0,
// 6.62e2) as an integer literal; JSON Schema counts those as integers.
func integralNumber(raw json.RawMessage) (json.RawMessage, error) {
	s := strings.TrimSpace(string(raw))
	if s == "" || !(s[0] == '-' || s[0] >= '0' && s[0] <= '9') {
		return raw, nil // not a number: the type error comes from Unmarshal
	}
	if !strings.ContainsAny(s, ".eE") {
		return raw, nil
	}
	f, _, err := big.ParseFloat(s, 10, 256, big.ToNearestEven)
	if err != nil || !f.IsInt() || f.MantExp(nil) > 128 {
		return nil, errors.New("not an integer")
	}
	i, _ := f.Int(nil)
	return json.RawMessage(i.String()), nil
}

func describeType(t reflect.Type) string {
	for t.Kind() == reflect.Pointer {
		t = t.Elem()
	}
	if t == reflect.TypeOf(time.Time{}) {
		return "an RFC 3339 time such as 2026-11-25T00:00:00Z"
	}
	switch t.Kind() {
	case reflect.String:
		return "a string"
	case reflect.Bool:
		return "true or false"
	case reflect.Float32, reflect.Float64:
		return "a number"
	case reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64, reflect.Uint:
		bits := t.Bits()
		return fmt.Sprintf("an integer 0-%s", new(big.Int).Sub(new(big.Int).Lsh(big.NewInt(1), uint(bits)), big.NewInt(1)))
	case reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64:
		return "an integer"
	case reflect.Slice:
		return "an array of " + strings.TrimPrefix(describeType(t.Elem()), "a ") + "s"
	case reflect.Map:
		return "an object of " + strings.TrimPrefix(describeType(t.Elem()), "a ") + "s"
	}
	return t.Kind().String()
}

func abbrevJSON(raw json.RawMessage) string {
	s := strings.TrimSpace(string(raw))
	if utf8.RuneCountInString(s) > 40 {
		r := []rune(s)
		s = string(r[:40]) + "…"
	}
	return s
}
