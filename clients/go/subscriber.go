package pillion

import (
	"context"
	"crypto/subtle"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"log"
	"net/http"
	"os"
	"regexp"
	"sync"
)

// Status is a handler's verdict on a delivery.
type Status string

const (
	// Success acknowledges the event.
	Success Status = "SUCCESS"
	// Retry asks for a redelivery (after retries run out, the dead-letter topic gets it).
	Retry Status = "RETRY"
	// Drop discards the event (to the dead-letter topic, if one is set).
	Drop Status = "DROP"
)

// TopicEvent is one delivery: the CloudEvent the sidecar posted to the app.
type TopicEvent struct {
	ID              string
	Source          string
	Type            string
	SpecVersion     string
	DataContentType string
	Subject         string
	Topic           string
	PubsubName      string
	// Data is the CloudEvent's data member as JSON (a JSON string for text data).
	Data json.RawMessage
	// RawData holds the decoded bytes when the event came with data_base64 (raw payloads).
	RawData []byte
	// CloudEvent holds every member, extensions included.
	CloudEvent map[string]json.RawMessage
	Header     http.Header
}

// Decode unmarshals the event's data into v.
func (e *TopicEvent) Decode(v any) error {
	if e.Data == nil {
		return fmt.Errorf("pillion: event %s has no JSON data", e.ID)
	}
	return json.Unmarshal(e.Data, v)
}

// Handler handles one event; an empty Status counts as Success.
type Handler func(ctx context.Context, event *TopicEvent) Status

// Subscription says which events a handler gets.
type Subscription struct {
	PubsubName string
	Topic      string
	// Route is the app path the sidecar posts to; generated under /dapr/events/ when empty.
	Route string
	// Match is a CEL expression over event (e.g. `event.type == "order"`); several
	// subscriptions to one topic are checked in the order they were added, and the one
	// without Match gets what none of the others matched.
	Match           string
	DeadLetterTopic string
	Metadata        map[string]string
}

type topicEntry struct {
	pubsub, topic   string
	rules           []Rule
	defaultRoute    string
	deadLetterTopic string
	metadata        map[string]string
}

// Subscriber is an http.Handler for the app side of pub/sub: it answers GET /dapr/subscribe
// with its subscriptions and calls the handler of each delivery. Mount it at "/dapr/" (and at
// any custom Route) or serve it as the whole app.
type Subscriber struct {
	// AppAPIToken, when set, must arrive as dapr-api-token. NewSubscriber reads APP_API_TOKEN.
	AppAPIToken string
	// ErrorLog receives handler panics and bad deliveries; nil means the log package's default.
	ErrorLog *log.Logger

	mu       sync.RWMutex
	topics   []*topicEntry
	handlers map[string]Handler
}

// NewSubscriber returns a Subscriber with no subscriptions.
func NewSubscriber() *Subscriber {
	return &Subscriber{AppAPIToken: os.Getenv("APP_API_TOKEN"), handlers: map[string]Handler{}}
}

var unsafeRouteChars = regexp.MustCompile(`[^A-Za-z0-9_.-]+`)

// Subscribe registers handler for the events sub describes. Subscribe before the sidecar asks
// for the subscriptions (it does once, when the app port opens).
func (s *Subscriber) Subscribe(sub Subscription, handler Handler) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.handlers == nil {
		s.handlers = map[string]Handler{}
	}
	route := sub.Route
	if route == "" {
		route = fmt.Sprintf("/dapr/events/%s/%s/%d", unsafeRouteChars.ReplaceAllString(sub.PubsubName, "_"),
			unsafeRouteChars.ReplaceAllString(sub.Topic, "_"), len(s.handlers))
	}
	if _, taken := s.handlers[route]; taken {
		return fmt.Errorf("pillion: route %s is already subscribed", route)
	}
	var entry *topicEntry
	for _, t := range s.topics {
		if t.pubsub == sub.PubsubName && t.topic == sub.Topic {
			entry = t
		}
	}
	if entry == nil {
		entry = &topicEntry{pubsub: sub.PubsubName, topic: sub.Topic, metadata: map[string]string{}}
		s.topics = append(s.topics, entry)
	}
	if sub.Match == "" {
		if entry.defaultRoute != "" {
			return fmt.Errorf("pillion: %s/%s already has a handler without Match", sub.PubsubName, sub.Topic)
		}
		entry.defaultRoute = route
	} else {
		entry.rules = append(entry.rules, Rule{Match: sub.Match, Path: route})
	}
	if sub.DeadLetterTopic != "" {
		entry.deadLetterTopic = sub.DeadLetterTopic
	}
	for key, value := range sub.Metadata {
		entry.metadata[key] = value
	}
	s.handlers[route] = handler
	return nil
}

type wireRoutes struct {
	Rules   []Rule `json:"rules"`
	Default string `json:"default,omitempty"`
}

type wireSubscription struct {
	PubsubName      string            `json:"pubsubname"`
	Topic           string            `json:"topic"`
	Routes          wireRoutes        `json:"routes"`
	DeadLetterTopic string            `json:"deadLetterTopic,omitempty"`
	Metadata        map[string]string `json:"metadata,omitempty"`
}

func (s *Subscriber) subscriptions() []wireSubscription {
	s.mu.RLock()
	defer s.mu.RUnlock()
	out := make([]wireSubscription, 0, len(s.topics))
	for _, t := range s.topics {
		rules := append([]Rule{}, t.rules...)
		out = append(out, wireSubscription{
			PubsubName: t.pubsub, Topic: t.topic, Routes: wireRoutes{Rules: rules, Default: t.defaultRoute},
			DeadLetterTopic: t.deadLetterTopic, Metadata: t.metadata,
		})
	}
	return out
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(v)
}

func (s *Subscriber) logf(format string, args ...any) {
	if s.ErrorLog != nil {
		s.ErrorLog.Printf(format, args...)
	} else {
		log.Printf(format, args...)
	}
}

// ServeHTTP answers GET /dapr/subscribe and the deliveries to subscribed routes; anything
// else is a 404.
func (s *Subscriber) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	s.mu.RLock()
	handler, subscribed := s.handlers[r.URL.Path]
	s.mu.RUnlock()
	discovery := r.Method == http.MethodGet && r.URL.Path == "/dapr/subscribe"
	if !discovery && !(subscribed && r.Method == http.MethodPost) {
		http.NotFound(w, r)
		return
	}
	if s.AppAPIToken != "" && subtle.ConstantTimeCompare([]byte(r.Header.Get("dapr-api-token")), []byte(s.AppAPIToken)) != 1 {
		writeJSON(w, http.StatusUnauthorized, map[string]string{"message": "invalid app api token"})
		return
	}
	if discovery {
		writeJSON(w, http.StatusOK, s.subscriptions())
		return
	}
	event, err := readEvent(r)
	if err != nil {
		// Redelivering bytes that cannot be read as a CloudEvent cannot help.
		s.logf("pillion: dropping a delivery to %s: %v", r.URL.Path, err)
		writeJSON(w, http.StatusOK, map[string]Status{"status": Drop})
		return
	}
	writeJSON(w, http.StatusOK, map[string]Status{"status": s.call(r.Context(), handler, event)})
}

func (s *Subscriber) call(ctx context.Context, handler Handler, event *TopicEvent) (status Status) {
	defer func() {
		if p := recover(); p != nil {
			s.logf("pillion: handler for %s panicked: %v", event.Topic, p)
			status = Retry
		}
	}()
	switch status = handler(ctx, event); status {
	case "":
		return Success
	case Success, Retry, Drop:
		return status
	default:
		s.logf("pillion: handler for %s returned unknown status %q: retrying", event.Topic, status)
		return Retry
	}
}

func readEvent(r *http.Request) (*TopicEvent, error) {
	body, err := io.ReadAll(r.Body)
	if err != nil {
		return nil, err
	}
	var members map[string]json.RawMessage
	if err := json.Unmarshal(body, &members); err != nil {
		return nil, fmt.Errorf("not a JSON object: %w", err)
	}
	text := func(name string) string {
		var s string
		_ = json.Unmarshal(members[name], &s)
		return s
	}
	event := &TopicEvent{
		ID: text("id"), Source: text("source"), Type: text("type"), SpecVersion: text("specversion"),
		DataContentType: text("datacontenttype"), Subject: text("subject"), Topic: text("topic"),
		PubsubName: text("pubsubname"), Data: members["data"], CloudEvent: members, Header: r.Header,
	}
	if encoded, ok := members["data_base64"]; ok {
		var b64 string
		if err := json.Unmarshal(encoded, &b64); err != nil {
			return nil, fmt.Errorf("data_base64 is not a string: %w", err)
		}
		if event.RawData, err = base64.StdEncoding.DecodeString(b64); err != nil {
			return nil, fmt.Errorf("data_base64: %w", err)
		}
	}
	return event, nil
}
