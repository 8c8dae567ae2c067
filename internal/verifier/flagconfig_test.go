package verifier

import (
	"strings"
	"testing"
	"time"
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
