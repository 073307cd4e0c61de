"""cargohold.storage."""
