// Package pillion is a thin client for the Dapr HTTP API v1.0, as served by the Pillion sidecar
// (or by daprd): state, pub/sub, secrets, metadata and health, plus an http.Handler that receives
// pub/sub deliveries. It uses only the standard library.
//
// Every call takes a context; a non-2xx answer from the sidecar is returned as *Error, which
// carries the HTTP status and daprd's errorCode:
//
//	client := pillion.New(pillion.Options{}) // DAPR_HTTP_PORT and DAPR_API_TOKEN from the environment
//	err := client.SaveState(ctx, "statestore", []pillion.SetItem{{Key: "k", Value: 42}}, nil)
//	var derr *pillion.Error
//	if errors.As(err, &derr) && derr.StatusCode == http.StatusConflict { ... }
package pillion
