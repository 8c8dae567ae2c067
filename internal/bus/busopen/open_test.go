package busopen

import (
	"context"
	"log/slog"
	"strings"
	"testing"
)

func TestOpenErrorsNameTheFlag(t *testing.T) {
	ctx := context.Background()
	if _, err := Open(ctx, Config{Backend: "rabbit"}, t.TempDir(), nil); err == nil || !strings.Contains(err.Error(), "--bus") {
		t.Fatalf("unknown backend: %v", err)
	}
	if _, err := Open(ctx, Config{Backend: "nats"}, "", nil); err == nil || !strings.Contains(err.Error(), "--data-dir") {
		t.Fatalf("embedded NATS without a data dir: %v", err)
	}
	if got := splitList(" a, ,b,"); strings.Join(got, "|") != "a|b" {
		t.Fatalf("splitList: %q", got)
	}
}

func TestOpenEmbeddedAndAnother(t *testing.T) {
	ctx := context.Background()
	cfg := Config{Backend: "nats", Prefix: "bo", Partitions: 2, MaxPending: 16, Replicas: 1}
	b, err := Open(ctx, cfg, t.TempDir(), slog.Default())
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close(ctx)
	b2, err := Another(ctx, cfg, b, slog.Default())
	if err != nil {
		t.Fatal(err)
	}
	defer b2.Close(ctx)
	if b2.CompareAndSet() == nil {
		t.Fatalf("%T: a NATS bus offers compare-and-set", b2)
	}
}
