package main

import (
	"github.com/keymeter/keymeter/internal/api"
	"github.com/keymeter/keymeter/internal/billing"
	"github.com/keymeter/keymeter/internal/store"
)

func newBilling(st *store.DB) api.Billing { return &billing.Exporter{Store: st} }
