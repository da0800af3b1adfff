// Package client is the Go client of glimpse-agent's HTTP API: lookups,
// long-polls, zones, topology, the providers API, and Watch, which follows
// addresses over the websocket push API through reconnects and agent
// restarts. The wire types are package api's.
//
// Every call takes a context first; a Client is safe for concurrent use.
package client

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/gorilla/websocket"

	"github.com/rugby110/glimpse/api"
)

// DefaultAddr is the agent's default -http.addr.
const DefaultAddr = "127.0.0.1:5960"

// EnvAddr names the environment variable that gives the agent's address
// when New is given none.
const EnvAddr = "GLIMPSE_HTTP_ADDR"

// Client talks to one glimpse-agent.
type Client struct {
	base   string // http://host:port
	hc     *http.Client
	dialer *websocket.Dialer
	token  string
}

// Option configures a Client.
type Option func(*Client)

// WithHTTPClient makes the client send its requests with hc.
func WithHTTPClient(hc *http.Client) Option {
	return func(c *Client) { c.hc = hc }
}

// WithToken sends token as a bearer token with provider writes: the
// agent takes writes over TCP only with a token of its -providers.tokens
// file.
func WithToken(token string) Option {
	return func(c *Client) { c.token = token }
}

// WithSocket sends every request through the agent's providers socket
// (-providers.socket) instead of TCP: there the agent knows the caller's
// user, and writes need no token.
func WithSocket(path string) Option {
	return func(c *Client) {
		dial := func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", path)
		}
		c.hc = &http.Client{Transport: &http.Transport{DialContext: dial}}
		c.dialer = &websocket.Dialer{NetDialContext: dial, HandshakeTimeout: 10 * time.Second}
	}
}

// New returns a client of the agent at addr ("host:port" or
// "http://host:port"); empty means $GLIMPSE_HTTP_ADDR, else DefaultAddr.
func New(addr string, opts ...Option) (*Client, error) {
	if addr == "" {
		addr = os.Getenv(EnvAddr)
	}
	if addr == "" {
		addr = DefaultAddr
	}
	if !strings.Contains(addr, "://") {
		addr = "http://" + addr
	}
	u, err := url.Parse(addr)
	if err != nil || u.Scheme != "http" || u.Host == "" || (u.Path != "" && u.Path != "/") {
		return nil, fmt.Errorf("agent address %q: want host:port or http://host:port", addr)
	}
	c := &Client{
		base:   "http://" + u.Host,
		hc:     &http.Client{},
		dialer: &websocket.Dialer{HandshakeTimeout: 10 * time.Second},
	}
	for _, o := range opts {
		o(c)
	}
	return c, nil
}

// Error is an error answer of the agent: its status and message.
type Error struct {
	StatusCode int
	Message    string
}

func (e *Error) Error() string {
	return fmt.Sprintf("glimpse-agent: %d %s: %s", e.StatusCode, http.StatusText(e.StatusCode), e.Message)
}

// Lookup returns the instances of address (api.ParseAddress) whose health
// health admits: "passing" (the default, for ""), "warning", "critical"
// or "any".
func (c *Client) Lookup(ctx context.Context, address, health string) (*api.Lookup, error) {
	return c.lookup(ctx, address, health, 0, 0)
}

// LookupWait is a long-poll: it returns once the lookup's index is above
// index, or when wait (0: the agent's default, 5 minutes) ends, with the
// unchanged index. Pass the index of each answer to the next call, also
// when it went down (the agent restarted); index 0 answers at once.
func (c *Client) LookupWait(ctx context.Context, address, health string, index uint64, wait time.Duration) (*api.Lookup, error) {
	return c.lookup(ctx, address, health, index, wait)
}

func (c *Client) lookup(ctx context.Context, address, health string, index uint64, wait time.Duration) (*api.Lookup, error) {
	if _, err := api.ParseAddress(address); err != nil {
		return nil, err
	}
	q := url.Values{}
	if health != "" {
		q.Set("health", health)
	}
	if index > 0 {
		q.Set("index", strconv.FormatUint(index, 10))
		if wait > 0 {
			q.Set("wait", wait.String())
		}
	}
	var out api.Lookup
	return &out, c.do(ctx, http.MethodGet, "/v1/lookup/"+address, q, nil, &out)
}

// Zones returns the agent's zones and their sync state.
func (c *Client) Zones(ctx context.Context) (*api.Zones, error) {
	var out api.Zones
	return &out, c.do(ctx, http.MethodGet, "/v1/zones", nil, nil, &out)
}

// Topology returns the products of zone ("": the agent's own) and the
// hierarchy of those the agent holds.
func (c *Client) Topology(ctx context.Context, zone string) (*api.Topology, error) {
	q := url.Values{}
	if zone != "" {
		q.Set("zone", zone)
	}
	var out api.Topology
	return &out, c.do(ctx, http.MethodGet, "/v1/topology", q, nil, &out)
}

// Providers lists the providers the agent holds.
func (c *Client) Providers(ctx context.Context) ([]api.ProviderSummary, error) {
	var out []api.ProviderSummary
	return out, c.do(ctx, http.MethodGet, "/v1/providers", nil, nil, &out)
}

// Provider returns the recorded state of one provider.
func (c *Client) Provider(ctx context.Context, name string) (*api.ProviderBody, error) {
	var out api.ProviderBody
	return &out, c.do(ctx, http.MethodGet, "/v1/providers/"+url.PathEscape(name), nil, nil, &out)
}

// PutProvider states the whole set of instances provider name runs on the
// agent's host; the agent makes its Consul agent match.
func (c *Client) PutProvider(ctx context.Context, name string, body *api.ProviderBody) (*api.ProviderPut, error) {
	var out api.ProviderPut
	return &out, c.do(ctx, http.MethodPut, "/v1/providers/"+url.PathEscape(name), nil, body, &out)
}

// DeleteProvider removes a provider and its instances.
func (c *Client) DeleteProvider(ctx context.Context, name string) (*api.ProviderDeleted, error) {
	var out api.ProviderDeleted
	return &out, c.do(ctx, http.MethodDelete, "/v1/providers/"+url.PathEscape(name), nil, nil, &out)
}

// do sends one request and decodes a 200's JSON body into out; any other
// status is an *Error.
func (c *Client) do(ctx context.Context, method, path string, q url.Values, in, out any) error {
	u := c.base + path
	if len(q) > 0 {
		u += "?" + q.Encode()
	}
	var body io.Reader
	if in != nil {
		b, err := json.Marshal(in)
		if err != nil {
			return err
		}
		body = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, u, body)
	if err != nil {
		return err
	}
	if in != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	if c.token != "" && (method == http.MethodPut || method == http.MethodDelete) {
		req.Header.Set("Authorization", "Bearer "+c.token)
	}
	resp, err := c.hc.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	raw, err := io.ReadAll(io.LimitReader(resp.Body, 64<<20))
	if err != nil {
		return fmt.Errorf("%s %s: %w", method, path, err)
	}
	if resp.StatusCode != http.StatusOK {
		var e api.Error
		if json.Unmarshal(raw, &e) != nil || e.Error == "" {
			e.Error = strings.TrimSpace(string(raw))
		}
		return &Error{StatusCode: resp.StatusCode, Message: e.Error}
	}
	if err := json.Unmarshal(raw, out); err != nil {
		return fmt.Errorf("%s %s: the agent's answer: %w", method, path, err)
	}
	return nil
}

// IsStatus reports whether err is an agent's answer with that status.
func IsStatus(err error, status int) bool {
	var e *Error
	return errors.As(err, &e) && e.StatusCode == status
}
