"""The Dapr gRPC API (``dapr.proto.runtime.v1.Dapr``) and the gRPC channel to apps (docs/grpc.md)."""
