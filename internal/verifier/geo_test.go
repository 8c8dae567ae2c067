package verifier

import (
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/maxmind/mmdbwriter"
	"github.com/maxmind/mmdbwriter/mmdbtype"

	"github.com/keymeter/keymeter/internal/event"
)

// writeMMDB writes a small MaxMind-format database mapping each CIDR to
// its record.
func writeMMDB(t *testing.T, dbType string, records map[string]mmdbtype.Map) string {
	t.Helper()
	tree, err := mmdbwriter.New(mmdbwriter.Options{DatabaseType: dbType, IncludeReservedNetworks: true, RecordSize: 24})
	if err != nil {
		t.Fatal(err)
	}
	for cidr, rec := range records {
		_, n, err := net.ParseCIDR(cidr)
		if err != nil {
			t.Fatal(err)
		}
		if err := tree.Insert(n, rec); err != nil {
			t.Fatal(err)
		}
	}
	p := filepath.Join(t.TempDir(), dbType+".mmdb")
	f, err := os.Create(p)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, err := tree.WriteTo(f); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestGeoDatabases(t *testing.T) {
	country := writeMMDB(t, "GeoLite2-Country", map[string]mmdbtype.Map{
		"203.0.113.0/24": {"country": mmdbtype.Map{"iso_code": mmdbtype.String("NL")}},
		"2001:db8::/32":  {"country": mmdbtype.Map{"iso_code": mmdbtype.String("JP")}},
	})
	asn := writeMMDB(t, "GeoLite2-ASN", map[string]mmdbtype.Map{
		"203.0.113.0/24": {"autonomous_system_number": mmdbtype.Uint32(64500), "autonomous_system_organization": mmdbtype.String("Example")},
	})
	g, err := OpenGeo(country, asn)
	if err != nil {
		t.Fatal(err)
	}
	defer g.Close()
	for _, c := range []struct {
		ip      string
		country string
		asn     uint32
	}{
		{"203.0.113.9", "NL", 64500},
		{"2001:db8::1", "JP", 0},
		{"198.51.100.1", "", 0},
	} {
		if cc, a := g.Lookup(netip.MustParseAddr(c.ip)); cc != c.country || a != c.asn {
			t.Errorf("%s: %q %d, want %q %d", c.ip, cc, a, c.country, c.asn)
		}
	}
	if _, err := OpenGeo(filepath.Join(t.TempDir(), "missing.mmdb"), ""); err == nil {
		t.Error("missing database opened")
	}

	// Events get the database's answers; a CDN header still wins.
	v, tbl := newTestVerifier(t)
	k := testKeyState(t, tbl, 0, 0)
	ch := make(chan event.Event, 4)
	srv := NewServer(v, nil, nil, HTTPConfig{Geo: g, CountryHeader: "CF-IPCountry"})
	srv.emitHook = func(ev *event.Event) { ch <- *ev }
	h := srv.Middleware(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {}))
	for _, hdr := range []string{"", "DE"} {
		req := httptest.NewRequest("GET", "/x", nil)
		req.RemoteAddr = "203.0.113.9:1234"
		req.Header.Set("X-API-Key", k.secret)
		if hdr != "" {
			req.Header.Set("CF-IPCountry", hdr)
		}
		h.ServeHTTP(httptest.NewRecorder(), req)
		select {
		case ev := <-ch:
			want := "NL"
			if hdr != "" {
				want = hdr
			}
			if ev.Country != want || ev.ASN != 64500 {
				t.Errorf("header %q: event country %q asn %d", hdr, ev.Country, ev.ASN)
			}
		case <-time.After(time.Second):
			t.Fatal("no event")
		}
	}

	// An ASN block (a rule grouped by asn) matches the database's AS
	// number: any address of AS64500 without a valid key is refused.
	v.Blocks().BlockASN(64500, time.Now().Add(time.Hour))
	for _, c := range []struct {
		ip, key string
		status  int
	}{
		{"203.0.113.9", "", http.StatusForbidden},
		{"203.0.113.9", "km_live_nope", http.StatusForbidden},
		{"203.0.113.9", k.secret, http.StatusOK},
		{"198.51.100.1", "km_live_nope", http.StatusUnauthorized}, // ASN unknown
	} {
		req := httptest.NewRequest("GET", "/x", nil)
		req.RemoteAddr = c.ip + ":1234"
		if c.key != "" {
			req.Header.Set("X-API-Key", c.key)
		}
		w := httptest.NewRecorder()
		h.ServeHTTP(w, req)
		if w.Code != c.status {
			t.Errorf("ASN block, %s key %q: status %d, want %d", c.ip, c.key, w.Code, c.status)
		}
		select {
		case ev := <-ch:
			if want := map[string]uint32{"203.0.113.9": 64500}[c.ip]; ev.ASN != want {
				t.Errorf("ASN block, %s: event asn %d, want %d", c.ip, ev.ASN, want)
			}
		case <-time.After(time.Second):
			t.Fatal("no event")
		}
	}
}
