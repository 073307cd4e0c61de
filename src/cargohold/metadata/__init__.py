"""cargohold.metadata."""
