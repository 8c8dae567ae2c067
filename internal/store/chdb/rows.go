package chdb

import (
	"bytes"
	"errors"
	"fmt"
	"strconv"
)

// tsvRows scans TabSeparated output.
type tsvRows struct {
	data   []byte
	fields [][]byte
	err    error
}

func (r *tsvRows) Next() bool {
	if r.err != nil || len(r.data) == 0 {
		return false
	}
	line := r.data
	if i := bytes.IndexByte(r.data, '\n'); i >= 0 {
		line, r.data = r.data[:i], r.data[i+1:]
	} else {
		r.data = nil
	}
	r.fields = bytes.Split(line, []byte{'\t'})
	return true
}

func (r *tsvRows) Scan(dest ...any) error {
	if len(dest) != len(r.fields) {
		return fmt.Errorf("chdb: scan: %d columns into %d values", len(r.fields), len(dest))
	}
	for i, d := range dest {
		f := r.fields[i]
		var err error
		switch p := d.(type) {
		case *string:
			*p = unescapeTSV(f)
		case *uint64:
			*p, err = strconv.ParseUint(string(f), 10, 64)
		case *int64:
			*p, err = strconv.ParseInt(string(f), 10, 64)
		case *float64:
			*p, err = strconv.ParseFloat(string(f), 64)
		case *[]string:
			*p, err = parseArray(string(f)) // arrays are written quoted, not TSV-escaped
		default:
			err = fmt.Errorf("unsupported destination %T", d)
		}
		if err != nil {
			return fmt.Errorf("chdb: scan column %d: %w", i+1, err)
		}
	}
	return nil
}

func (r *tsvRows) Err() error   { return r.err }
func (r *tsvRows) Close() error { r.data = nil; return nil }

func unescapeTSV(f []byte) string {
	if bytes.IndexByte(f, '\\') < 0 {
		return string(f)
	}
	out := make([]byte, 0, len(f))
	for i := 0; i < len(f); i++ {
		c := f[i]
		if c != '\\' || i+1 == len(f) {
			out = append(out, c)
			continue
		}
		i++
		switch f[i] {
		case 'n':
			out = append(out, '\n')
		case 't':
			out = append(out, '\t')
		case 'r':
			out = append(out, '\r')
		case '0':
			out = append(out, 0)
		case 'b':
			out = append(out, '\b')
		case 'f':
			out = append(out, '\f')
		default:
			out = append(out, f[i])
		}
	}
	return string(out)
}

// parseArray parses ClickHouse's text form of Array(String): ['a','b\'c'].
func parseArray(s string) ([]string, error) {
	if len(s) < 2 || s[0] != '[' || s[len(s)-1] != ']' {
		return nil, fmt.Errorf("not an array: %q", s)
	}
	s = s[1 : len(s)-1]
	out := []string{}
	for len(s) > 0 {
		if s[0] != '\'' {
			return nil, errors.New("array element is not a quoted string")
		}
		var cur []byte
		i := 1
		for ; i < len(s) && s[i] != '\''; i++ {
			if s[i] == '\\' && i+1 < len(s) {
				i++
				switch s[i] {
				case 'n':
					cur = append(cur, '\n')
				case 't':
					cur = append(cur, '\t')
				case 'r':
					cur = append(cur, '\r')
				case '0':
					cur = append(cur, 0)
				default:
					cur = append(cur, s[i])
				}
				continue
			}
			cur = append(cur, s[i])
		}
		if i >= len(s) {
			return nil, errors.New("unterminated array element")
		}
		out = append(out, string(cur))
		s = s[i+1:]
		if len(s) > 0 {
			if s[0] != ',' {
				return nil, errors.New("expected a comma in array")
			}
			s = s[1:]
		}
	}
	return out, nil
}
