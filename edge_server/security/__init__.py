"""Security: the account and token API, and the node's TLS certificate."""
