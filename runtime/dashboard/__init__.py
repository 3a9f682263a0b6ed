"""``pillion dashboard``: a web page over every sidecar on the machine (docs/dashboard.md)."""
