"""cargohold.cli."""
