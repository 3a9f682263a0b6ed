"""Pillion: a Dapr-compatible capability sidecar."""

__version__ = "0.1.0"
