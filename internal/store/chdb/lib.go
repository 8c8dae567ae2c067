package chdb

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"sync"
	"unsafe"

	"github.com/ebitengine/purego"
)

// ErrLibraryMissing is returned when libchdb.so cannot be loaded.
var ErrLibraryMissing = errors.New("chdb: libchdb.so not found")

// The C API of libchdb (chdb.h of chDB 3.x / engine 26.x). Bound by hand
// with purego rather than through chdb-go, whose init() panics when the
// library is missing and which lacks chdb_query_with_params_n.
var (
	libOnce sync.Once
	libErr  error

	cConnect        func(argc int32, argv **byte) unsafe.Pointer // chdb_connection*
	cCloseConn      func(conn unsafe.Pointer)
	cQueryN         func(conn unsafe.Pointer, q *byte, qlen uintptr, f *byte, flen uintptr) unsafe.Pointer
	cQueryParamsN   func(conn unsafe.Pointer, q *byte, qlen uintptr, f *byte, flen uintptr, names **byte, nameLens *uintptr, values **byte, valueLens *uintptr, n uintptr) unsafe.Pointer
	cDestroyResult  func(res unsafe.Pointer)
	cResultBuffer   func(res unsafe.Pointer) unsafe.Pointer
	cResultLength   func(res unsafe.Pointer) uintptr
	cResultError    func(res unsafe.Pointer) unsafe.Pointer
	cResultRowsRead func(res unsafe.Pointer) uint64
)

// LibPath is where the library is looked up: $CHDB_LIB_PATH, else where
// scripts/chdb-lib.sh puts it ($KEYMETER_CACHE or ~/.cache/keymeter, then
// chdb/lib/package/libchdb.so), else libchdb.so in the loader's path.
func LibPath() string {
	if p := os.Getenv("CHDB_LIB_PATH"); p != "" {
		return p
	}
	cache := os.Getenv("KEYMETER_CACHE")
	if cache == "" {
		if home, err := os.UserHomeDir(); err == nil {
			cache = filepath.Join(home, ".cache", "keymeter")
		}
	}
	if cache != "" {
		p := filepath.Join(cache, "chdb", "lib", "package", "libchdb.so")
		if _, err := os.Stat(p); err == nil {
			return p
		}
	}
	return "libchdb.so"
}

// Load opens libchdb once. It is called lazily by Open, so a binary that
// links this package but never opens a chDB store does not need the library.
func Load() error {
	libOnce.Do(func() { libErr = load(LibPath()) })
	return libErr
}

const installHint = "run scripts/chdb-lib.sh (fetches npm package @chdb/lib-linux-x64-gnu into ~/.cache/keymeter/chdb) and set CHDB_LIB_PATH=<dir>/libchdb.so"

func load(path string) (err error) {
	if runtime.GOOS != "linux" && runtime.GOOS != "darwin" {
		return fmt.Errorf("%w: chDB is not supported on %s", ErrLibraryMissing, runtime.GOOS)
	}
	h, err := purego.Dlopen(path, purego.RTLD_NOW|purego.RTLD_GLOBAL)
	if err != nil {
		return fmt.Errorf("%w (%v): %s", ErrLibraryMissing, err, installHint)
	}
	defer func() {
		// RegisterLibFunc panics on a missing symbol: an old library.
		if r := recover(); r != nil {
			err = fmt.Errorf("chdb: %s is too old for keymeter (need chdb_query_with_params_n, chDB engine 25.x+): %v", path, r)
		}
	}()
	purego.RegisterLibFunc(&cConnect, h, "chdb_connect")
	purego.RegisterLibFunc(&cCloseConn, h, "chdb_close_conn")
	purego.RegisterLibFunc(&cQueryN, h, "chdb_query_n")
	purego.RegisterLibFunc(&cQueryParamsN, h, "chdb_query_with_params_n")
	purego.RegisterLibFunc(&cDestroyResult, h, "chdb_destroy_query_result")
	purego.RegisterLibFunc(&cResultBuffer, h, "chdb_result_buffer")
	purego.RegisterLibFunc(&cResultLength, h, "chdb_result_length")
	purego.RegisterLibFunc(&cResultError, h, "chdb_result_error")
	purego.RegisterLibFunc(&cResultRowsRead, h, "chdb_result_rows_read")
	return nil
}

// session is one chdb_connection. chDB allows one per process.
type session struct {
	handle unsafe.Pointer // chdb_connection* (pointer to the handle)
	// mu serialises calls: query parameters live in the session's context,
	// so two concurrent parameterised queries see each other's values
	// (measured: "Substitution `v` is not set"). chDB runs one query at a
	// time per session anyway.
	mu     sync.Mutex
	closed bool
}

func connect(args []string) (*session, error) {
	if err := Load(); err != nil {
		return nil, err
	}
	argv := make([]*byte, 0, len(args)+1)
	keep := make([][]byte, 0, len(args)+1)
	for _, a := range append([]string{"clickhouse"}, args...) {
		b := append([]byte(a), 0)
		keep = append(keep, b)
		argv = append(argv, &b[0])
	}
	h := cConnect(int32(len(argv)), &argv[0])
	runtime.KeepAlive(keep)
	if h == nil || *(*unsafe.Pointer)(h) == nil {
		return nil, errors.New("chdb: could not open a session (is another process using this data directory? chDB allows one process per data directory)")
	}
	return &session{handle: h}, nil
}

func (s *session) close() {
	s.mu.Lock()
	defer s.mu.Unlock()
	if !s.closed {
		s.closed = true
		cCloseConn(s.handle)
	}
}

// query runs one statement with named parameters ({name:Type} in the SQL,
// values as text in TSV-escaped form) and returns the output in format.
func (s *session) query(q, format string, names, values []string) ([]byte, error) {
	var out []byte
	err := s.queryFunc(q, format, names, values, func(b []byte) error {
		if len(b) > 0 {
			out = make([]byte, len(b))
			copy(out, b)
		}
		return nil
	})
	return out, err
}

// queryFunc is query handing fn the output in chDB's own buffer, valid only
// during the call (no copy of a large result into Go memory).
func (s *session) queryFunc(q, format string, names, values []string, fn func([]byte) error) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return errors.New("chdb: store is closed")
	}
	conn := *(*unsafe.Pointer)(s.handle)
	qb := append([]byte(q), 0)
	fb := append([]byte(format), 0)
	var res unsafe.Pointer
	if len(names) == 0 {
		res = cQueryN(conn, &qb[0], uintptr(len(q)), &fb[0], uintptr(len(format)))
	} else {
		np := make([]*byte, len(names))
		nl := make([]uintptr, len(names))
		vp := make([]*byte, len(values))
		vl := make([]uintptr, len(values))
		keep := make([][]byte, 0, 2*len(names))
		for i := range names {
			nb := append([]byte(names[i]), 0)
			vb := append([]byte(values[i]), 0)
			keep = append(keep, nb, vb)
			np[i], nl[i] = &nb[0], uintptr(len(names[i]))
			vp[i], vl[i] = &vb[0], uintptr(len(values[i]))
		}
		res = cQueryParamsN(conn, &qb[0], uintptr(len(q)), &fb[0], uintptr(len(format)), &np[0], &nl[0], &vp[0], &vl[0], uintptr(len(names)))
		runtime.KeepAlive(keep)
		runtime.KeepAlive(np)
		runtime.KeepAlive(vp)
		runtime.KeepAlive(nl)
		runtime.KeepAlive(vl)
	}
	runtime.KeepAlive(qb)
	runtime.KeepAlive(fb)
	if res == nil {
		return errors.New("chdb: query returned no result")
	}
	defer cDestroyResult(res)
	if e := cResultError(res); e != nil {
		if msg := goString(e); msg != "" {
			return errors.New(msg)
		}
	}
	n := cResultLength(res)
	if n == 0 {
		return fn(nil)
	}
	return fn(unsafe.Slice((*byte)(cResultBuffer(res)), n))
}

func goString(p unsafe.Pointer) string {
	if p == nil {
		return ""
	}
	n := 0
	for *(*byte)(unsafe.Add(p, n)) != 0 {
		n++
	}
	return string(unsafe.Slice((*byte)(p), n))
}
