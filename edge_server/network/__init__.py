"""Network mode: the services tree learnt from the bus, the proxy, the merged OpenAPI, joining."""
