package main

import (
	"github.com/spf13/cobra"

	"github.com/keymeter/keymeter/internal/api/apiclient"
)

// clientFlags are how CLI tools reach the API (apiclient.Flags).
type clientFlags struct{ apiclient.Flags }

// runE is a command's RunE that gets an API client first.
func (c *clientFlags) runE(fn func(cmd *cobra.Command, args []string, cl *apiclient.Client) error) func(*cobra.Command, []string) error {
	return func(cmd *cobra.Command, args []string) error {
		cl, err := c.Client()
		if err != nil {
			return err
		}
		return fn(cmd, args, cl)
	}
}
