// Command fulfilment ships the orders that checkout publishes on the topic "orders".
//
// Priority orders reach their own route through a routing rule; an order that cannot be shipped
// is answered DROP, so the sidecar moves it to the dead-letter topic "orders-dead", where this
// app records why. A shipped order is updated in the shared state store (with its ETag, so a
// concurrent writer is never overwritten) and announced on "shipments".
package main

import (
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log"
	"net"
	"net/http"
	"os"
	"os/signal"
	"regexp"
	"strconv"
	"syscall"
	"time"

	"pillion"
)

const (
	ordersTopic     = "orders"
	deadLetterTopic = "orders-dead"
	shipmentsTopic  = "shipments"
	apiKeySecret    = "shipping-api-key"
)

var (
	stateStore  = env("STATE_STORE", "statestore")
	pubsubName  = env("PUBSUB", "pubsub")
	secretStore = env("SECRET_STORE", "localsecrets")
	validID     = regexp.MustCompile(`^[A-Za-z0-9_.-]{1,64}$`)
)

func env(name, fallback string) string {
	if value := os.Getenv(name); value != "" {
		return value
	}
	return fallback
}

// order is what checkout publishes.
type order struct {
	ID       string `json:"id"`
	Item     string `json:"item"`
	Qty      int    `json:"qty"`
	Priority bool   `json:"priority"`
}

// shipment is what fulfilment publishes on "shipments".
type shipment struct {
	OrderID  string `json:"orderId"`
	Route    string `json:"route"`
	Carrier  string `json:"carrier"`
	Tracking string `json:"tracking"`
	// Label is signed with the carrier's API key, which only this app can read.
	Label string `json:"label"`
}

// readOrder decodes an event's data and says what makes it impossible to ship, if anything.
func readOrder(event *pillion.TopicEvent) (order, string) {
	var o order
	if err := event.Decode(&o); err != nil {
		return o, "not an order: " + err.Error()
	}
	switch {
	case !validID.MatchString(o.ID):
		return o, "missing or invalid id"
	case o.Item == "":
		return o, "missing item"
	case o.Qty <= 0:
		return o, fmt.Sprintf("qty must be a positive integer, got %d", o.Qty)
	}
	return o, ""
}

type fulfilment struct {
	dapr   *pillion.Client
	apiKey []byte
}

func (f *fulfilment) label(orderID string) string {
	mac := hmac.New(sha256.New, f.apiKey)
	mac.Write([]byte(orderID))
	return hex.EncodeToString(mac.Sum(nil))[:16]
}

// update applies change to the stored order under its ETag, reading again when another writer
// got there first. change returns false to leave the order as it is.
func (f *fulfilment) update(ctx context.Context, key string, change func(map[string]any) bool) (map[string]any, error) {
	for attempt := 0; attempt < 10; attempt++ {
		item, err := f.dapr.GetState(ctx, stateStore, key, nil)
		if err != nil {
			return nil, err
		}
		if item == nil {
			return nil, fmt.Errorf("%s is not in the state store", key)
		}
		record := map[string]any{}
		if err := item.Decode(&record); err != nil {
			return nil, fmt.Errorf("%s: %w", key, err)
		}
		if !change(record) {
			return record, nil
		}
		err = f.dapr.SaveState(ctx, stateStore, []pillion.SetItem{{Key: key, Value: record, ETag: item.ETag}}, nil)
		if pillion.StatusCode(err) == http.StatusConflict {
			continue // somebody else wrote it since we read it
		}
		return record, err
	}
	return nil, fmt.Errorf("%s: gave up after 10 ETag conflicts", key)
}

// ship handles one order on the given route ("standard" or "priority").
func (f *fulfilment) ship(route, carrier string) pillion.Handler {
	return func(ctx context.Context, event *pillion.TopicEvent) pillion.Status {
		o, problem := readOrder(event)
		if problem != "" {
			log.Printf("order %q cannot be shipped (%s): to %s", o.ID, problem, deadLetterTopic)
			return pillion.Drop
		}
		label := f.label(o.ID)
		out := shipment{OrderID: o.ID, Route: route, Carrier: carrier, Tracking: carrier[:2] + "-" + label[:8], Label: label}
		record, err := f.update(ctx, "order-"+o.ID, func(r map[string]any) bool {
			if r["status"] == "shipped" {
				return false // a redelivery: announce the shipment again, change nothing
			}
			r["status"], r["route"], r["carrier"] = "shipped", route, carrier
			r["tracking"], r["label"], r["shippedAt"] = out.Tracking, out.Label, time.Now().UTC().Format(time.RFC3339)
			return true
		})
		if err != nil {
			log.Printf("order %s: %v (will retry)", o.ID, err)
			return pillion.Retry
		}
		if r, ok := record["route"].(string); ok {
			out.Route = r // as first shipped, should this be a redelivery
		}
		if err := f.dapr.Publish(ctx, pubsubName, shipmentsTopic, out, nil); err != nil {
			log.Printf("order %s: publishing the shipment: %v (will retry)", o.ID, err)
			return pillion.Retry
		}
		log.Printf("order %s shipped: %d x %s, %s route, %s %s", o.ID, o.Qty, o.Item, out.Route, carrier, out.Tracking)
		return pillion.Success
	}
}

// deadLetter records an order that could not be shipped, and marks it rejected.
func (f *fulfilment) deadLetter(ctx context.Context, event *pillion.TopicEvent) pillion.Status {
	o, problem := readOrder(event)
	if problem == "" {
		problem = "delivery failed too often"
	}
	id := o.ID
	if !validID.MatchString(id) {
		id = "event-" + event.ID
	}
	record := map[string]any{
		"orderId": id, "reason": problem, "topic": event.Topic, "eventId": event.ID,
		"data": event.Data, "deadAt": time.Now().UTC().Format(time.RFC3339),
	}
	err := f.dapr.SaveState(ctx, stateStore, []pillion.SetItem{{Key: "dead-" + id, Value: record,
		Options: &pillion.StateOptions{Concurrency: pillion.FirstWrite}}}, nil)
	if err != nil && pillion.StatusCode(err) != http.StatusConflict { // 409: recorded before
		log.Printf("dead letter %s: %v (will retry)", id, err)
		return pillion.Retry
	}
	_, err = f.update(ctx, "order-"+id, func(r map[string]any) bool {
		if r["status"] == "rejected" || r["status"] == "shipped" {
			return false
		}
		r["status"], r["reason"] = "rejected", problem
		return true
	})
	if err != nil {
		log.Printf("dead letter %s: the order stays as it was: %v", id, err)
	}
	log.Printf("order %s rejected: %s", id, problem)
	return pillion.Success
}

// unitPrices are in cents; an item not listed costs the default.
var unitPrices = map[string]int{"book": 1250, "pen": 199, "lamp": 3490}

const defaultUnitPrice = 999

// quote answers GET /quote?item=book&qty=2&priority=true with the price and the carrier fulfilment
// would use. Checkout asks for it by service invocation before it accepts an order; the caller's
// app id arrives in the dapr-caller-app-id header the sidecar adds.
func quote(w http.ResponseWriter, r *http.Request) {
	query := r.URL.Query()
	qty, err := strconv.Atoi(query.Get("qty"))
	item := query.Get("item")
	w.Header().Set("Content-Type", "application/json")
	if err != nil || qty < 1 || item == "" {
		w.WriteHeader(http.StatusBadRequest)
		_ = json.NewEncoder(w).Encode(map[string]string{"error": "item and a positive qty are needed"})
		return
	}
	unit, ok := unitPrices[item]
	if !ok {
		unit = defaultUnitPrice
	}
	carrier, shipping := "ground", 500
	if query.Get("priority") == "true" {
		carrier, shipping = "express", 1500
	}
	log.Printf("quote for %s: %d x %s by %s", r.Header.Get("dapr-caller-app-id"), qty, item, carrier)
	_ = json.NewEncoder(w).Encode(map[string]any{
		"item": item, "qty": qty, "carrier": carrier, "currency": "EUR",
		"totalCents": unit*qty + shipping,
	})
}

func main() {
	log.SetFlags(0)
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()

	dapr := pillion.New(pillion.Options{})
	startup, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	if err := dapr.WaitForSidecar(startup); err != nil {
		log.Fatalf("the sidecar is not there: %v", err)
	}
	secret, err := dapr.GetSecret(startup, secretStore, apiKeySecret, nil)
	if err != nil || secret[apiKeySecret] == "" {
		log.Fatalf("cannot read the secret %s from %s: %v", apiKeySecret, secretStore, err)
	}
	f := &fulfilment{dapr: dapr, apiKey: []byte(secret[apiKeySecret])}

	sub := pillion.NewSubscriber()
	for _, s := range []struct {
		sub     pillion.Subscription
		handler pillion.Handler
	}{
		{pillion.Subscription{PubsubName: pubsubName, Topic: ordersTopic, Route: "/orders/priority",
			Match: "event.data.priority == true", DeadLetterTopic: deadLetterTopic}, f.ship("priority", "express")},
		{pillion.Subscription{PubsubName: pubsubName, Topic: ordersTopic, Route: "/orders"}, f.ship("standard", "ground")},
		{pillion.Subscription{PubsubName: pubsubName, Topic: deadLetterTopic, Route: "/orders/dead"}, f.deadLetter},
	} {
		if err := sub.Subscribe(s.sub, s.handler); err != nil {
			log.Fatal(err)
		}
	}

	listener, err := net.Listen("tcp", "127.0.0.1:"+env("APP_PORT", "3002"))
	if err != nil {
		log.Fatal(err)
	}
	mux := http.NewServeMux()
	mux.HandleFunc("/quote", quote) // called by checkout through service invocation
	mux.Handle("/", sub)
	server := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	go func() {
		<-ctx.Done()
		shutdown, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = server.Shutdown(shutdown)
	}()
	log.Printf("fulfilment listening on %s (API key %d characters)", listener.Addr(), len(f.apiKey))
	if err := server.Serve(listener); !errors.Is(err, http.ErrServerClosed) {
		log.Fatal(err)
	}
	log.Print("fulfilment stopped")
}
