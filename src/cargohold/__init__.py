"""Cargohold: a self-hostable ephemeral container registry for CI."""

__version__ = "0.1.0"
