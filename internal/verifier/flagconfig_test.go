package verifier

import (
	"context"
	"errors"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/keymeter/keymeter/internal/bus"
)

func TestSettingsApplyNamesTheBadFlag(t *testing.T) {
	base := RunConfig{Listen: "127.0.0.1:0", Upstream: "http://127.0.0.1:1"}
	for flag, s := range map[string]Settings{
		"--route":         {Routes: []string{"/a,bogus=1"}},
		"--trusted-proxy": {TrustedProxies: []string{"not-a-cidr"}},
	} {
		if _, err := s.Apply(base); err == nil || !strings.Contains(err.Error(), flag) {
			t.Errorf("%s: got %v, want an error naming it", flag, err)
		}
	}
	cfg, err := Settings{Routes: []string{"/public,anonymous=5/10"}, TrustedProxies: []string{"10.0.0.0/8"},
		MaxSpoolMB: 2, QueueSize: 7, MaxBatch: 3, FlushInterval: time.Second}.Apply(base)
	if err != nil {
		t.Fatal(err)
	}
	if len(cfg.Routes) != 1 || len(cfg.HTTP.TrustedProxies) != 1 || cfg.Emitter.MaxSpoolBytes != 2<<20 ||
		cfg.Emitter.QueueSize != 7 || cfg.Emitter.MaxBatch != 3 || cfg.Emitter.FlushInterval != time.Second {
		t.Fatalf("config %+v", cfg)
	}
}

// A setting that cannot be applied stops the process before the bus opens.
func TestRunProcessFailsBeforeTheBus(t *testing.T) {
	opened := false
	open := func(context.Context, string) (bus.Bus, error) { opened = true; return nil, errors.New("no bus") }
	base := RunConfig{Listen: "127.0.0.1:0", Upstream: "http://127.0.0.1:1", DataDir: t.TempDir()}
	for _, s := range []Settings{{Routes: []string{"/a,bogus=1"}}, {GeoCountryDB: filepath.Join(t.TempDir(), "none.mmdb")}} {
		if err := s.RunProcess(context.Background(), base, open); err == nil || opened {
			t.Fatalf("%+v: err %v, bus opened %v", s, err, opened)
		}
	}
	if err := (Settings{}).RunProcess(context.Background(), base, open); err == nil || !opened || err.Error() != "no bus" {
		t.Fatalf("bus error: %v (opened %v)", err, opened)
	}
}
