"""Pluggable backends for Pillion's building blocks, one module per Dapr component type."""
