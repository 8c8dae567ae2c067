package natsbus

import (
	"context"
	"errors"
	"slices"

	"github.com/nats-io/nats.go/jetstream"
)

// Provisioning runs in every process at every start, so it changes a
// stream only when its configuration differs. An update of a stream that
// is already as wanted is not free: the server rewrites the stream's
// configuration, and in nats-server 2.15.2 that races (found by the race
// detector, with the server embedded) with a consumer being created on the
// same stream at the same moment, which is what the other members of a
// group do while one starts.

// ensureStream creates stream sc, or updates it if it differs.
func (b *Bus) ensureStream(ctx context.Context, sc jetstream.StreamConfig) error {
	return apiRetry(ctx, func(ctx context.Context) error {
		s, err := b.js.Stream(ctx, sc.Name)
		if err == nil && streamAsWanted(s.CachedInfo().Config, sc) {
			return nil
		}
		if err != nil && !errors.Is(err, jetstream.ErrStreamNotFound) {
			return err
		}
		_, err = b.js.CreateOrUpdateStream(ctx, sc)
		return err
	})
}

// streamAsWanted reports whether the stream configuration have has
// everything want sets (the server fills in defaults for what it does not).
func streamAsWanted(have, want jetstream.StreamConfig) bool {
	same := func(h, w int) bool { return h == w || (w == 0 && h == 1) } // replicas: 0 means 1
	return slices.Equal(have.Subjects, want.Subjects) && have.Storage == want.Storage && have.Retention == want.Retention &&
		have.MaxAge == want.MaxAge && (want.Duplicates == 0 || have.Duplicates == want.Duplicates) &&
		same(have.Replicas, want.Replicas) && have.Description == want.Description
}

// ensureKeyValue binds key-value bucket kc, creating it or updating it if
// it differs.
func (b *Bus) ensureKeyValue(ctx context.Context, kc jetstream.KeyValueConfig) (jetstream.KeyValue, error) {
	var kv jetstream.KeyValue
	err := apiRetry(ctx, func(ctx context.Context) (err error) {
		kv, err = b.js.KeyValue(ctx, kc.Bucket)
		if err == nil {
			st, err := kv.Status(ctx)
			if err != nil {
				return err
			}
			if si, ok := st.(*jetstream.KeyValueBucketStatus); ok {
				c := si.StreamInfo().Config
				if c.MaxMsgsPerSubject == int64(kc.History) && c.Storage == kc.Storage && c.Description == kc.Description &&
					(c.Replicas == kc.Replicas || (kc.Replicas == 0 && c.Replicas == 1)) {
					return nil
				}
			}
		} else if !errors.Is(err, jetstream.ErrBucketNotFound) {
			return err
		}
		kv, err = b.js.CreateOrUpdateKeyValue(ctx, kc)
		return err
	})
	return kv, err
}
