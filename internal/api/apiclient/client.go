// Package apiclient is a typed client of keymeter's REST API (package api):
// every call takes a context, and an error answer comes back as the API's
// own *api.Error, with its HTTP status, code and field.
package apiclient

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
	"time"

	"github.com/keymeter/keymeter/internal/api"
	"github.com/keymeter/keymeter/internal/leaks"
)

// Config says where the API is and how to authenticate.
type Config struct {
	// Server is the API's base URL, e.g. http://127.0.0.1:8081.
	Server string
	// Token is an admin token (the secret, sent as a bearer token).
	Token string
}

// Validate reports every problem of the configuration.
func (c Config) Validate() error {
	var errs []error
	if c.Token == "" {
		errs = append(errs, errors.New("no token: set KEYMETER_TOKEN (keymeter dev stores one in <data-dir>/admin-token) or pass --token"))
	}
	if u, err := url.Parse(c.Server); err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		errs = append(errs, fmt.Errorf("--server %q: want an http:// or https:// URL", c.Server))
	}
	return errors.Join(errs...)
}

// Option configures a Client.
type Option func(*Client) error

// WithHTTPClient sets the HTTP client (default: one with a 60 s timeout).
func WithHTTPClient(hc *http.Client) Option {
	return func(c *Client) error {
		if hc == nil {
			return errors.New("apiclient: WithHTTPClient(nil)")
		}
		c.hc = hc
		return nil
	}
}

// Client calls the API.
type Client struct {
	base  string
	token string
	hc    *http.Client
}

// New returns a client for cfg.
func New(cfg Config, opts ...Option) (*Client, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	c := &Client{base: strings.TrimRight(cfg.Server, "/"), token: cfg.Token, hc: &http.Client{Timeout: 60 * time.Second}}
	for _, o := range opts {
		if err := o(c); err != nil {
			return nil, err
		}
	}
	return c, nil
}

// Do calls the API and decodes a JSON answer into out (when not nil); it
// returns the raw body too. An error answer is an *api.Error (errors.As)
// whose Status is the HTTP status.
func (c *Client) Do(ctx context.Context, method, path string, query url.Values, body, out any) ([]byte, error) {
	u := c.base + path
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
	req, err := http.NewRequestWithContext(ctx, method, u, rd)
	if err != nil {
		return nil, err
	}
	req.Header.Set("Authorization", "Bearer "+c.token)
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := c.hc.Do(req)
	if err != nil {
		return nil, fmt.Errorf("%s %s: %w", method, c.base, err)
	}
	defer resp.Body.Close()
	raw, err := io.ReadAll(resp.Body)
	if err != nil {
		return nil, err
	}
	if resp.StatusCode >= 400 {
		return nil, decodeError(resp.StatusCode, raw)
	}
	if out != nil && len(raw) > 0 {
		if err := json.Unmarshal(raw, out); err != nil {
			return raw, fmt.Errorf("decoding the answer of %s %s: %w", method, path, err)
		}
	}
	return raw, nil
}

// decodeError turns an error answer into the API's error, wrapped so that
// its message names the code, the field and the status as well.
func decodeError(status int, raw []byte) error {
	var body struct {
		Error *api.Error `json:"error"`
	}
	ae := &api.Error{Status: status, Code: "http_" + fmt.Sprint(status), Message: strings.TrimSpace(string(raw))}
	if json.Unmarshal(raw, &body) == nil && body.Error != nil && body.Error.Message != "" {
		ae = body.Error
		ae.Status = status
	}
	if ae.Field != "" {
		return fmt.Errorf("%w (%s, field %s, HTTP %d)", ae, ae.Code, ae.Field, status)
	}
	return fmt.Errorf("%w (%s, HTTP %d)", ae, ae.Code, status)
}

// call is Do for an answer of type T.
func call[T any](ctx context.Context, c *Client, method, path string, query url.Values, body any) (T, error) {
	var out T
	_, err := c.Do(ctx, method, path, query, body, &out)
	return out, err
}

func keyPath(id, action string) string { return "/v1/keys/" + url.PathEscape(id) + action }

// CreateKey creates a key; the answer holds its secret, shown once.
func (c *Client) CreateKey(ctx context.Context, req api.CreateKeyRequest) (api.CreatedJSON, error) {
	return call[api.CreatedJSON](ctx, c, http.MethodPost, "/v1/keys", nil, req)
}

// Key returns one key.
func (c *Client) Key(ctx context.Context, id string) (api.KeyJSON, error) {
	return call[api.KeyJSON](ctx, c, http.MethodGet, keyPath(id, ""), nil, nil)
}

// KeyFilter selects keys in ListKeys.
type KeyFilter struct {
	Project, Status string
	PageSize        int // keys per API page; 0: the API's default
}

// ListKeys returns every key the filter selects, following the pages.
func (c *Client) ListKeys(ctx context.Context, f KeyFilter) ([]api.KeyJSON, error) {
	var all []api.KeyJSON
	cursor := ""
	for {
		q := url.Values{}
		for k, v := range map[string]string{"project": f.Project, "status": f.Status, "cursor": cursor} {
			if v != "" {
				q.Set(k, v)
			}
		}
		if f.PageSize > 0 {
			q.Set("limit", fmt.Sprint(f.PageSize))
		}
		var page api.KeyList
		if _, err := c.Do(ctx, http.MethodGet, "/v1/keys", q, nil, &page); err != nil {
			return all, err
		}
		all = append(all, page.Keys...)
		if page.Next == "" {
			return all, nil
		}
		cursor = page.Next
	}
}

// UpdateKey changes the fields req sets.
func (c *Client) UpdateKey(ctx context.Context, id string, req api.UpdateKeyRequest) (api.KeyJSON, error) {
	return call[api.KeyJSON](ctx, c, http.MethodPatch, keyPath(id, ""), nil, req)
}

// RotateKey issues a key replacing id; the old one verifies for grace.
func (c *Client) RotateKey(ctx context.Context, id string, grace time.Duration) (api.CreatedJSON, error) {
	g := grace.Round(time.Second)
	gs := fmt.Sprintf("%dh%dm%ds", g/time.Hour, g%time.Hour/time.Minute, g%time.Minute/time.Second)
	return call[api.CreatedJSON](ctx, c, http.MethodPost, keyPath(id, "/rotate"), nil, api.RotateRequest{GracePeriod: &gs})
}

// RevokeKey revokes a key for good.
func (c *Client) RevokeKey(ctx context.Context, id, reason string) (api.KeyJSON, error) {
	return c.keyAction(ctx, id, "/revoke", api.RevokeRequest{Reason: reason})
}

// SuspendKey refuses a key until ResumeKey.
func (c *Client) SuspendKey(ctx context.Context, id string) (api.KeyJSON, error) {
	return c.keyAction(ctx, id, "/suspend", nil)
}

// ResumeKey lifts a suspension.
func (c *Client) ResumeKey(ctx context.Context, id string) (api.KeyJSON, error) {
	return c.keyAction(ctx, id, "/resume", nil)
}

func (c *Client) keyAction(ctx context.Context, id, action string, body any) (api.KeyJSON, error) {
	return call[api.KeyJSON](ctx, c, http.MethodPost, keyPath(id, action), nil, body)
}

// DeleteKey deletes a key.
func (c *Client) DeleteKey(ctx context.Context, id string) error {
	_, err := c.Do(ctx, http.MethodDelete, keyPath(id, ""), nil, nil, nil)
	return err
}

// ReportLeakHash reports a leaked secret by its SHA-256 (hex).
func (c *Client) ReportLeakHash(ctx context.Context, req api.LeakHashRequest) (leaks.Label, error) {
	return call[leaks.Label](ctx, c, http.MethodPost, "/v1/leaks/hash", nil, req)
}

// Usage returns a usage series; q holds the query parameters of GET /v1/usage.
func (c *Client) Usage(ctx context.Context, q url.Values) (api.UsageResponse, error) {
	return call[api.UsageResponse](ctx, c, http.MethodGet, "/v1/usage", q, nil)
}

// Logs returns a page of events; q holds the parameters of GET /v1/logs.
func (c *Client) Logs(ctx context.Context, q url.Values) (api.LogsResponse, error) {
	return call[api.LogsResponse](ctx, c, http.MethodGet, "/v1/logs", q, nil)
}

// Decisions returns detection decisions; q holds the parameters of GET /v1/decisions.
func (c *Client) Decisions(ctx context.Context, q url.Values) (api.DecisionList, error) {
	return call[api.DecisionList](ctx, c, http.MethodGet, "/v1/decisions", q, nil)
}

// Billing returns a period's export in format (json or csv), as the API wrote it.
func (c *Client) Billing(ctx context.Context, period, format string) ([]byte, error) {
	return c.Do(ctx, http.MethodGet, "/v1/billing/"+url.PathEscape(period), url.Values{"format": {format}}, nil, nil)
}

// CloseBilling closes a period and returns its final export (JSON).
func (c *Client) CloseBilling(ctx context.Context, period string) ([]byte, error) {
	return c.Do(ctx, http.MethodPost, "/v1/billing/"+url.PathEscape(period)+"/close", url.Values{"format": {"json"}}, nil, nil)
}
