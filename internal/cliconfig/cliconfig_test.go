package cliconfig

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/spf13/cobra"
)

func command(t *testing.T, args ...string) (*cobra.Command, *string, *string, *[]string) {
	t.Helper()
	var a, b string
	var list []string
	c := &cobra.Command{Use: "x"}
	c.Flags().StringVar(&a, "alpha", "default", "")
	c.Flags().StringVar(&b, "beta-gamma", "default", "")
	c.Flags().StringSliceVar(&list, "list", nil, "")
	if err := c.ParseFlags(args); err != nil {
		t.Fatal(err)
	}
	return c, &a, &b, &list
}

func TestPrecedenceFlagEnvFile(t *testing.T) {
	file := filepath.Join(t.TempDir(), "c.yaml")
	if err := os.WriteFile(file, []byte("alpha: file\nbeta-gamma: file\nlist: [a, b]\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	t.Setenv("KEYMETER_BETA_GAMMA", "env")
	t.Setenv("KEYMETER_ALPHA", "env")
	c, a, b, list := command(t, "--alpha", "flag")
	if err := Apply(c, file); err != nil {
		t.Fatal(err)
	}
	if *a != "flag" || *b != "env" || strings.Join(*list, ",") != "a,b" {
		t.Fatalf("alpha=%s beta-gamma=%s list=%v", *a, *b, *list)
	}
}

func TestErrorsNameTheSource(t *testing.T) {
	file := filepath.Join(t.TempDir(), "c.yaml")
	if err := os.WriteFile(file, []byte("nosuch: 1\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	c, _, _, _ := command(t)
	if err := Apply(c, file); err == nil || !strings.Contains(err.Error(), `unknown key "nosuch"`) {
		t.Fatalf("unknown key: %v", err)
	}
	if err := os.WriteFile(file, []byte("alpha:\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	c, _, _, _ = command(t)
	if err := Apply(c, file); err == nil || !strings.Contains(err.Error(), "config file "+file+": --alpha") {
		t.Fatalf("empty value: %v", err)
	}
}
