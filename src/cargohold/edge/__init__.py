"""Where the server meets the network: TLS (:mod:`.tls`), reverse proxies in front of it (:mod:`.proxies`),
request IDs (:mod:`.requestid`) and the log formats that carry them (:mod:`.logs`)."""
