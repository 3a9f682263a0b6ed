"""The sidecar process: start and stop order, hot reload, and `pillion run`'s app child."""
