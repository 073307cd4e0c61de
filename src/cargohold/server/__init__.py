"""The Cargohold server: the aiohttp application, split by plane.

* :mod:`cargohold.server.distribution`: the OCI Distribution routes (the data plane);
* :mod:`cargohold.server.control`: the control API under ``/api/v1`` (the control plane);
* :mod:`cargohold.server.auth`: credentials, tokens, OIDC exchange and the access policy both planes ask;
* :mod:`cargohold.server.http`: request/response plumbing the planes share (bodies, errors, middlewares).

Handlers parse requests and render responses; what they do to stored data goes through
:mod:`cargohold.domain`.
"""
