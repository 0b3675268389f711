"""Announcements: a process serving services on its own tells the network where they are.

On every (re)connect it publishes, retained, `<root>/<node>/<slug>/announce` for each of
its services: what the service is, its operations, and the base URL its API is reached
at. A clean shutdown leaves the announcement in place; the status topic says offline.
"""

from __future__ import annotations

import functools
import logging
import platform
import socket
from collections.abc import Iterable
from typing import Any

from pyedge.operations import utc_now
from pyedge.service import ServiceRuntime

logger = logging.getLogger(__name__)

ANNOUNCE = "announce"


def default_advertise_url(port: int, tls: bool = False) -> str:
    """The base URL others reach this process at when EDGE_ADVERTISE_URL is not set."""
    return f"{'https' if tls else 'http'}://{socket.gethostname()}:{port}"


def announcement(
    runtime: ServiceRuntime, url: str, tls_fingerprint: str | None = None
) -> dict[str, Any]:
    """The announce message of a service served at the base URL `url`.

    `tls_fingerprint` (SHA-256 of the HTTPS certificate, hex) lets an edge-server check a
    self-signed certificate by pinning it: the announcement comes from the service's own
    broker account, which no other node can write with.
    """
    service = runtime.service
    base = url.rstrip("/")
    message = {
        "slug": service.slug,
        "title": service.title,
        "version": service.version,
        "description": service.description,
        "node": runtime.node,
        "machine": platform.machine(),
        "url": base,
        "openapi": f"{base}/api/openapi.json",
        "ops": [
            {
                "name": op.name,
                "kind": op.kind.value,
                "role": op.role.label,
                "description": op.description,
            }
            for op in service.operations.values()
        ],
        "announced_at": utc_now(),
    }
    if tls_fingerprint is not None:
        message["tls_fingerprint"] = tls_fingerprint
    return message


class Announcer:
    """Publishes the announcement of each of `runtimes` on every connect of their bus."""

    def __init__(
        self, runtimes: Iterable[ServiceRuntime], url: str, tls_fingerprint: str | None = None
    ) -> None:
        self.runtimes = list(runtimes)
        self.url = url.rstrip("/")
        self.tls_fingerprint = tls_fingerprint

    def start(self) -> None:
        """Announce on every (re)connect from now on (call before the bus connects)."""
        for runtime in self.runtimes:
            runtime.bus.on_connect(functools.partial(self.announce, runtime))

    def announce(self, runtime: ServiceRuntime) -> None:
        """Publish `runtime`'s announcement, retained."""
        runtime.bus.publish_json(
            runtime.topic(ANNOUNCE),
            announcement(runtime, self.url, self.tls_fingerprint),
            retain=True,
        )
        logger.info("announced %s at %s", runtime.slug, self.url)
