package leaks

import (
	"crypto/ecdsa"
	"fmt"
	"os"
	"strings"

	"github.com/spf13/pflag"
)

// Flags are the leak-report flags of the API roles (keymeter api, dev).
type Flags struct {
	PublicKeys []string // IDENTIFIER=FILE.pem
	Policy     string
}

// Bind defines --leak-public-key and --leak-policy on fs.
func (f *Flags) Bind(fs *pflag.FlagSet) {
	fs.StringArrayVar(&f.PublicKeys, "leak-public-key", nil, "secret-scanner public key as IDENTIFIER=FILE.pem (ECDSA P-256, the GitHub partner format); repeatable")
	fs.StringVar(&f.Policy, "leak-policy", "revoke", "what a true-positive leak report does: revoke or alert")
}

// Config reads the public keys and returns the leak policy of the flags;
// the API role fills in the rest.
func (f *Flags) Config() (Config, error) {
	pubs := map[string]*ecdsa.PublicKey{}
	for _, spec := range f.PublicKeys {
		id, file, ok := strings.Cut(spec, "=")
		if !ok || id == "" || file == "" {
			return Config{}, fmt.Errorf("--leak-public-key %q: want IDENTIFIER=FILE.pem", spec)
		}
		b, err := os.ReadFile(file)
		if err != nil {
			return Config{}, fmt.Errorf("--leak-public-key: %w", err)
		}
		k, err := ParsePublicKey(b)
		if err != nil {
			return Config{}, fmt.Errorf("--leak-public-key %s: %w", file, err)
		}
		pubs[id] = k
	}
	return Config{Policy: f.Policy, PublicKeys: pubs}, nil
}
