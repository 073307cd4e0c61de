"""cargohold.oci."""
