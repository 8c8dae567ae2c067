package detector

import (
	"testing"
	"time"
)

func TestSettingsConfigMapsEveryField(t *testing.T) {
	s := Settings{Rules: []string{"r"}, AllowKeys: []string{"k"}, AllowCIDRs: []string{"10.0.0.0/8"}, MaxRevokes: 3, MaxGlobal: 4,
		Reload: time.Second, Lookback: 2 * time.Hour, WarmStart: 3 * time.Hour, Maturity: 4 * time.Second, Seasonal: 5 * time.Second,
		Grace: 6 * time.Second, Group: "g"}
	c := s.Config(nil, nil, nil, nil, nil)
	if len(c.Rules) != 1 || len(c.AllowKeys) != 1 || len(c.AllowCIDRs) != 1 || c.MaxRevocationsPerHour != 3 || c.MaxRevocationsGlobal != 4 ||
		c.ReloadInterval != time.Second || c.BaselineLookback != 2*time.Hour || c.ProfileWarmStart != 3*time.Hour ||
		c.Profiles.Maturity != 4*time.Second || c.Profiles.Seasonal != 5*time.Second || c.Profiles.NoveltyGrace != 6*time.Second || c.Group != "g" {
		t.Fatalf("config %+v", c)
	}
	if c.History != nil || c.KeyKind != nil {
		t.Fatalf("no store and no key service: want no history and no key kinds")
	}
}
