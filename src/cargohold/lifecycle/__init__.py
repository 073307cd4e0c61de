"""cargohold.lifecycle."""
