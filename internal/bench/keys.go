package bench

import (
	"context"
	"time"

	"golang.org/x/sync/errgroup"
	"google.golang.org/protobuf/proto"

	"github.com/keymeter/keymeter/internal/bus"
	"github.com/keymeter/keymeter/internal/event/keymeterv1"
	"github.com/keymeter/keymeter/internal/keys"
)

// PutKeys writes n active keys straight to the key-state log, concurrently,
// and returns their secrets and states.
func PutKeys(ctx context.Context, kl bus.KeyLog, n int, project string, ratePerS float64) ([]string, []*keymeterv1.KeyState, error) {
	secrets := make([]string, n)
	states := make([]*keymeterv1.KeyState, n)
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(64)
	for i := range n {
		g.Go(func() error {
			sec, err := keys.Generate(keys.EnvLive)
			if err != nil {
				return err
			}
			id, err := keys.NewID()
			if err != nil {
				return err
			}
			h := sec.Hash()
			st := &keymeterv1.KeyState{Id: id, Project: project, Env: "live", Hash: h[:], DisplayPrefix: sec.Display(),
				Status: keymeterv1.KeyStatus_KEY_STATUS_ACTIVE, RateLimitPerS: ratePerS, Version: 1,
				CreatedUnixNano: time.Now().UnixNano(), UpdatedUnixNano: time.Now().UnixNano()}
			b, err := proto.Marshal(st)
			if err != nil {
				return err
			}
			secrets[i], states[i] = sec.Reveal(), st
			return kl.PutKey(gctx, id, b)
		})
	}
	return secrets, states, g.Wait()
}
