package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/mattn/go-isatty"
	"github.com/spf13/pflag"
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

func (c *clientFlags) validate() error {
	if c.Output != "" && c.Output != "json" && c.Output != "table" {
		return fmt.Errorf("-o %q: accepted values are table, json", c.Output)
	}
	if c.Token == "" {
		return fmt.Errorf("no token: set KEYMETER_TOKEN (keymeter dev prints one and stores it in <data-dir>/admin-token) or pass --token")
	}
	return nil
}

// apiError is the API's error body.
type apiError struct {
	Error struct {
		Code    string `json:"code"`
		Message string `json:"message"`
		Field   string `json:"field"`
	} `json:"error"`
}

// do calls the API and decodes the JSON answer into out (if not nil); it
// returns the raw body too.
func (c *clientFlags) do(method, path string, query url.Values, body any, out any) ([]byte, error) {
	if err := c.validate(); err != nil {
		return nil, err
	}
	u := strings.TrimRight(c.Server, "/") + path
	if len(query) > 0 {
		u += "?" + query.Encode()
	}
	var rd io.Reader
	if body != nil {
		b, err := json.Marshal(body)
		if err != nil {
			return nil, err
		}
		rd = bytes.NewReader(b)
	}
	req, err := http.NewRequest(method, u, rd)
	if err != nil {
		return nil, err
	}
	req.Header.Set("Authorization", "Bearer "+c.Token)
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := (&http.Client{Timeout: 60 * time.Second}).Do(req)
	if err != nil {
		return nil, fmt.Errorf("%s %s: %w", method, c.Server, err)
	}
	defer resp.Body.Close()
	raw, err := io.ReadAll(resp.Body)
	if err != nil {
		return nil, err
	}
	if resp.StatusCode >= 400 {
		var ae apiError
		if json.Unmarshal(raw, &ae) == nil && ae.Error.Message != "" {
			if ae.Error.Field != "" {
				return nil, fmt.Errorf("%s (%s, field %s, HTTP %d)", ae.Error.Message, ae.Error.Code, ae.Error.Field, resp.StatusCode)
			}
			return nil, fmt.Errorf("%s (%s, HTTP %d)", ae.Error.Message, ae.Error.Code, resp.StatusCode)
		}
		return nil, fmt.Errorf("HTTP %d: %s", resp.StatusCode, strings.TrimSpace(string(raw)))
	}
	if out != nil && len(raw) > 0 {
		if err := json.Unmarshal(raw, out); err != nil {
			return raw, fmt.Errorf("decoding the answer: %w", err)
		}
	}
	return raw, nil
}

// printJSON writes raw JSON as is.
func printJSON(raw []byte) {
	os.Stdout.Write(raw)
	if len(raw) > 0 && raw[len(raw)-1] != '\n' {
		fmt.Println()
	}
}

// table prints rows under a header, aligned.
func table(header []string, rows [][]string) {
	tw := tabwriter.NewWriter(os.Stdout, 2, 4, 2, ' ', 0)
	fmt.Fprintln(tw, strings.Join(header, "\t"))
	for _, r := range rows {
		fmt.Fprintln(tw, strings.Join(r, "\t"))
	}
	tw.Flush()
}

func fmtTime(t *time.Time) string {
	if t == nil || t.IsZero() {
		return "-"
	}
	return t.UTC().Format(time.RFC3339)
}
