"""Metrics, tracing, logs and the process resource monitor."""
