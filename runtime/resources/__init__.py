"""Dapr resource files: loading, validation against component schemas, Configuration."""
