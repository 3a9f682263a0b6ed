package pillion

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/url"
	"time"
)

// GetSecret returns the secret's keys and values (an empty map when the store has nothing).
func (c *Client) GetSecret(ctx context.Context, store, name string, metadata map[string]string) (map[string]string, error) {
	path := "/v1.0/secrets/" + segment(store) + "/" + segment(name)
	secret := map[string]string{}
	return secret, c.getJSON(ctx, path, metadataQuery(metadata), &secret)
}

// GetBulkSecrets returns every secret the app may read: secret name -> its keys and values.
func (c *Client) GetBulkSecrets(ctx context.Context, store string, metadata map[string]string) (map[string]map[string]string, error) {
	path := "/v1.0/secrets/" + segment(store) + "/bulk"
	secrets := map[string]map[string]string{}
	return secrets, c.getJSON(ctx, path, metadataQuery(metadata), &secrets)
}

func (c *Client) getJSON(ctx context.Context, path string, query url.Values, into any) error {
	r, err := c.do(ctx, call{method: http.MethodGet, path: path, query: query})
	if err != nil {
		return err
	}
	if r.status == http.StatusNoContent {
		return nil
	}
	if err := json.Unmarshal(r.body, into); err != nil {
		return fmt.Errorf("pillion: answer to GET %s: %w", path, err)
	}
	return nil
}

// Metadata is what the sidecar reports about itself (GET /v1.0/metadata).
type Metadata struct {
	ID              string                 `json:"id"`
	RuntimeVersion  string                 `json:"runtimeVersion"`
	EnabledFeatures []string               `json:"enabledFeatures"`
	Components      []ComponentMetadata    `json:"components"`
	Extended        map[string]string      `json:"extended"`
	Subscriptions   []SubscriptionMetadata `json:"subscriptions"`
}

// ComponentMetadata describes a loaded component.
type ComponentMetadata struct {
	Name         string   `json:"name"`
	Type         string   `json:"type"`
	Version      string   `json:"version"`
	Capabilities []string `json:"capabilities"`
}

// SubscriptionMetadata describes an active subscription.
type SubscriptionMetadata struct {
	PubsubName      string            `json:"pubsubname"`
	Topic           string            `json:"topic"`
	Metadata        map[string]string `json:"metadata"`
	Rules           []Rule            `json:"rules"`
	DeadLetterTopic string            `json:"deadLetterTopic"`
	Type            string            `json:"type"`
}

// Rule routes the events that Match (a CEL expression; empty matches all) to Path.
type Rule struct {
	Match string `json:"match,omitempty"`
	Path  string `json:"path"`
}

// GetMetadata returns the sidecar's metadata.
func (c *Client) GetMetadata(ctx context.Context) (*Metadata, error) {
	var metadata Metadata
	if err := c.getJSON(ctx, "/v1.0/metadata", nil, &metadata); err != nil {
		return nil, err
	}
	return &metadata, nil
}

// SetMetadata sets an entry of the sidecar's extended metadata.
func (c *Client) SetMetadata(ctx context.Context, key, value string) error {
	_, err := c.do(ctx, call{
		method: http.MethodPut, path: "/v1.0/metadata/" + segment(key), body: []byte(value), contentType: "text/plain",
	})
	return err
}

// Healthy reports whether the sidecar is fully up, the app included (GET /v1.0/healthz).
func (c *Client) Healthy(ctx context.Context) (bool, error) {
	_, err := c.do(ctx, call{method: http.MethodGet, path: "/v1.0/healthz"})
	if StatusCode(err) != 0 {
		return false, nil
	}
	return err == nil, err
}

// WaitForSidecar polls GET /v1.0/healthz/outbound until the sidecar's components and API are
// up, or ctx ends; give ctx a deadline.
func (c *Client) WaitForSidecar(ctx context.Context) error {
	ticker := time.NewTicker(100 * time.Millisecond)
	defer ticker.Stop()
	for {
		_, err := c.do(ctx, call{method: http.MethodGet, path: "/v1.0/healthz/outbound"})
		if err == nil {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("pillion: sidecar at %s not ready: %w (last error: %v)", c.endpoint, ctx.Err(), err)
		case <-ticker.C:
		}
	}
}
