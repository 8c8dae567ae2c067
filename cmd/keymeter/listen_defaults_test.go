package main

import (
	"io"
	"net"
	"strings"
	"testing"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"
)

// TestListenersDefaultToLoopback: every address flag of every command
// (--listen, --admin-listen, --proxy-listen, …) defaults to a loopback
// address or to nothing; exposing a port is an explicit choice. The
// verifier's --listen and --admin-listen defaulted to every interface.
func TestListenersDefaultToLoopback(t *testing.T) {
	var walk func(c *cobra.Command)
	n := 0
	walk = func(c *cobra.Command) {
		c.Flags().VisitAll(func(f *pflag.Flag) {
			if !strings.HasSuffix(f.Name, "listen") {
				return
			}
			n++
			if f.DefValue == "" {
				return
			}
			host, _, err := net.SplitHostPort(f.DefValue)
			if ip := net.ParseIP(host); err != nil || ip == nil || !ip.IsLoopback() {
				t.Errorf("%s --%s defaults to %q: not a loopback address", c.CommandPath(), f.Name, f.DefValue)
			}
		})
		for _, sub := range c.Commands() {
			walk(sub)
		}
	}
	walk(newRootCmd())
	if n < 8 {
		t.Fatalf("only %d listen flags found: the walk is broken", n)
	}
}

// TestVerifierForwardAuthNeedsFront: forward-auth mode does not start
// without naming the proxy in front (the original request is read only
// from that proxy's headers).
func TestVerifierForwardAuthNeedsFront(t *testing.T) {
	for _, c := range []struct {
		args []string
		want string
	}{
		{nil, "forward auth needs --front"},
		{[]string{"--front", "haproxy"}, `--front "haproxy"`},
		{[]string{"--front", "nginx", "--forwarded-header", "X-Real-Ip"}, `--forwarded-header "X-Real-Ip"`},
	} {
		root := newRootCmd()
		root.SetArgs(append([]string{"verifier", "--listen", "127.0.0.1:0", "--admin-listen", "", "--data-dir", t.TempDir()}, c.args...))
		root.SetOut(io.Discard)
		root.SetErr(io.Discard)
		err := root.Execute()
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%v: got %v, want an error containing %q", c.args, err, c.want)
		}
	}
}
