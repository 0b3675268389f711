"""Where the node's TLS certificate is: the one a service's own listener serves with too.

The edge-server makes or checks the pair (edge_server.security.tls) before it serves; a
service that opens a listener of its own (the container-manager's Docker API gateway)
only needs to know where it is.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

TLS_DIR = "tls"
CERT_FILE = "server.crt"
KEY_FILE = "server.key"


@dataclass(frozen=True)
class NodeTls:
    """The node's certificate (chain) and private key, as PEM files."""

    cert: Path
    key: Path


def node_tls(settings: Mapping[str, Any]) -> NodeTls | None:
    """The node's certificate files when the process serves HTTPS (EDGE_TLS), else None."""
    if not settings.get("EDGE_TLS"):
        return None
    cert, key = settings.get("EDGE_TLS_CERT"), settings.get("EDGE_TLS_KEY")
    if cert is not None and key is not None:
        return NodeTls(Path(cert), Path(key))
    directory = Path(settings["EDGE_DATA_DIR"]) / TLS_DIR
    return NodeTls(directory / CERT_FILE, directory / KEY_FILE)
