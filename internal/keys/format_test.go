package keys

import (
	"errors"
	"fmt"
	"strings"
	"testing"
)

func TestGenerateParse(t *testing.T) {
	for _, env := range []Env{EnvLive, EnvTest} {
		seen := map[string]bool{}
		for range 1000 {
			k, err := Generate(env)
			if err != nil {
				t.Fatal(err)
			}
			s := k.Reveal()
			if len(s) != SecretLen || !strings.HasPrefix(s, "km_"+env.String()+"_") {
				t.Fatalf("bad shape %q", s)
			}
			if seen[s] {
				t.Fatalf("duplicate key")
			}
			seen[s] = true
			p, err := Parse(s)
			if err != nil {
				t.Fatalf("Parse(generated): %v", err)
			}
			if p.Env() != env || p.Hash() != k.Hash() {
				t.Fatalf("round trip mismatch")
			}
			if d := p.Display(); len(d) != 16 || !strings.HasPrefix(s, d) {
				t.Fatalf("display %q", d)
			}
		}
	}
}

func TestParseRejects(t *testing.T) {
	k, _ := Generate(EnvLive)
	good := k.Reveal()
	flip := func(i int) string {
		b := []byte(good)
		if b[i] == 'a' {
			b[i] = 'b'
		} else {
			b[i] = 'a'
		}
		return string(b)
	}
	cases := []struct {
		name string
		in   string
		want error
	}{
		{"empty", "", ErrMalformed},
		{"short", good[:len(good)-1], ErrMalformed},
		{"long", good + "a", ErrMalformed},
		{"prefix", "xm" + good[2:], ErrMalformed},
		{"env", "km_prod_" + good[8:], ErrMalformed},
		{"separator", good[:7] + "-" + good[8:], ErrMalformed},
		{"non-base62", good[:20] + "-" + good[21:], ErrMalformed},
		{"unicode", good[:20] + "é" + good[22:], ErrMalformed},
		{"random char changed", flip(20), ErrChecksum},
		{"checksum char changed", flip(len(good) - 1), ErrChecksum},
		{"env swapped", "km_test_" + good[8:], ErrChecksum},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			if _, err := Parse(c.in); !errors.Is(err, c.want) {
				t.Fatalf("Parse(%q) = %v, want %v", c.in, err, c.want)
			}
		})
	}
}

func TestParseNoAlloc(t *testing.T) {
	k, _ := Generate(EnvLive)
	good, bad := k.Reveal(), "km_live_"+strings.Repeat("a", 38)
	if n := testing.AllocsPerRun(100, func() {
		_, _ = Parse(good)
		_, _ = Parse(bad)
		_, _ = Parse("nonsense")
	}); n != 0 {
		t.Fatalf("Parse allocates %v times", n)
	}
}

func TestSecretNotPrinted(t *testing.T) {
	k, _ := Generate(EnvLive)
	for _, s := range []string{fmt.Sprint(k), fmt.Sprintf("%v %+v %#v %s", k, k, k, k), k.LogValue().String()} {
		if strings.Contains(s, k.Reveal()[16:]) {
			t.Fatalf("secret printed: %s", s)
		}
	}
}

func FuzzParse(f *testing.F) {
	for range 4 {
		k, _ := Generate(EnvLive)
		f.Add(k.Reveal())
		k, _ = Generate(EnvTest)
		f.Add(k.Reveal())
	}
	f.Add("")
	f.Add("km_live_")
	f.Add("km_live_" + strings.Repeat("z", 38))
	f.Add("km_test_" + strings.Repeat("0", 38))
	f.Add("Bearer km_live_xyz")
	f.Fuzz(func(t *testing.T, s string) {
		k, err := Parse(s)
		if err != nil {
			if !errors.Is(err, ErrMalformed) && !errors.Is(err, ErrChecksum) {
				t.Fatalf("unexpected error %v", err)
			}
			return
		}
		// Anything accepted must be exactly a well-formed key whose
		// checksum we would have generated.
		for i := headLen; i < len(s); i++ {
			if strings.IndexByte(base62, s[i]) < 0 {
				t.Fatalf("accepted non-base62 %q", s)
			}
		}
		if len(s) != SecretLen || k.Reveal() != s || (k.Env() != EnvLive && k.Env() != EnvTest) {
			t.Fatalf("accepted %q", s)
		}
		var enc [checksumLen]byte
		encodeChecksum(&enc, crc32IEEE(s[:bodyLen]))
		if string(enc[:]) != s[bodyLen:] {
			t.Fatalf("accepted bad checksum %q", s)
		}
	})
}

func BenchmarkParse(b *testing.B) {
	k, _ := Generate(EnvLive)
	s := k.Reveal()
	b.ReportAllocs()
	for b.Loop() {
		_, _ = Parse(s)
	}
}

func TestBodyCRC(t *testing.T) {
	for range 1000 {
		k, _ := Generate(EnvTest)
		s := k.Reveal()
		if bodyCRC(s) != crc32IEEE(s[:bodyLen]) {
			t.Fatal("bodyCRC differs from hash/crc32")
		}
	}
}
