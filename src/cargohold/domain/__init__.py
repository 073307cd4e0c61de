"""The domain layer between the HTTP handlers and the stores: every rule that spans the blob store and the
metadata store lives here, in one callable place (upload sessions, manifests, builds). Never imports
:mod:`cargohold.server` or aiohttp."""
