package main

import (
	"crypto/ecdsa"
	"fmt"
	"os"
	"strings"

	"github.com/spf13/pflag"

	"github.com/keymeter/keymeter/internal/leaks"
)

type leakFlags struct {
	PublicKeys []string
	Policy     string
}

func (f *leakFlags) add(fs *pflag.FlagSet) {
	fs.StringArrayVar(&f.PublicKeys, "leak-public-key", nil, "secret-scanner public key as IDENTIFIER=FILE.pem (ECDSA P-256, the GitHub partner format); repeatable")
	fs.StringVar(&f.Policy, "leak-policy", "revoke", "what a true-positive leak report does: revoke or alert")
}

// config is the leak policy of the flags; the API role fills in the rest.
func (f *leakFlags) config() (leaks.Config, error) {
	pubs := map[string]*ecdsa.PublicKey{}
	for _, spec := range f.PublicKeys {
		id, file, ok := strings.Cut(spec, "=")
		if !ok || id == "" || file == "" {
			return leaks.Config{}, fmt.Errorf("--leak-public-key %q: want IDENTIFIER=FILE.pem", spec)
		}
		b, err := os.ReadFile(file)
		if err != nil {
			return leaks.Config{}, fmt.Errorf("--leak-public-key: %w", err)
		}
		k, err := leaks.ParsePublicKey(b)
		if err != nil {
			return leaks.Config{}, fmt.Errorf("--leak-public-key %s: %w", file, err)
		}
		pubs[id] = k
	}
	return leaks.Config{Policy: f.Policy, PublicKeys: pubs}, nil
}
