"""cargohold.registry."""
