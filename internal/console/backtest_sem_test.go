package console

import (
	"bytes"
	"mime/multipart"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/keymeter/keymeter/internal/store"
)

// TestBacktestChecksRunInsideSemaphore: while a backtest runs, an uploaded
// rule file is not even parsed, linted or tested: the request is refused
// with 429 before (regression: the schema check, which an alias bomb made
// cost 500 MB, and the inline tests ran outside the one-at-a-time limit).
func TestBacktestChecksRunInsideSemaphore(t *testing.T) {
	c, err := New(Config{API: http.NotFoundHandler(), Role: func(string) string { return "admin" },
		Sources: Sources{Store: &store.DB{}}}) // never read: the request ends before
	if err != nil {
		t.Fatal(err)
	}
	c.backtests <- struct{}{} // a backtest is running
	var buf bytes.Buffer
	mw := multipart.NewWriter(&buf)
	now := time.Now().UTC()
	for k, v := range map[string]string{"source": "file", "from": now.Add(-time.Hour).Format("2006-01-02T15:04"),
		"to": now.Format("2006-01-02T15:04"), "rules": "a: &a [1]\nb: *a\nid: x\n"} {
		_ = mw.WriteField(k, v)
	}
	mw.Close()
	r := httptest.NewRequest("POST", "/console/backtest", &buf)
	r.Header.Set("Content-Type", mw.FormDataContentType())
	w := httptest.NewRecorder()
	s := &session{id: "s", role: "admin", csrf: "c", created: now, lastSeen: now}
	if err := c.runBacktest(w, r, s); err != nil {
		t.Fatal(err)
	}
	b := w.Body.String()
	if w.Code != http.StatusTooManyRequests || strings.Contains(b, "anchors and aliases") {
		t.Fatalf("a rule file posted while a backtest runs: %d, want 429 without checking the file\n%s", w.Code, b)
	}
}
