package verifier

import (
	"errors"
	"fmt"
	"net/netip"

	"github.com/oschwald/maxminddb-golang/v2"
)

// Geo resolves client addresses to a country and an AS number from
// MaxMind-format databases: a Country or City database (GeoLite2, GeoIP2,
// DB-IP's compatible ones) and an ASN database. Either may be absent.
// Lookups happen when an event is built, or before Verify when an ASN is
// blocked, never in Verify.
type Geo struct {
	country, asn *maxminddb.Reader
}

// OpenGeo opens the databases at the given paths ("" to skip one).
func OpenGeo(countryDB, asnDB string) (*Geo, error) {
	g := &Geo{}
	var err error
	if countryDB != "" {
		if g.country, err = maxminddb.Open(countryDB); err != nil {
			return nil, fmt.Errorf("verifier: country database %s: %w", countryDB, err)
		}
	}
	if asnDB != "" {
		if g.asn, err = maxminddb.Open(asnDB); err != nil {
			_ = g.Close()
			return nil, fmt.Errorf("verifier: ASN database %s: %w", asnDB, err)
		}
	}
	return g, nil
}

// Lookup returns the ISO country code and the AS number of ip ("" and 0
// when unknown).
func (g *Geo) Lookup(ip netip.Addr) (country string, asn uint32) {
	if g == nil || !ip.IsValid() {
		return "", 0
	}
	if g.country != nil {
		_ = g.country.Lookup(ip).DecodePath(&country, "country", "iso_code")
	}
	if g.asn != nil {
		var n uint64
		if err := g.asn.Lookup(ip).DecodePath(&n, "autonomous_system_number"); err == nil && n <= 1<<32-1 {
			asn = uint32(n)
		}
	}
	return country, asn
}

// Close closes the databases.
func (g *Geo) Close() error {
	if g == nil {
		return nil
	}
	var errs []error
	if g.country != nil {
		errs = append(errs, g.country.Close())
	}
	if g.asn != nil {
		errs = append(errs, g.asn.Close())
	}
	return errors.Join(errs...)
}
