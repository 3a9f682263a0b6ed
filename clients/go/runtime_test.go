package pillion

import (
	"context"
	"net/http"
	"reflect"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"
)

func TestSecrets(t *testing.T) {
	secret, err := client.GetSecret(ctx(t), "localsecrets", "db-password", nil)
	if err != nil || !reflect.DeepEqual(secret, map[string]string{"db-password": "hunter2"}) {
		t.Fatalf("GetSecret: %v, %v", secret, err)
	}
	all, err := client.GetBulkSecrets(ctx(t), "localsecrets", nil)
	want := map[string]map[string]string{
		"db-password": {"db-password": "hunter2"},
		"api:key":     {"api:key": "k-123"},
	}
	if err != nil || !reflect.DeepEqual(all, want) {
		t.Fatalf("GetBulkSecrets: %v, %v", all, err)
	}
	if _, err := client.GetSecret(ctx(t), "localsecrets", "nope", nil); ErrorCode(err) != "ERR_SECRET_GET" {
		t.Fatalf("missing secret: %v", err)
	}
	if _, err := client.GetSecret(ctx(t), "nostore", "x", nil); StatusCode(err) != http.StatusUnauthorized {
		t.Fatalf("unknown store: %v", err)
	}
}

func TestMetadata(t *testing.T) {
	if err := client.SetMetadata(ctx(t), "owner", "go-tests"); err != nil {
		t.Fatal(err)
	}
	metadata, err := client.GetMetadata(ctx(t))
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, c := range metadata.Components {
		names = append(names, c.Name+":"+c.Type)
	}
	sort.Strings(names)
	want := []string{"localsecrets:secretstores.local.file", "pubsub:pubsub.in-memory", "statestore:state.in-memory"}
	if metadata.ID != "gotest" || !reflect.DeepEqual(names, want) || metadata.Extended["owner"] != "go-tests" {
		t.Fatalf("got %+v", metadata)
	}
	topics := map[string]string{}
	for _, s := range metadata.Subscriptions {
		topics[s.Topic] = s.Type
	}
	if topics["orders"] != "PROGRAMMATIC" {
		t.Fatalf("subscriptions: %+v", metadata.Subscriptions)
	}
}

func TestHealth(t *testing.T) {
	if err := client.WaitForSidecar(ctx(t)); err != nil {
		t.Fatal(err)
	}
	if healthy, err := client.Healthy(ctx(t)); !healthy || err != nil {
		t.Fatalf("Healthy: %v, %v", healthy, err)
	}
	short, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	err := New(Options{Port: 1}).WaitForSidecar(short)
	if err == nil || !strings.Contains(err.Error(), "not ready") {
		t.Fatalf("WaitForSidecar on a closed port: %v", err)
	}
}

func TestEnvironment(t *testing.T) {
	t.Setenv("DAPR_HTTP_ENDPOINT", "")
	t.Setenv("DAPR_HTTP_PORT", strconv.Itoa(sidecarPort))
	if m, err := New(Options{}).GetMetadata(ctx(t)); err != nil || m.ID != "gotest" {
		t.Fatalf("from DAPR_HTTP_PORT: %v, %v", m, err)
	}
	t.Setenv("DAPR_HTTP_PORT", "1")
	t.Setenv("DAPR_HTTP_ENDPOINT", sidecarURL+"/")
	if m, err := New(Options{}).GetMetadata(ctx(t)); err != nil || m.ID != "gotest" {
		t.Fatalf("from DAPR_HTTP_ENDPOINT: %v, %v", m, err)
	}
}

func TestCancelledContext(t *testing.T) {
	cancelled, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := client.GetState(cancelled, "statestore", "k", nil); err == nil || StatusCode(err) != 0 {
		t.Fatalf("want a context error, got %v", err)
	}
}

func TestAPIToken(t *testing.T) {
	// The sidecar of this package runs without a token; a token-guarded one is started here.
	t.Setenv("DAPR_API_TOKEN", "s3cret")
	sidecar, err := startSidecar(0)
	if err != nil {
		t.Fatal(err)
	}
	defer sidecar.stop()
	guarded := New(Options{Port: sidecar.port})
	if err := guarded.SaveState(ctx(t), "statestore", []SetItem{{Key: "k", Value: 1}}, nil); err != nil {
		t.Fatalf("with DAPR_API_TOKEN: %v", err)
	}
	_, err = New(Options{Port: sidecar.port, APIToken: "wrong"}).GetState(ctx(t), "statestore", "k", nil)
	e, ok := err.(*Error)
	if !ok || e.StatusCode != http.StatusUnauthorized || e.ErrorCode != "" || e.Message != "invalid api token" {
		t.Fatalf("wrong token: %#v", err)
	}
}
