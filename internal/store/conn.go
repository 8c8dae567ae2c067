package store

import (
	"context"
	"strconv"
	"strings"
	"time"

	"github.com/keymeter/keymeter/internal/event"
)

// Conn is what a backend gives the shared SQL implementation (DB). SQL names
// its parameters as {name:Type}; values travel apart from the statement
// (chdb_query_with_params_n, clickhouse-go WithParameters), never spliced in.
type Conn interface {
	Exec(ctx context.Context, query string, params Params) error
	Query(ctx context.Context, query string, params Params) (Rows, error)
	// InsertEvents inserts raw events into <database>.requests as one
	// deduplicated insert.
	InsertEvents(ctx context.Context, database, token string, events []event.Event) error
	// InsertRollup inserts pre-aggregated rows into <database>.rollup_input.
	InsertRollup(ctx context.Context, database, token string, rows []RollupRow) error
	// Backend names the backend ("chdb", "clickhouse").
	Backend() string
	Close() error
}

// Preparer is a Conn that can encode an insert ahead of running it, so
// that encoding the next block overlaps the insert of the last (chDB runs
// one statement at a time).
type Preparer interface {
	PrepareEvents(database, token string, events []event.Event) (Prepared, error)
	PrepareRollup(database, token string, rows []RollupRow) (Prepared, error)
}

// Prepared is an encoded insert: Exec runs it (again, on a retry), Close
// frees it.
type Prepared interface {
	Exec(ctx context.Context) error
	Close() error
}

// Rows is a query result, scanned row by row. Scan accepts *string,
// *uint64, *int64, *float64 and *[]string; queries cast their columns to
// String, UInt64, Int64, Float64 or Array(String) so both backends agree.
type Rows interface {
	Next() bool
	Scan(dest ...any) error
	Err() error
	Close() error
}

// Param is one named query parameter. Value is its text form.
type Param struct {
	Name  string
	Value string
	Array []string // for Array(String) parameters; Value is then unused
	IsArr bool
}

// Text is the parameter's value as the server parses it: ClickHouse reads
// parameter values in TSV-escaped form (deserializeTextEscaped), so a String
// is escaped; an array is its quoted literal.
func (p Param) Text() string {
	if p.IsArr {
		return ArrayLiteral(p.Array)
	}
	return escapeTSV(p.Value)
}

func escapeTSV(s string) string {
	if !strings.ContainsAny(s, "\\\t\n\r\x00") {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		switch c := s[i]; c {
		case '\\':
			b.WriteString(`\\`)
		case '\t':
			b.WriteString(`\t`)
		case '\n':
			b.WriteString(`\n`)
		case '\r':
			b.WriteString(`\r`)
		case 0:
			b.WriteString(`\0`)
		default:
			b.WriteByte(c)
		}
	}
	return b.String()
}

// Params are a statement's parameters.
type Params []Param

func (p Params) Str(name, v string) Params { return append(p, Param{Name: name, Value: v}) }
func (p Params) U64(name string, v uint64) Params {
	return append(p, Param{Name: name, Value: strconv.FormatUint(v, 10)})
}
func (p Params) I64(name string, v int64) Params {
	return append(p, Param{Name: name, Value: strconv.FormatInt(v, 10)})
}

// Ms passes a time as Int64 Unix milliseconds (use fromUnixTimestamp64Milli in SQL).
func (p Params) Ms(name string, t time.Time) Params { return p.I64(name, timeMs(t)) }
func (p Params) Arr(name string, v []string) Params {
	return append(p, Param{Name: name, Array: v, IsArr: true})
}

// ArrayLiteral is the text form of an Array(String) parameter value.
func ArrayLiteral(v []string) string {
	var b strings.Builder
	b.WriteByte('[')
	for i, s := range v {
		if i > 0 {
			b.WriteByte(',')
		}
		b.WriteByte('\'')
		for j := 0; j < len(s); j++ {
			switch c := s[j]; c {
			case '\\', '\'':
				b.WriteByte('\\')
				b.WriteByte(c)
			case '\n':
				b.WriteString(`\n`)
			case '\t':
				b.WriteString(`\t`)
			case 0:
				b.WriteString(`\0`)
			default:
				b.WriteByte(c)
			}
		}
		b.WriteByte('\'')
	}
	b.WriteByte(']')
	return b.String()
}

func timeMs(t time.Time) int64 {
	if t.IsZero() {
		return 0
	}
	return t.UnixMilli()
}

func msTime(ms int64) time.Time {
	if ms == 0 {
		return time.Time{}
	}
	return time.UnixMilli(ms).UTC()
}

// RollupRow is one pre-aggregated per-minute bucket of a batch.
type RollupRow struct {
	Minute    uint32 // Unix seconds, a multiple of 60
	Project   string
	KeyID     string
	Outcome   string
	Route     string
	Country   string
	Requests  uint64
	BytesIn   uint64
	BytesOut  uint64
	CostUnits uint64
	IPHashes  []uint64 // xxHash64 of each distinct client IP in the bucket
}

// EachRow runs query on c and calls scan for every row it returns, closing
// the rows at the end; it returns the first error of the query, of scan or
// of reading the rows.
func EachRow(ctx context.Context, c Conn, query string, params Params, scan func(Rows) error) error {
	rows, err := c.Query(ctx, query, params)
	if err != nil {
		return err
	}
	defer rows.Close()
	for rows.Next() {
		if err := scan(rows); err != nil {
			return err
		}
	}
	return rows.Err()
}
