"""Secret store components."""
