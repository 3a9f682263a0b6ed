package pillion

import (
	"encoding/json"
	"errors"
	"net/http"
	"reflect"
	"regexp"
	"testing"
)

func mustGet(t *testing.T, key string) *Item {
	t.Helper()
	item, err := client.GetState(ctx(t), "statestore", key, nil)
	if err != nil {
		t.Fatalf("GetState(%q): %v", key, err)
	}
	return item
}

func TestSaveAndGetState(t *testing.T) {
	key := uniqueKey(t, "order")
	type order struct {
		Item string `json:"item"`
		Qty  int    `json:"qty"`
	}
	if err := client.SaveState(ctx(t), "statestore", []SetItem{{Key: key, Value: order{"book", 2}}}, nil); err != nil {
		t.Fatal(err)
	}
	item := mustGet(t, key)
	var got order
	if err := item.Decode(&got); err != nil {
		t.Fatal(err)
	}
	if got != (order{"book", 2}) || item.ETag == "" || item.Key != key {
		t.Fatalf("got %+v from %+v", got, item)
	}
}

func TestMissingKeyIsNil(t *testing.T) {
	item, err := client.GetState(ctx(t), "statestore", uniqueKey(t, "nothing"), nil)
	if item != nil || err != nil {
		t.Fatalf("got %+v, %v; want nil, nil", item, err)
	}
}

func TestValuesAndEscapedKeysRoundTrip(t *testing.T) {
	key := uniqueKey(t, "a/b c+d?é")
	items := []SetItem{
		{Key: key, Value: "text"},
		{Key: key + "-raw", Value: json.RawMessage(`{"n":[1,2]}`)},
		{Key: key + "-null"},
	}
	if err := client.SaveState(ctx(t), "statestore", items, nil); err != nil {
		t.Fatal(err)
	}
	for k, want := range map[string]string{key: `"text"`, key + "-raw": `{"n":[1,2]}`, key + "-null": `null`} {
		if got := string(mustGet(t, k).Value); got != want {
			t.Errorf("%q: got %s, want %s", k, got, want)
		}
	}
}

func TestStaleETagIsConflict(t *testing.T) {
	key := uniqueKey(t, "k")
	if err := client.SaveState(ctx(t), "statestore", []SetItem{{Key: key, Value: 1}}, nil); err != nil {
		t.Fatal(err)
	}
	first := mustGet(t, key)
	if err := client.SaveState(ctx(t), "statestore", []SetItem{{Key: key, Value: 2, ETag: first.ETag}}, nil); err != nil {
		t.Fatal(err)
	}
	err := client.SaveState(ctx(t), "statestore", []SetItem{{Key: key, Value: 3, ETag: first.ETag}}, nil)
	var derr *Error
	if !errors.As(err, &derr) {
		t.Fatalf("want *Error, got %v", err)
	}
	if derr.StatusCode != http.StatusConflict || derr.ErrorCode != "ERR_STATE_SAVE" {
		t.Fatalf("got %d %s", derr.StatusCode, derr.ErrorCode)
	}
	if got := string(mustGet(t, key).Value); got != "2" {
		t.Fatalf("value after the refused save: %s", got)
	}
}

func TestFirstWriteAndMetadata(t *testing.T) {
	key := uniqueKey(t, "k")
	once := []SetItem{{Key: key, Value: "a", Options: &StateOptions{Concurrency: FirstWrite}}}
	if err := client.SaveState(ctx(t), "statestore", once, nil); err != nil {
		t.Fatal(err)
	}
	if err := client.SaveState(ctx(t), "statestore", once, nil); StatusCode(err) != http.StatusConflict {
		t.Fatalf("second first-write: %v", err)
	}
	ttl := []SetItem{{Key: key + "-ttl", Value: "x"}}
	if err := client.SaveState(ctx(t), "statestore", ttl, map[string]string{"ttlInSeconds": "60"}); err != nil {
		t.Fatal(err)
	}
	expire := mustGet(t, key+"-ttl").Metadata["ttlexpiretime"]
	if !regexp.MustCompile(`^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$`).MatchString(expire) {
		t.Fatalf("ttlexpiretime %q", expire)
	}
}

func TestDeleteState(t *testing.T) {
	key := uniqueKey(t, "k")
	if err := client.SaveState(ctx(t), "statestore", []SetItem{{Key: key, Value: true}}, nil); err != nil {
		t.Fatal(err)
	}
	etag := mustGet(t, key).ETag
	if err := client.DeleteState(ctx(t), "statestore", key, &DeleteOptions{ETag: "not-it"}); ErrorCode(err) != "ERR_STATE_DELETE" {
		t.Fatalf("delete at a wrong ETag: %v", err)
	}
	if err := client.DeleteState(ctx(t), "statestore", key, &DeleteOptions{ETag: etag}); err != nil {
		t.Fatal(err)
	}
	if mustGet(t, key) != nil {
		t.Fatal("still there")
	}
	if err := client.DeleteState(ctx(t), "statestore", key, nil); err != nil {
		t.Fatalf("deleting a missing key: %v", err)
	}
}

func TestGetBulkState(t *testing.T) {
	a, b := uniqueKey(t, "a"), uniqueKey(t, "b")
	items := []SetItem{{Key: a, Value: map[string]int{"n": 1}}, {Key: b, Value: "two"}}
	if err := client.SaveState(ctx(t), "statestore", items, nil); err != nil {
		t.Fatal(err)
	}
	got, err := client.GetBulkState(ctx(t), "statestore", []string{b, "missing", a}, &BulkOptions{Parallelism: 2})
	if err != nil {
		t.Fatal(err)
	}
	var summary [][2]string
	for _, item := range got {
		summary = append(summary, [2]string{item.Key, string(item.Value)})
	}
	want := [][2]string{{b, `"two"`}, {"missing", ""}, {a, `{"n":1}`}}
	if !reflect.DeepEqual(summary, want) || got[0].ETag == "" || got[1].Value != nil {
		t.Fatalf("got %v", got)
	}
}

func TestTransaction(t *testing.T) {
	old, fresh, side := uniqueKey(t, "old"), uniqueKey(t, "new"), uniqueKey(t, "side")
	if err := client.SaveState(ctx(t), "statestore", []SetItem{{Key: old, Value: "old"}}, nil); err != nil {
		t.Fatal(err)
	}
	ops := []Operation{Upsert(SetItem{Key: fresh, Value: map[string]bool{"ok": true}}), Delete(old, "")}
	if err := client.ExecuteTransaction(ctx(t), "statestore", ops, map[string]string{"note": "x"}); err != nil {
		t.Fatal(err)
	}
	if mustGet(t, old) != nil || string(mustGet(t, fresh).Value) != `{"ok":true}` {
		t.Fatal("the transaction was not applied")
	}
	stale := []Operation{Upsert(SetItem{Key: side, Value: 1}), Upsert(SetItem{Key: fresh, Value: 2, ETag: "stale"})}
	err := client.ExecuteTransaction(ctx(t), "statestore", stale, nil)
	if StatusCode(err) != http.StatusInternalServerError || ErrorCode(err) != "ERR_STATE_TRANSACTION" {
		t.Fatalf("stale transaction: %v", err)
	}
	if mustGet(t, side) != nil {
		t.Fatal("part of a failed transaction was applied")
	}
}

func TestQueryState(t *testing.T) {
	kind := uniqueKey(t, "fruit")
	items := []SetItem{
		{Key: kind + "1", Value: map[string]any{"kind": kind, "name": "apple", "rank": 3}},
		{Key: kind + "2", Value: map[string]any{"kind": kind, "name": "pear", "rank": 1}},
	}
	if err := client.SaveState(ctx(t), "statestore", items, nil); err != nil {
		t.Fatal(err)
	}
	query := map[string]any{
		"filter": map[string]any{"EQ": map[string]any{"kind": kind}},
		"sort":   []map[string]string{{"key": "rank", "order": "ASC"}},
		"page":   map[string]any{"limit": 1},
	}
	page, err := client.QueryState(ctx(t), "statestore", query, nil)
	if err != nil {
		t.Fatal(err)
	}
	if len(page.Results) != 1 || page.Results[0].Key != kind+"2" || page.Token == "" {
		t.Fatalf("first page: %+v", page)
	}
	query["page"] = map[string]any{"limit": 1, "token": page.Token}
	if page, err = client.QueryState(ctx(t), "statestore", query, nil); err != nil {
		t.Fatal(err)
	}
	if len(page.Results) != 1 || page.Results[0].Key != kind+"1" {
		t.Fatalf("second page: %+v", page)
	}
	none, err := client.QueryState(ctx(t), "statestore", map[string]any{"filter": map[string]any{"EQ": map[string]any{"kind": "none"}}}, nil)
	if err != nil || len(none.Results) != 0 {
		t.Fatalf("empty query: %+v, %v", none, err)
	}
}

func TestUnknownStoreError(t *testing.T) {
	_, err := client.GetState(ctx(t), "nope", "k", nil)
	var derr *Error
	if !errors.As(err, &derr) {
		t.Fatalf("want *Error, got %v", err)
	}
	if derr.StatusCode != 400 || derr.ErrorCode != "ERR_STATE_STORE_NOT_FOUND" || derr.Message != "state store nope is not found" {
		t.Fatalf("got %+v", derr)
	}
	if len(derr.Details) == 0 {
		t.Fatal("the rich error's details are kept")
	}
	want := "pillion: GET /v1.0/state/nope/k: 400 ERR_STATE_STORE_NOT_FOUND: state store nope is not found"
	if derr.Error() != want {
		t.Fatalf("Error() = %q", derr.Error())
	}
}
