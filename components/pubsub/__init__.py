"""Pub/sub broker components."""
