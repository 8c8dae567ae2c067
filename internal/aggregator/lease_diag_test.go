package aggregator_test

import (
	"bytes"
	"context"
	"fmt"
	"sort"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/keymeter/keymeter/internal/bus"
	"github.com/keymeter/keymeter/internal/bus/natsbus"
	"github.com/keymeter/keymeter/internal/store"
)

// lockedBuf collects the members' logs, shown when the test fails.
type lockedBuf struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuf) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuf) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// leaseDiagnose logs, per partition, what was published and stored and the
// state of the group's durable consumer.
func leaseDiagnose(t *testing.T, b *natsbus.Bus, db *store.DB, prefix string, parts int, counts map[string]int) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	stored := map[string]int{}
	ids := map[int]bool{}
	r, err := db.Conn().Query(ctx, fmt.Sprintf("SELECT key_id, event_id FROM %s.requests", db.Database()), store.Params{})
	if err != nil {
		t.Log(err)
		return
	}
	for r.Next() {
		var k, id string
		if err := r.Scan(&k, &id); err != nil {
			t.Log(err)
			return
		}
		stored[k]++
		n, _ := strconv.Atoi(strings.TrimPrefix(id, "le-"))
		ids[n] = true
	}
	r.Close()
	missing := map[int][]string{}
	for j := 0; j < 60_000; j += 250 {
		if !ids[j] {
			key := fmt.Sprintf("key_%d", (j/250)%50)
			p := bus.Partition(key, parts)
			missing[p] = append(missing[p], fmt.Sprintf("lb-%d(%s)", j, key))
		}
	}
	js, _ := jetstream.New(b.Conn())
	stream := strings.ToUpper(prefix) + "_EVENTS"
	var names []string
	if s, err := js.Stream(ctx, stream); err == nil {
		l := s.ConsumerNames(ctx)
		for n := range l.Name() {
			names = append(names, n)
		}
	}
	for p := range parts {
		pub, st := 0, 0
		for k, n := range counts {
			if bus.Partition(k, parts) == p {
				pub += n
				st += stored[k]
			}
		}
		line := fmt.Sprintf("partition %d: published %d stored %d", p, pub, st)
		for _, name := range names {
			if name != "g-p"+strconv.Itoa(p) && !strings.HasPrefix(name, "g-p"+strconv.Itoa(p)+"_") {
				continue
			}
			c, err := js.Consumer(ctx, stream, name)
			if err != nil {
				line += " consumer " + name + ": " + err.Error()
				continue
			}
			i := c.CachedInfo()
			line += fmt.Sprintf(" consumer %s created %s ackfloor %d/%d delivered %d/%d pending %d ackpending %d redelivered %d waiting %d",
				name, i.Created.Format("15:04:05.000"), i.AckFloor.Stream, i.AckFloor.Consumer, i.Delivered.Stream, i.Delivered.Consumer,
				i.NumPending, i.NumAckPending, i.NumRedelivered, i.NumWaiting)
		}
		if len(missing[p]) > 0 {
			sort.Strings(missing[p])
			line += " missing " + strings.Join(missing[p], " ")
		}
		t.Log(line)
	}
}
