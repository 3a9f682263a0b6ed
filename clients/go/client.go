package pillion

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"strconv"
	"strings"
)

const metadataPrefix = "metadata."

// Options configure a Client. The zero value reads the environment, as Dapr's SDKs do.
type Options struct {
	// Endpoint is the sidecar's base URL. Default: DAPR_HTTP_ENDPOINT, else http://Host:Port.
	Endpoint string
	// Host defaults to 127.0.0.1.
	Host string
	// Port defaults to DAPR_HTTP_PORT, else 3500.
	Port int
	// APIToken is sent as dapr-api-token. Default: DAPR_API_TOKEN.
	APIToken string
	// HTTPClient defaults to http.DefaultClient; time limits come from each call's context.
	HTTPClient *http.Client
}

// Client calls one sidecar. It is safe for concurrent use.
type Client struct {
	endpoint string
	token    string
	http     *http.Client
}

// New returns a client for the sidecar that Options (or the environment) names.
func New(opts Options) *Client {
	endpoint := opts.Endpoint
	if endpoint == "" {
		endpoint = os.Getenv("DAPR_HTTP_ENDPOINT")
	}
	if endpoint == "" {
		host := opts.Host
		if host == "" {
			host = "127.0.0.1"
		}
		port := strconv.Itoa(opts.Port)
		if opts.Port == 0 {
			port = os.Getenv("DAPR_HTTP_PORT")
		}
		if port == "" {
			port = "3500"
		}
		endpoint = "http://" + host + ":" + port
	}
	token := opts.APIToken
	if token == "" {
		token = os.Getenv("DAPR_API_TOKEN")
	}
	httpClient := opts.HTTPClient
	if httpClient == nil {
		httpClient = http.DefaultClient
	}
	return &Client{endpoint: strings.TrimRight(endpoint, "/"), token: token, http: httpClient}
}

// Endpoint is the sidecar's base URL.
func (c *Client) Endpoint() string { return c.endpoint }

// segment escapes one path parameter. The sidecar query-unescapes parameters, so "+" must be
// sent as %2B and a space as %20.
func segment(s string) string {
	return strings.ReplaceAll(url.QueryEscape(s), "+", "%20")
}

func metadataQuery(metadata map[string]string) url.Values {
	query := url.Values{}
	for key, value := range metadata {
		query.Set(metadataPrefix+key, value)
	}
	return query
}

func responseMetadata(header http.Header) map[string]string {
	metadata := map[string]string{}
	for name, values := range header {
		lower := strings.ToLower(name)
		if strings.HasPrefix(lower, metadataPrefix) && len(values) > 0 {
			metadata[strings.TrimPrefix(lower, metadataPrefix)] = values[0]
		}
	}
	return metadata
}

type call struct {
	method      string
	path        string
	query       url.Values
	header      http.Header
	body        []byte
	contentType string
}

type reply struct {
	status int
	header http.Header
	body   []byte
}

// do sends one request; a non-2xx answer becomes *Error.
func (c *Client) do(ctx context.Context, req call) (*reply, error) {
	target := c.endpoint + req.path
	if len(req.query) > 0 {
		target += "?" + req.query.Encode()
	}
	var body io.Reader
	if req.body != nil {
		body = bytes.NewReader(req.body)
	}
	httpReq, err := http.NewRequestWithContext(ctx, req.method, target, body)
	if err != nil {
		return nil, err
	}
	for name, values := range req.header {
		httpReq.Header[name] = values
	}
	if req.contentType != "" {
		httpReq.Header.Set("Content-Type", req.contentType)
	}
	if c.token != "" {
		httpReq.Header.Set("dapr-api-token", c.token)
	}
	resp, err := c.http.Do(httpReq)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(resp.Body)
	if err != nil {
		return nil, fmt.Errorf("pillion: reading the answer to %s %s: %w", req.method, req.path, err)
	}
	if resp.StatusCode < 200 || resp.StatusCode > 299 {
		return nil, newError(req.method, req.path, resp.StatusCode, data)
	}
	return &reply{status: resp.StatusCode, header: resp.Header, body: data}, nil
}

func (c *Client) doJSON(ctx context.Context, method, path string, query url.Values, payload any) (*reply, error) {
	body, err := json.Marshal(payload)
	if err != nil {
		return nil, fmt.Errorf("pillion: encoding the request body: %w", err)
	}
	return c.do(ctx, call{method: method, path: path, query: query, body: body, contentType: "application/json"})
}
