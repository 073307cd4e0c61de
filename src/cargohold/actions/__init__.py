"""cargohold.actions."""
