package main

import (
	"context"
	"time"

	"github.com/keymeter/keymeter/internal/httpserve"
)

// withDuration bounds ctx by --duration when it is set.
func withDuration(ctx context.Context, d time.Duration) (context.Context, context.CancelFunc) {
	if d > 0 {
		return context.WithTimeout(ctx, d)
	}
	return context.WithCancel(ctx)
}

// The roles' shared HTTP plumbing, under the names the commands use.
var (
	newRegistry    = httpserve.NewRegistry
	listen         = httpserve.Listen
	serve          = httpserve.Serve
	metricsHandler = httpserve.Admin
)
