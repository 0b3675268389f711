"""The services tree of network mode: services serving on their own, learnt from the bus.

A service started with `pyedge serve` announces itself retained on
`<root>/<node>/<slug>/announce` and keeps `<root>/<node>/<slug>/status` `online` (its last
will says `offline`). The registry holds what those messages say; the edge-server proxies
to what it holds (edge_server.network.proxy) and lists it in /api/services and /api/nodes.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

logger = logging.getLogger(__name__)

EXTENSION = "pyedge.remote"
ONLINE = "online"
OFFLINE = "offline"


class AmbiguousService(LookupError):
    """A slug served by several nodes: the caller must name the node."""

    def __init__(self, slug: str, nodes: list[str]) -> None:
        super().__init__(
            f"{slug} runs on several nodes ({', '.join(nodes)}): use /api/nodes/<node>/{slug}/..."
        )
        self.slug = slug
        self.nodes = nodes


@dataclass(frozen=True, kw_only=True)
class RemoteService:
    """A service serving on its own, as its last announcement and status describe it."""

    node: str
    slug: str
    title: str
    version: str
    description: str
    machine: str
    # The base URL the edge-server reaches it at; its API is under <url>/api/<slug>.
    url: str
    # Always `<url>/api/openapi.json`, whatever is passed: never a URL a node names (an
    # announcement's `openapi` must be exactly that, or the announcement is refused).
    openapi_url: str = ""
    ops: tuple[Mapping[str, Any], ...]
    # SHA-256 (hex) of its HTTPS certificate, pinned instead of a CA check when announced.
    tls_fingerprint: str | None = None
    # When it announced (its own clock, as it said); a re-announce changes it.
    announced_at: str
    status: str = ONLINE
    # Why it is offline: its will, a failed health check, or a clean shutdown.
    reason: str = ""
    # time.monotonic() of the last sign of life (announce, online status, health check).
    last_seen: float = field(default_factory=time.monotonic)
    # time.monotonic() when it went offline; None while online.
    offline_since: float | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "openapi_url", f"{self.url.rstrip('/')}/api/openapi.json")

    @property
    def key(self) -> tuple[str, str]:
        """(node, slug): unique on the broker."""
        return (self.node, self.slug)

    @property
    def online(self) -> bool:
        """True while it is reachable as far as the registry knows."""
        return self.status == ONLINE


ChangeCallback = Callable[[RemoteService | None, RemoteService | None], None]


class RemoteRegistry:
    """Remote services by (node, slug); thread-safe, fed by the bus and health checks."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._services: dict[tuple[str, str], RemoteService] = {}
        # Called with (old, new) after every change; new is None when one is forgotten.
        self.on_change: list[ChangeCallback] = []

    def services(self) -> list[RemoteService]:
        """Every known remote service, sorted by node then slug."""
        with self._lock:
            return [self._services[key] for key in sorted(self._services)]

    def get(self, node: str, slug: str) -> RemoteService | None:
        """The service `slug` on `node`, if known."""
        with self._lock:
            return self._services.get((node, slug))

    def find(self, slug: str, prefer_node: str | None = None) -> RemoteService | None:
        """The one node's `slug`; `prefer_node`'s when it has it; AmbiguousService if several."""
        with self._lock:
            found = [s for (node, name), s in sorted(self._services.items()) if name == slug]
        if not found:
            return None
        for service in found:
            if service.node == prefer_node:
                return service
        if len(found) > 1:
            raise AmbiguousService(slug, [s.node for s in found])
        return found[0]

    def nodes(self) -> dict[str, list[RemoteService]]:
        """The remote services grouped by node."""
        grouped: dict[str, list[RemoteService]] = {}
        for service in self.services():
            grouped.setdefault(service.node, []).append(service)
        return grouped

    def put(self, service: RemoteService) -> None:
        """Add or replace a service (an announcement)."""
        self._change(service.key, lambda _old: service)

    def mark(self, node: str, slug: str, status: str, reason: str = "") -> None:
        """Set a known service online or offline, with why."""

        def update(old: RemoteService | None) -> RemoteService | None:
            if old is None or (old.status == status and old.reason == reason):
                return old
            now = time.monotonic()
            if status == ONLINE:
                return replace(old, status=ONLINE, reason="", last_seen=now, offline_since=None)
            since = old.offline_since if old.offline_since is not None else now
            return replace(old, status=OFFLINE, reason=reason, offline_since=since)

        self._change((node, slug), update)

    def seen(self, node: str, slug: str) -> None:
        """Note a sign of life (a passed health check)."""
        with self._lock:
            old = self._services.get((node, slug))
            if old is not None:
                self._services[(node, slug)] = replace(old, last_seen=time.monotonic())

    def forget(self, node: str, slug: str | None = None) -> None:
        """Drop one service, or every service of `node`."""
        with self._lock:
            keys = [k for k in self._services if k[0] == node and slug in (None, k[1])]
        for key in keys:
            self._change(key, lambda _old: None)

    def _change(
        self,
        key: tuple[str, str],
        update: Callable[[RemoteService | None], RemoteService | None],
    ) -> None:
        with self._lock:
            old = self._services.get(key)
            new = update(old)
            if new is old:
                return
            if new is None:
                del self._services[key]
            else:
                self._services[key] = new
        for callback in list(self.on_change):
            try:
                callback(old, new)
            except Exception:
                logger.exception("services tree change callback failed")
