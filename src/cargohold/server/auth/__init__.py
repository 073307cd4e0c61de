"""Who is calling and what may they do: credentials, registry tokens, OIDC exchange, trust relationships,
rate limits, and the access policy both planes ask before any handler runs."""
