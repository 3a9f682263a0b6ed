package pillion

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"
)

// inbox records what the Subscriber handed to the handlers, per handler name.
type inbox struct {
	mu     sync.Mutex
	events map[string][]*TopicEvent
	calls  map[string]int
}

var received = &inbox{events: map[string][]*TopicEvent{}, calls: map[string]int{}}

func (in *inbox) handler(name string, status func(call int) Status) Handler {
	return func(_ context.Context, event *TopicEvent) Status {
		in.mu.Lock()
		defer in.mu.Unlock()
		in.calls[name+"|"+event.ID]++
		verdict := status(in.calls[name+"|"+event.ID])
		if verdict == Success || verdict == "" {
			in.events[name] = append(in.events[name], event)
		}
		return verdict
	}
}

func always(s Status) func(int) Status { return func(int) Status { return s } }

// wait returns the events of handler name once there are n whose ID has the given prefix.
func (in *inbox) wait(t *testing.T, name, idPrefix string, n int) []*TopicEvent {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		in.mu.Lock()
		var matching []*TopicEvent
		for _, e := range in.events[name] {
			if strings.HasPrefix(e.ID, idPrefix) || strings.HasPrefix(string(e.Data), `"`+idPrefix) {
				matching = append(matching, e)
			}
		}
		in.mu.Unlock()
		if len(matching) >= n {
			return matching
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: %d of %d events with %q after 10 s", name, len(matching), n, idPrefix)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func registerSubscriptions(s *Subscriber) {
	must := func(err error) {
		if err != nil {
			panic(err)
		}
	}
	must(s.Subscribe(Subscription{PubsubName: "pubsub", Topic: "orders"}, received.handler("orders", always(Success))))
	must(s.Subscribe(Subscription{PubsubName: "pubsub", Topic: "orders", Match: `event.type == "widget.created"`},
		received.handler("widgets", always(Success))))
	must(s.Subscribe(Subscription{PubsubName: "pubsub", Topic: "raw", Metadata: map[string]string{"rawPayload": "true"}},
		received.handler("raw", always(Success))))
	must(s.Subscribe(Subscription{PubsubName: "pubsub", Topic: "flaky", Route: "/flaky"},
		received.handler("flaky", func(call int) Status {
			if call == 1 {
				return Retry
			}
			return Success
		})))
	must(s.Subscribe(Subscription{PubsubName: "pubsub", Topic: "doomed", DeadLetterTopic: "poison"},
		received.handler("doomed", always(Drop))))
	must(s.Subscribe(Subscription{PubsubName: "pubsub", Topic: "poison"}, received.handler("poison", always(Success))))
}

// An ID (through the cloudevent.id override) that names this test's events.
func eventID(t *testing.T, n int) map[string]string {
	return map[string]string{"cloudevent.id": fmt.Sprintf("%s-%d", t.Name(), n)}
}

func TestPublishJSON(t *testing.T) {
	type order struct {
		Item string `json:"item"`
	}
	err := client.Publish(ctx(t), "pubsub", "orders", order{"book"}, &PublishOptions{Metadata: eventID(t, 1)})
	if err != nil {
		t.Fatal(err)
	}
	event := received.wait(t, "orders", t.Name(), 1)[0]
	var got order
	if err := event.Decode(&got); err != nil || got.Item != "book" {
		t.Fatalf("data %s: %v", event.Data, err)
	}
	if event.Type != "com.dapr.event.sent" || event.Source != "gotest" || event.Topic != "orders" ||
		event.PubsubName != "pubsub" || event.DataContentType != "application/json" || event.SpecVersion != "1.0" {
		t.Fatalf("event %+v", event)
	}
	if ct := event.Header.Get("Content-Type"); ct != "application/cloudevents+json" {
		t.Fatalf("delivered as %q", ct)
	}
}

func TestPublishText(t *testing.T) {
	if err := client.Publish(ctx(t), "pubsub", "orders", "hello", &PublishOptions{Metadata: eventID(t, 1)}); err != nil {
		t.Fatal(err)
	}
	event := received.wait(t, "orders", t.Name(), 1)[0]
	if string(event.Data) != `"hello"` || event.DataContentType != "text/plain" {
		t.Fatalf("event %+v", event)
	}
}

func TestPublishCloudEventIsRoutedByMatch(t *testing.T) {
	event := map[string]any{
		"id": t.Name(), "source": "factory", "type": "widget.created", "specversion": "1.0",
		"datacontenttype": "application/json", "data": map[string]int{"size": 3},
	}
	if err := client.PublishCloudEvent(ctx(t), "pubsub", "orders", event, nil); err != nil {
		t.Fatal(err)
	}
	got := received.wait(t, "widgets", t.Name(), 1)[0]
	if got.Source != "factory" || string(got.Data) != `{"size":3}` {
		t.Fatalf("event %+v", got)
	}
	received.mu.Lock()
	defer received.mu.Unlock()
	for _, e := range received.events["orders"] {
		if e.ID == t.Name() {
			t.Fatal("the widget event also reached the default route")
		}
	}
}

func TestPublishRaw(t *testing.T) {
	payload := []byte("\x00raw " + t.Name())
	if err := client.PublishRaw(ctx(t), "pubsub", "raw", payload, nil); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		received.mu.Lock()
		var found bool
		for _, e := range received.events["raw"] {
			found = found || string(e.RawData) == string(payload)
		}
		received.mu.Unlock()
		if found {
			return
		}
		if time.Now().After(deadline) {
			t.Fatal("the raw payload did not arrive")
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func TestPublishBulk(t *testing.T) {
	object, _ := json.Marshal(map[string]string{"test": t.Name()})
	array, _ := json.Marshal([]any{1, t.Name()})
	entries := []BulkEntry{
		{Event: map[string]string{"test": t.Name()}},
		{Event: t.Name() + "-text"},
		{EntryID: "third", Event: json.RawMessage(array)},
	}
	failed, err := client.PublishBulk(ctx(t), "pubsub", "orders", entries, nil)
	if err != nil || len(failed) != 0 {
		t.Fatalf("PublishBulk: %v, %v", failed, err)
	}
	received.wait(t, "orders", t.Name()+"-text", 1)
	deadline := time.Now().Add(10 * time.Second)
	for {
		received.mu.Lock()
		var data []string
		for _, e := range received.events["orders"] {
			data = append(data, string(e.Data))
		}
		received.mu.Unlock()
		sort.Strings(data)
		joined := strings.Join(data, " ")
		if strings.Contains(joined, string(object)) && strings.Contains(joined, string(array)) {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("bulk entries missing; got %s", joined)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func TestRetryIsRedelivered(t *testing.T) {
	if err := client.Publish(ctx(t), "pubsub", "flaky", "again", &PublishOptions{Metadata: eventID(t, 1)}); err != nil {
		t.Fatal(err)
	}
	received.wait(t, "flaky", t.Name(), 1)
	received.mu.Lock()
	defer received.mu.Unlock()
	if calls := received.calls["flaky|"+t.Name()+"-1"]; calls != 2 {
		t.Fatalf("handler called %d times, want 2 (RETRY then SUCCESS)", calls)
	}
}

func TestDropGoesToDeadLetterTopic(t *testing.T) {
	if err := client.Publish(ctx(t), "pubsub", "doomed", "bad", &PublishOptions{Metadata: eventID(t, 1)}); err != nil {
		t.Fatal(err)
	}
	event := received.wait(t, "poison", t.Name(), 1)[0]
	if event.Topic != "doomed" {
		t.Fatalf("dead letter keeps the original topic; got %q", event.Topic)
	}
}

func TestPublishErrors(t *testing.T) {
	err := client.Publish(ctx(t), "nope", "orders", "x", nil)
	if StatusCode(err) != http.StatusNotFound || ErrorCode(err) != "ERR_PUBSUB_NOT_FOUND" {
		t.Fatalf("unknown pubsub: %v", err)
	}
	_, err = client.PublishBulk(ctx(t), "nope", "orders", []BulkEntry{{Event: "x"}}, nil)
	if ErrorCode(err) != "ERR_PUBSUB_NOT_FOUND" {
		t.Fatalf("unknown pubsub, bulk: %v", err)
	}
}

func TestSubscriberAnswers(t *testing.T) {
	s := NewSubscriber()
	s.AppAPIToken = "app-token"
	if err := s.Subscribe(Subscription{PubsubName: "p", Topic: "t", Route: "/t"}, received.handler("unit", always(Success))); err != nil {
		t.Fatal(err)
	}
	if err := s.Subscribe(Subscription{PubsubName: "p", Topic: "t"}, received.handler("unit", always(Success))); err == nil {
		t.Fatal("a second handler without Match for one topic is refused")
	}
	serve := func(method, path, token, body string) *httptest.ResponseRecorder {
		r := httptest.NewRequest(method, path, strings.NewReader(body))
		if token != "" {
			r.Header.Set("dapr-api-token", token)
		}
		w := httptest.NewRecorder()
		s.ServeHTTP(w, r)
		return w
	}
	if w := serve("GET", "/dapr/subscribe", "", ""); w.Code != http.StatusUnauthorized {
		t.Fatalf("without the app token: %d", w.Code)
	}
	w := serve("GET", "/dapr/subscribe", "app-token", "")
	want := `[{"pubsubname":"p","topic":"t","routes":{"rules":[],"default":"/t"}}]`
	if w.Code != 200 || strings.TrimSpace(w.Body.String()) != want {
		t.Fatalf("discovery: %d %s", w.Code, w.Body)
	}
	if w := serve("POST", "/t", "app-token", "not json"); w.Code != 200 || !strings.Contains(w.Body.String(), "DROP") {
		t.Fatalf("a body that is not a CloudEvent: %d %s", w.Code, w.Body)
	}
	if w := serve("POST", "/other", "app-token", "{}"); w.Code != http.StatusNotFound {
		t.Fatalf("unknown route: %d", w.Code)
	}
}
