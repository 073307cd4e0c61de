"""The control API under ``/api/v1`` (the control plane): projects, builds, tokens, trust relationships,
lifecycle, storage, server-side blob copies."""
