package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/spf13/cobra"
)

// A command that only reports its flags, for testing how they are set.
var seenRate, seenName string

func init() {
	register(func(g *globals) *cobra.Command {
		c := &cobra.Command{Use: "flagprobe", Hidden: true, RunE: func(cmd *cobra.Command, _ []string) error {
			seenRate, _ = cmd.Flags().GetString("rate")
			seenName, _ = cmd.Flags().GetString("name")
			return nil
		}}
		c.Flags().String("rate", "default-rate", "")
		c.Flags().String("name", "default-name", "")
		return c
	})
}

func TestFlagEnvConfigPrecedence(t *testing.T) {
	cfg := filepath.Join(t.TempDir(), "k.yaml")
	if err := os.WriteFile(cfg, []byte("rate: from-file\nname: from-file\nupstream: http://other-roles-key\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	run := func(args ...string) error {
		root := newRootCmd()
		root.SetArgs(args)
		return root.Execute()
	}
	t.Setenv("KEYMETER_RATE", "from-env")
	if err := run("flagprobe", "--config", cfg); err != nil {
		t.Fatal(err)
	}
	if seenRate != "from-env" || seenName != "from-file" {
		t.Fatalf("env over file: rate=%q name=%q", seenRate, seenName)
	}
	if err := run("flagprobe", "--config", cfg, "--rate", "from-flag"); err != nil {
		t.Fatal(err)
	}
	if seenRate != "from-flag" {
		t.Fatalf("flag over env: rate=%q", seenRate)
	}
	bad := filepath.Join(t.TempDir(), "bad.yaml")
	_ = os.WriteFile(bad, []byte("colour: red\n"), 0o600)
	if err := run("flagprobe", "--config", bad); err == nil || !strings.Contains(err.Error(), `unknown key "colour"`) {
		t.Fatalf("unknown config key: %v", err)
	}
	if err := run("flagprobe", "--config", filepath.Join(t.TempDir(), "missing.yaml")); err == nil {
		t.Fatal("a missing config file was accepted")
	}
}
