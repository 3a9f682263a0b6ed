"""Pub/sub delivery to the app: subscriptions, retries and dead letters, the app channel."""
