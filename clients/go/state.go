package pillion

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
)

// Concurrency and consistency values for StateOptions.
const (
	FirstWrite = "first-write"
	LastWrite  = "last-write"
	Strong     = "strong"
	Eventual   = "eventual"
)

// StateOptions select the store's concurrency and consistency; empty means the store's default.
type StateOptions struct {
	Concurrency string `json:"concurrency,omitempty"`
	Consistency string `json:"consistency,omitempty"`
}

// SetItem is one key to save. Value is encoded with encoding/json (pass a json.RawMessage to
// send JSON you already have); a nil Value is stored as JSON null.
type SetItem struct {
	Key      string            `json:"key"`
	Value    any               `json:"value,omitempty"`
	ETag     string            `json:"etag,omitempty"`
	Metadata map[string]string `json:"metadata,omitempty"`
	Options  *StateOptions     `json:"options,omitempty"`
}

// Item is a stored value as the sidecar returns it.
type Item struct {
	Key string
	// Value is the stored JSON; nil when the key does not exist (bulk get).
	Value json.RawMessage
	ETag  string
	// Metadata comes from the store, e.g. ttlExpireTime. From GetState the keys are response
	// header names, which have no case: "ttlexpiretime".
	Metadata map[string]string
	// Error is a per-key failure reported by bulk get or query.
	Error string
}

// Decode unmarshals the item's value into v.
func (i *Item) Decode(v any) error {
	if i.Value == nil {
		return fmt.Errorf("pillion: key %q has no value", i.Key)
	}
	return json.Unmarshal(i.Value, v)
}

type wireItem struct {
	Key      string            `json:"key"`
	Data     json.RawMessage   `json:"data"`
	ETag     string            `json:"etag"`
	Metadata map[string]string `json:"metadata"`
	Error    string            `json:"error"`
}

func (w wireItem) item() Item {
	return Item{Key: w.Key, Value: w.Data, ETag: w.ETag, Metadata: w.Metadata, Error: w.Error}
}

func statePath(store string) string { return "/v1.0/state/" + segment(store) }

// GetOptions tune GetState.
type GetOptions struct {
	Consistency string
	Metadata    map[string]string
}

// GetState returns the item, or nil (and no error) when the key does not exist.
func (c *Client) GetState(ctx context.Context, store, key string, opts *GetOptions) (*Item, error) {
	if opts == nil {
		opts = &GetOptions{}
	}
	query := metadataQuery(opts.Metadata)
	if opts.Consistency != "" {
		query.Set("consistency", opts.Consistency)
	}
	r, err := c.do(ctx, call{method: http.MethodGet, path: statePath(store) + "/" + segment(key), query: query})
	if err != nil {
		return nil, err
	}
	if r.status == http.StatusNoContent {
		return nil, nil
	}
	value := r.body
	if len(value) == 0 {
		value = json.RawMessage("null")
	}
	return &Item{Key: key, Value: value, ETag: r.header.Get("ETag"), Metadata: responseMetadata(r.header)}, nil
}

// SaveState saves items; metadata goes to every item (and wins over each item's own).
func (c *Client) SaveState(ctx context.Context, store string, items []SetItem, metadata map[string]string) error {
	if items == nil {
		items = []SetItem{}
	}
	_, err := c.doJSON(ctx, http.MethodPost, statePath(store), metadataQuery(metadata), items)
	return err
}

// DeleteOptions tune DeleteState. With ETag set, the key is deleted only at that ETag.
type DeleteOptions struct {
	ETag        string
	Concurrency string
	Consistency string
	Metadata    map[string]string
}

// DeleteState deletes a key; deleting a missing key without an ETag is not an error.
func (c *Client) DeleteState(ctx context.Context, store, key string, opts *DeleteOptions) error {
	if opts == nil {
		opts = &DeleteOptions{}
	}
	query := metadataQuery(opts.Metadata)
	if opts.Concurrency != "" {
		query.Set("concurrency", opts.Concurrency)
	}
	if opts.Consistency != "" {
		query.Set("consistency", opts.Consistency)
	}
	header := http.Header{}
	if opts.ETag != "" {
		header.Set("If-Match", opts.ETag)
	}
	_, err := c.do(ctx, call{method: http.MethodDelete, path: statePath(store) + "/" + segment(key), query: query, header: header})
	return err
}

// BulkOptions tune GetBulkState.
type BulkOptions struct {
	Parallelism int
	Metadata    map[string]string
}

// GetBulkState reads several keys; the items come in the order of keys, with a nil Value for
// keys that do not exist.
func (c *Client) GetBulkState(ctx context.Context, store string, keys []string, opts *BulkOptions) ([]Item, error) {
	if opts == nil {
		opts = &BulkOptions{}
	}
	if keys == nil {
		keys = []string{}
	}
	body := struct {
		Keys        []string          `json:"keys"`
		Parallelism int               `json:"parallelism,omitempty"`
		Metadata    map[string]string `json:"metadata,omitempty"`
	}{keys, opts.Parallelism, opts.Metadata}
	r, err := c.doJSON(ctx, http.MethodPost, statePath(store)+"/bulk", nil, body)
	if err != nil {
		return nil, err
	}
	var wire []wireItem
	if err := json.Unmarshal(r.body, &wire); err != nil {
		return nil, fmt.Errorf("pillion: bulk get answer: %w", err)
	}
	items := make([]Item, len(wire))
	for i, w := range wire {
		items[i] = w.item()
	}
	return items, nil
}

// Operation is one step of a transaction; build it with Upsert or Delete.
type Operation struct {
	Operation string  `json:"operation"`
	Request   SetItem `json:"request"`
}

// Upsert saves item as part of a transaction.
func Upsert(item SetItem) Operation { return Operation{Operation: "upsert", Request: item} }

// Delete deletes key as part of a transaction, only at etag when it is not empty.
func Delete(key, etag string) Operation {
	return Operation{Operation: "delete", Request: SetItem{Key: key, ETag: etag}}
}

// ExecuteTransaction applies all operations or none. An ETag mismatch fails the whole
// transaction with 500 ERR_STATE_TRANSACTION.
func (c *Client) ExecuteTransaction(ctx context.Context, store string, ops []Operation, metadata map[string]string) error {
	if ops == nil {
		ops = []Operation{}
	}
	body := struct {
		Operations []Operation       `json:"operations"`
		Metadata   map[string]string `json:"metadata,omitempty"`
	}{ops, metadata}
	_, err := c.doJSON(ctx, http.MethodPost, statePath(store)+"/transaction", nil, body)
	return err
}

// QueryResponse is one page of query results.
type QueryResponse struct {
	Results []Item
	// Token asks for the next page; empty on the last one.
	Token    string
	Metadata map[string]string
}

// QueryState runs a state query (alpha API): query is encoded with encoding/json, e.g.
// map[string]any{"filter": map[string]any{"EQ": map[string]any{"city": "Oslo"}}}.
func (c *Client) QueryState(ctx context.Context, store string, query any, metadata map[string]string) (*QueryResponse, error) {
	path := "/v1.0-alpha1/state/" + segment(store) + "/query"
	r, err := c.doJSON(ctx, http.MethodPost, path, metadataQuery(metadata), query)
	if err != nil {
		return nil, err
	}
	page := &QueryResponse{Results: []Item{}}
	if r.status == http.StatusNoContent {
		return page, nil
	}
	var wire struct {
		Results  []wireItem        `json:"results"`
		Token    string            `json:"token"`
		Metadata map[string]string `json:"metadata"`
	}
	if err := json.Unmarshal(r.body, &wire); err != nil {
		return nil, fmt.Errorf("pillion: query answer: %w", err)
	}
	for _, w := range wire.Results {
		page.Results = append(page.Results, w.item())
	}
	page.Token, page.Metadata = wire.Token, wire.Metadata
	return page, nil
}
