"""The OCI Distribution API under ``/v2/`` (the data plane): routing, blobs, uploads, manifests, listings.

Never imports the control plane (:mod:`cargohold.server.control`); tests/test_layering.py checks it.
"""
