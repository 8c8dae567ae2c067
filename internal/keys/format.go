package keys

import (
	"crypto/rand"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"hash/crc32"
	"io"
	"log/slog"
	"unsafe"
)

// Key format: "km_" + env + "_" + 32 base62 random characters + 6 base62
// characters of the CRC32 (IEEE) of everything before them. The checksum
// lets the verifier, and secret scanners, reject a mistyped or invented key
// offline, before any table lookup.
const (
	prefix       = "km_"
	randomLen    = 32
	checksumLen  = 6
	envLen       = 4 // "live" and "test" have the same length
	headLen      = len(prefix) + envLen + 1
	bodyLen      = headLen + randomLen // the part the checksum covers
	SecretLen    = bodyLen + checksumLen
	displayChars = 8
	idRandomLen  = 20
)

const base62 = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"

// Env is the environment a key belongs to.
type Env uint8

const (
	EnvUnspecified Env = iota
	EnvLive
	EnvTest
)

func (e Env) String() string {
	switch e {
	case EnvLive:
		return "live"
	case EnvTest:
		return "test"
	}
	return "unspecified"
}

// ParseEnv parses "live" or "test".
func ParseEnv(s string) (Env, error) {
	switch s {
	case "live":
		return EnvLive, nil
	case "test":
		return EnvTest, nil
	}
	return EnvUnspecified, errors.New(`keys: unknown env ` + quote(s) + ` (accepted: live, test)`)
}

func quote(s string) string {
	if len(s) > 32 {
		s = s[:32] + "…"
	}
	return `"` + s + `"`
}

// Errors Parse returns. They are fixed values so that rejecting a bad key
// does not allocate.
var (
	ErrMalformed = errors.New("keys: malformed key: want km_live_ or km_test_ followed by 38 base62 characters")
	ErrChecksum  = errors.New("keys: key checksum does not match (mistyped or invented key)")
)

// Hash is the SHA-256 of a secret: the only form in which a key is stored.
type Hash [sha256.Size]byte

// Secret is a parsed, checksum-valid key secret. It is the secret itself:
// never log it, never store it.
type Secret struct {
	s   string
	env Env
}

// Env is the secret's environment.
func (k Secret) Env() Env { return k.env }

// Hash is the SHA-256 of the secret.
func (k Secret) Hash() Hash { return HashSecret(k.s) }

// Display is the non-secret display prefix of the key (see DisplayPrefix).
func (k Secret) Display() string { return DisplayPrefix(k.s) }

// Reveal returns the secret string; callers show it once, to its owner.
func (k Secret) Reveal() string { return k.s }

// String never prints the secret.
func (k Secret) String() string { return DisplayPrefix(k.s) + "…" }

// GoString keeps the secret out of %#v.
func (k Secret) GoString() string { return k.String() }

// LogValue keeps the secret out of slog output.
func (k Secret) LogValue() slog.Value { return slog.StringValue(k.String()) }

// HashSecret hashes a secret string without copying it.
func HashSecret(s string) Hash {
	return sha256.Sum256(unsafe.Slice(unsafe.StringData(s), len(s)))
}

// DisplayPrefix is what is shown to identify a key: "km_live_" followed by
// the first 8 random characters. The literal first 8 characters of every key
// are "km_live_" or "km_test_", which identify nothing; 8 base62 characters
// (~48 bits) leave ~143 bits of the secret unknown.
func DisplayPrefix(s string) string {
	if len(s) < headLen+displayChars {
		return ""
	}
	return s[:headLen+displayChars]
}

// Parse checks the format and checksum of a key without allocating.
func Parse(s string) (Secret, error) {
	if len(s) != SecretLen || s[0] != 'k' || s[1] != 'm' || s[2] != '_' || s[headLen-1] != '_' {
		return Secret{}, ErrMalformed
	}
	var env Env
	switch s[3:7] {
	case "live":
		env = EnvLive
	case "test":
		env = EnvTest
	default:
		return Secret{}, ErrMalformed
	}
	if !allBase62(s) {
		return Secret{}, ErrMalformed
	}
	// 62^6 > 2^32 and the field has a fixed width, so comparing decoded
	// values accepts only the canonical encoding of the CRC.
	var got uint64
	for i := bodyLen; i < SecretLen; i++ {
		got = got*62 + uint64(b62val[s[i]])
	}
	if got != uint64(bodyCRC(s)) {
		return Secret{}, ErrChecksum
	}
	return Secret{s: s, env: env}, nil
}

var b62val = func() (t [256]int8) {
	for i := range t {
		t[i] = -1
	}
	for i := 0; i < len(base62); i++ {
		t[base62[i]] = int8(i)
	}
	return t
}()

// allBase62 checks s[headLen:SecretLen] eight bytes at a time (SWAR): for
// bytes below 0x80, adding 0x80-lo sets a byte's high bit iff it is ≥ lo,
// and adding 0x7f-hi iff it is > hi, without carries between bytes.
func allBase62(s string) bool {
	b := unsafe.Slice(unsafe.StringData(s), SecretLen)
	return base62Word(binary.LittleEndian.Uint64(b[headLen:]))&
		base62Word(binary.LittleEndian.Uint64(b[headLen+8:]))&
		base62Word(binary.LittleEndian.Uint64(b[headLen+16:]))&
		base62Word(binary.LittleEndian.Uint64(b[headLen+24:]))&
		base62Word(binary.LittleEndian.Uint64(b[SecretLen-8:])) == hi8
}

const (
	lo8 = 0x0101010101010101
	hi8 = 0x8080808080808080
)

func inRange(x uint64, lo, hi uint64) uint64 {
	return (x + lo8*(0x80-lo)) &^ (x + lo8*(0x7f-hi)) & hi8
}

func base62Word(x uint64) uint64 {
	if x&hi8 != 0 {
		return 0
	}
	return inRange(x, '0', '9') | inRange(x, 'A', 'Z') | inRange(x, 'a', 'z')
}

func encodeChecksum(dst *[checksumLen]byte, v uint32) {
	for i := checksumLen - 1; i >= 0; i-- {
		dst[i] = base62[v%62]
		v /= 62
	}
}

// Generate returns a new secret from crypto/rand.
func Generate(env Env) (Secret, error) { return generate(rand.Reader, env) }

func generate(r io.Reader, env Env) (Secret, error) {
	if env != EnvLive && env != EnvTest {
		return Secret{}, errors.New("keys: generate: env must be live or test")
	}
	b := make([]byte, 0, SecretLen)
	b = append(b, prefix...)
	b = append(b, env.String()...)
	b = append(b, '_')
	var err error
	if b, err = appendRandom62(r, b, randomLen); err != nil {
		return Secret{}, err
	}
	var enc [checksumLen]byte
	encodeChecksum(&enc, crc32.ChecksumIEEE(b))
	b = append(b, enc[:]...)
	return Secret{s: string(b), env: env}, nil
}

// appendRandom62 appends n uniformly random base62 characters, rejecting
// bytes ≥ 248 so that every character has the same probability.
func appendRandom62(r io.Reader, dst []byte, n int) ([]byte, error) {
	var buf [64]byte
	for n > 0 {
		if _, err := io.ReadFull(r, buf[:]); err != nil {
			return dst, errors.Join(errors.New("keys: reading random bytes"), err)
		}
		for _, c := range buf {
			if c >= 248 || n == 0 {
				continue
			}
			dst = append(dst, base62[c%62])
			n--
		}
	}
	return dst, nil
}

// NewID returns a new non-secret key id, "key_" + 20 base62 characters.
func NewID() (string, error) {
	b, err := appendRandom62(rand.Reader, append(make([]byte, 0, 4+idRandomLen), "key_"...), idRandomLen)
	if err != nil {
		return "", err
	}
	return string(b), nil
}

func crc32IEEE(s string) uint32 {
	return crc32.ChecksumIEEE(unsafe.Slice(unsafe.StringData(s), len(s)))
}

// crcTables are the slicing-by-8 tables of CRC-32 (IEEE). hash/crc32 does
// the last 8 bytes of a 40-byte input one at a time; this does 5 words.
var crcTables = func() (t [8][256]uint32) {
	t[0] = *crc32.IEEETable
	for i := range 256 {
		c := t[0][i]
		for k := 1; k < 8; k++ {
			c = t[0][c&0xff] ^ c>>8
			t[k][i] = c
		}
	}
	return t
}()

// bodyCRC is the CRC-32 (IEEE) of s[:bodyLen], len(s) ≥ bodyLen.
func bodyCRC(s string) uint32 {
	b := unsafe.Slice(unsafe.StringData(s), bodyLen)
	t := &crcTables
	crc := ^uint32(0)
	for i := 0; i < bodyLen; i += 8 {
		w := binary.LittleEndian.Uint64(b[i:])
		x := uint32(w) ^ crc
		y := uint32(w >> 32)
		crc = t[0][y>>24] ^ t[1][y>>16&0xff] ^ t[2][y>>8&0xff] ^ t[3][y&0xff] ^
			t[4][x>>24] ^ t[5][x>>16&0xff] ^ t[6][x>>8&0xff] ^ t[7][x&0xff]
	}
	return ^crc
}
