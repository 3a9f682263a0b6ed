"""State store components."""
