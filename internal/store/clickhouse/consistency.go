package clickhouse

import (
	"context"
	"fmt"

	ch "github.com/ClickHouse/clickhouse-go/v2"
	"github.com/ClickHouse/clickhouse-go/v2/lib/driver"

	"github.com/keymeter/keymeter/internal/store"
)

// consistencySettings are the settings a statement's store.Consistency
// asks for, on a server that knows them (supported; else none).
//
// On a cluster the fence and the intents are replicated to every node:
// without these, a member could read a replica that has not yet seen
// another member's fence or intent, and both sides of the fencing's "write,
// then read the other's write" could miss. A quorum write returns once a
// majority of the replicas has it, in sequence with the table's other
// quorum writes (insert_quorum_parallel = 0: select_sequential_consistency
// holds only then); a consistent read fails on a replica that lacks a
// quorum write rather than answer without it. On one server (no
// replicated tables) ClickHouse ignores both.
func consistencySettings(ctx context.Context, supported bool) ch.Settings {
	if !supported {
		return nil
	}
	switch store.ConsistencyOf(ctx) {
	case store.ConsistentRead:
		return ch.Settings{"select_sequential_consistency": 1}
	case store.QuorumWrite:
		return ch.Settings{"insert_quorum": "auto", "insert_quorum_parallel": 0}
	}
	return nil
}

// consistencySupported reports whether the server takes the settings as
// sent: insert_quorum = 'auto' needs 22.x; keymeter's schema needs
// MinServerVersion anyway, so older servers (Debian's 18.16, which tests
// connect to) are sent none.
func consistencySupported(conn driver.Conn) bool {
	v, err := conn.ServerVersion()
	if err != nil {
		return false
	}
	return AtLeast(fmtVersion(v), MinServerVersion)
}

func fmtVersion(sv *driver.ServerVersion) string {
	return fmt.Sprintf("%d.%d.%d", sv.Version.Major, sv.Version.Minor, sv.Version.Patch)
}
