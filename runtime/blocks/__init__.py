"""Building blocks: Dapr semantics over component Protocols, knowing no transport."""
