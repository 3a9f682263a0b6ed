package pillion

import (
	"context"
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"net/http"
)

// PublishOptions tune Publish and PublishRaw.
type PublishOptions struct {
	// ContentType defaults to application/octet-stream for []byte, text/plain for string and
	// application/json for anything else (encoded with encoding/json).
	ContentType string
	// Metadata is sent as metadata.* query parameters (ttlInSeconds, cloudevent.id, ...).
	Metadata map[string]string
}

func publishPath(pubsub, topic string) string {
	return "/v1.0/publish/" + segment(pubsub) + "/" + segment(topic)
}

// encodeData gives the bytes and default content type of a message's data.
func encodeData(data any) ([]byte, string, error) {
	switch v := data.(type) {
	case json.RawMessage:
		return v, "application/json", nil
	case []byte:
		return v, "application/octet-stream", nil
	case string:
		return []byte(v), "text/plain", nil
	default:
		body, err := json.Marshal(v)
		if err != nil {
			return nil, "", fmt.Errorf("pillion: encoding the message: %w", err)
		}
		return body, "application/json", nil
	}
}

// Publish sends data to topic; the sidecar wraps it in a CloudEvent.
func (c *Client) Publish(ctx context.Context, pubsub, topic string, data any, opts *PublishOptions) error {
	if opts == nil {
		opts = &PublishOptions{}
	}
	body, contentType, err := encodeData(data)
	if err != nil {
		return err
	}
	if opts.ContentType != "" {
		contentType = opts.ContentType
	}
	_, err = c.do(ctx, call{
		method: http.MethodPost, path: publishPath(pubsub, topic), query: metadataQuery(opts.Metadata),
		body: body, contentType: contentType,
	})
	return err
}

// PublishCloudEvent sends an event that already is a CloudEvent (a struct or map with id,
// source, type, specversion, data...); the sidecar keeps its fields.
func (c *Client) PublishCloudEvent(ctx context.Context, pubsub, topic string, event any, metadata map[string]string) error {
	body, _, err := encodeData(event)
	if err != nil {
		return err
	}
	return c.Publish(ctx, pubsub, topic, json.RawMessage(body), &PublishOptions{
		ContentType: "application/cloudevents+json", Metadata: metadata,
	})
}

// PublishRaw sends data without a CloudEvent envelope (rawPayload=true): subscribers get the
// bytes as they were.
func (c *Client) PublishRaw(ctx context.Context, pubsub, topic string, data any, opts *PublishOptions) error {
	raw := PublishOptions{Metadata: map[string]string{"rawPayload": "true"}}
	if opts != nil {
		raw.ContentType = opts.ContentType
		for key, value := range opts.Metadata {
			raw.Metadata[key] = value
		}
	}
	return c.Publish(ctx, pubsub, topic, data, &raw)
}

// BulkEntry is one message of PublishBulk. EntryID defaults to a new UUID and ContentType as
// for Publish; []byte events are sent base64-encoded as application/octet-stream.
type BulkEntry struct {
	EntryID     string
	Event       any
	ContentType string
	Metadata    map[string]string
}

// FailedEntry names an entry of PublishBulk that was not published.
type FailedEntry struct {
	EntryID string `json:"entryId"`
	Error   string `json:"error"`
}

type wireBulkEntry struct {
	EntryID     string            `json:"entryId"`
	Event       any               `json:"event"`
	ContentType string            `json:"contentType"`
	Metadata    map[string]string `json:"metadata,omitempty"`
}

// PublishBulk publishes several messages in one call. A partial failure is not an error: the
// entries that were not published are returned.
func (c *Client) PublishBulk(ctx context.Context, pubsub, topic string, entries []BulkEntry, metadata map[string]string) ([]FailedEntry, error) {
	wire := make([]wireBulkEntry, len(entries))
	for i, entry := range entries {
		w := wireBulkEntry{EntryID: entry.EntryID, Event: entry.Event, ContentType: entry.ContentType, Metadata: entry.Metadata}
		if w.EntryID == "" {
			w.EntryID = newUUID()
		}
		var defaultType string
		switch v := entry.Event.(type) {
		case json.RawMessage:
			defaultType = "application/json"
		case []byte:
			w.Event, defaultType = base64.StdEncoding.EncodeToString(v), "application/octet-stream"
		case string:
			defaultType = "text/plain"
		default:
			defaultType = "application/json"
		}
		if w.ContentType == "" {
			w.ContentType = defaultType
		}
		wire[i] = w
	}
	path := "/v1.0-alpha1/publish/bulk/" + segment(pubsub) + "/" + segment(topic)
	_, err := c.doJSON(ctx, http.MethodPost, path, metadataQuery(metadata), wire)
	if e, ok := err.(*Error); ok && e.StatusCode == http.StatusInternalServerError {
		var partial struct {
			FailedEntries []FailedEntry `json:"failedEntries"`
		}
		if json.Unmarshal(e.Body, &partial) == nil && partial.FailedEntries != nil {
			return partial.FailedEntries, nil
		}
	}
	if err != nil {
		return nil, err
	}
	return []FailedEntry{}, nil
}

func newUUID() string {
	var b [16]byte
	if _, err := rand.Read(b[:]); err != nil {
		panic("pillion: crypto/rand failed: " + err.Error())
	}
	b[6] = b[6]&0x0f | 0x40
	b[8] = b[8]&0x3f | 0x80
	return fmt.Sprintf("%x-%x-%x-%x-%x", b[0:4], b[4:6], b[6:8], b[8:10], b[10:16])
}
