"""cargohold.client."""
