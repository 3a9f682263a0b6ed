"""The Dapr HTTP API: wire format in, building-block calls out."""
