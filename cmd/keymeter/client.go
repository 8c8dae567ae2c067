package main

import (
	"fmt"
	"os"

	"github.com/mattn/go-isatty"
	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	"github.com/keymeter/keymeter/internal/api/apiclient"
)

// clientFlags are how CLI tools reach the API.
type clientFlags struct {
	Server string
	Token  string
	Output string
}

func (c *clientFlags) add(fs *pflag.FlagSet) {
	fs.StringVar(&c.Server, "server", "http://127.0.0.1:8081", "keymeter API base URL")
	fs.StringVar(&c.Token, "token", "", "admin token (prefer KEYMETER_TOKEN in the environment: arguments show in ps)")
	fs.StringVarP(&c.Output, "output", "o", "", "output: table (default on a terminal) or json")
}

func (c *clientFlags) json() bool {
	if c.Output == "" {
		return !isatty.IsTerminal(os.Stdout.Fd())
	}
	return c.Output == "json"
}

// client checks the flags and returns an API client.
func (c *clientFlags) client() (*apiclient.Client, error) {
	if c.Output != "" && c.Output != "json" && c.Output != "table" {
		return nil, fmt.Errorf("-o %q: accepted values are table, json", c.Output)
	}
	return apiclient.New(apiclient.Config{Server: c.Server, Token: c.Token})
}

// runE is a command's RunE that gets an API client first.
func (c *clientFlags) runE(fn func(cmd *cobra.Command, args []string, cl *apiclient.Client) error) func(*cobra.Command, []string) error {
	return func(cmd *cobra.Command, args []string) error {
		cl, err := c.client()
		if err != nil {
			return err
		}
		return fn(cmd, args, cl)
	}
}

// show prints v as JSON when JSON output is asked for, else calls asTable.
func (c *clientFlags) show(v any, asTable func()) error {
	if c.json() {
		return apiclient.WriteJSON(os.Stdout, v)
	}
	asTable()
	return nil
}
