"""Request and response plumbing the planes share: bodies, the one error mapping, logs, metrics."""
