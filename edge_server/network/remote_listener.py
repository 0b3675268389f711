"""Fills the services tree (network.remote) from the bus, and health-checks what it holds.

An edge-server whose EDGE_ROLE is `node` listens to the announcements and statuses of its
own node id; a `hub` to those of every node on the broker; `solo` to none. Retained
messages rebuild the tree when the edge-server restarts. Every EDGE_REMOTE_HEALTH_INTERVAL
each remote service's `<url>/api/health` is fetched: a failure marks it offline with the
reason, a success brings a service back that only the health check had marked offline.
A service offline for longer than EDGE_REMOTE_GRACE is forgotten.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import re
import socket
import threading
import time
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any
from urllib.parse import urlsplit

import marshmallow as ma
import paho.mqtt.client as mqtt
from flask import Flask

from edge_server.network.remote import EXTENSION, OFFLINE, ONLINE, RemoteRegistry, RemoteService
from edge_server.network.remote_http import FetchError, fetch_json
from pyedge import ServiceHost
from pyedge.operations import OpState
from pyedge.service import topic_root

logger = logging.getLogger(__name__)

LISTENER_EXTENSION = "pyedge.remote_listener"
ROLES_LISTENING = ("node", "hub")
# Health checks run in a few threads, so that one hung service does not delay the others.
CHECK_THREADS = 4
MAX_CHECK_TIMEOUT_S = 3.0
# A health report is small.
MAX_HEALTH_BYTES = 64 * 1024
# Statuses of services not announced (yet) are kept, up to this many (the oldest go).
MAX_PENDING_STATUSES = 256
# A host name's labels (underscores too: container names have them).
LABEL = r"[A-Za-z0-9_](?:[A-Za-z0-9_-]*[A-Za-z0-9_])?"
HOSTNAME = re.compile(rf"^{LABEL}(?:\.{LABEL})*\.?$")
LIVE_OFFLINE = "status offline: stopped, or lost its broker connection"
RETAINED_OFFLINE = "status offline (retained on the broker)"
# What a published session's state may be (pyedge.operations.OpState).
OP_STATES = frozenset(state.value for state in OpState)


class OpSchema(ma.Schema):
    """An operation as an announcement lists it."""

    class Meta:
        unknown = ma.EXCLUDE

    name = ma.fields.String(required=True, validate=ma.validate.Length(min=1))
    kind = ma.fields.String(required=True, validate=ma.validate.OneOf(("task", "process")))
    role = ma.fields.String(load_default="operator")
    description = ma.fields.String(load_default="")


class AnnouncementSchema(ma.Schema):
    """`<root>/<node>/<slug>/announce`, as pyedge.announce publishes it."""

    class Meta:
        unknown = ma.EXCLUDE

    slug = ma.fields.String(required=True)
    title = ma.fields.String(required=True)
    version = ma.fields.String(required=True)
    description = ma.fields.String(load_default="")
    node = ma.fields.String(required=True)
    machine = ma.fields.String(load_default="")
    # Checked by announced_url: it is where the edge-server will send requests.
    url = ma.fields.String(required=True)
    openapi = ma.fields.String(load_default=None)
    ops = ma.fields.List(ma.fields.Nested(OpSchema), load_default=list)
    announced_at = ma.fields.String(required=True)
    tls_fingerprint = ma.fields.String(
        load_default=None, validate=ma.validate.Regexp(r"^[0-9a-f]{64}\Z")
    )


def _host_address(host: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """The IP address `host` spells, in any form the resolver takes (`127.1`, `0x7f000001`)."""
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        try:
            address = ipaddress.IPv4Address(socket.inet_aton(host))
        except (OSError, ValueError):
            return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def announced_url(url: str, *, loopback_ok: bool) -> str:
    """An announcement's base URL, without a trailing slash; ValueError saying why it is refused.

    Only http(s), with a host, without userinfo, query or fragment, and no path but `/`.
    A loopback or unspecified host (`localhost`, 127.0.0.0/8, ::1, 0.0.0.0, ::) only when
    `loopback_ok`: a service of this edge-server's own node. A name that merely resolves to
    such an address is not caught here.
    """
    parts = urlsplit(url)
    if parts.scheme.lower() not in ("http", "https"):
        raise ValueError(f"url {url!r} is not http(s)")
    if "@" in parts.netloc:
        raise ValueError(f"url {url!r} has userinfo")
    if "?" in url or "#" in url:
        raise ValueError(f"url {url!r} has a query or fragment")
    if parts.path not in ("", "/"):
        raise ValueError(f"url {url!r} has a path: announce the base URL")
    host = parts.hostname or ""
    try:
        parts.port  # noqa: B018  (raises on a bad port)
    except ValueError as exc:
        raise ValueError(f"url {url!r}: {exc}") from None
    address = _host_address(host)
    if address is None and not HOSTNAME.match(host):
        raise ValueError(f"url {url!r} has no valid host")
    name = host.lower().rstrip(".")
    loopback = name == "localhost" or name.endswith(".localhost")
    if address is not None:
        loopback = address.is_loopback or address.is_unspecified
    if loopback and not loopback_ok:
        raise ValueError(f"url {url!r} is a loopback or unspecified address of another node")
    return f"{parts.scheme.lower()}://{parts.netloc}"


class RemoteListener:
    """Feeds a RemoteRegistry from the host's bus and checks the health of what it holds."""

    def __init__(
        self,
        registry: RemoteRegistry,
        host: ServiceHost,
        *,
        root: str,
        nodes: str,
        interval: float,
        grace: float,
    ) -> None:
        self.registry = registry
        self.host = host
        self.root = root
        # The node level of the subscriptions: this node's id, or `+` for every node.
        self.nodes = nodes
        self.interval = interval
        self.grace = grace
        self.timeout = min(MAX_CHECK_TIMEOUT_S, interval)
        self._lock = threading.Lock()
        # The last status seen of every known (node, slug), with why when offline; and of
        # those not announced yet (a few: an announcement may come after its status).
        self._statuses: dict[tuple[str, str], tuple[str, str]] = {}
        self._pending: dict[tuple[str, str], tuple[str, str]] = {}
        # Services offline only because their health check failed (checked on, and back
        # online when it passes); those offline by their status wait for `online`.
        self._health_failed: set[tuple[str, str]] = set()
        self._due: dict[tuple[str, str], float] = {}
        self._checking: set[tuple[str, str]] = set()
        # What each service's own /api/health said of it, and its operations' states.
        self._reported: dict[tuple[str, str], dict[str, str]] = {}
        self._ops: dict[tuple[str, str], dict[str, dict[str, Any]]] = {}
        self._shadowed: set[tuple[str, str]] = set()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="remote-health", daemon=True)
        self._pool = ThreadPoolExecutor(CHECK_THREADS, thread_name_prefix="remote-check")
        registry.on_change.append(self._changed)

    # -- the bus ---------------------------------------------------------------------

    def start(self) -> None:
        """Subscribe (statuses first, so retained ones precede announcements) and check."""
        bus = self.host.bus
        assert bus is not None, "the host has no bus yet"
        base = f"{self.root}/{self.nodes}/+"
        bus.subscribe(f"{base}/status", self._on_status)
        bus.subscribe(f"{base}/announce", self._on_announce)
        bus.subscribe(f"{base}/ops/+", self._on_op)
        self._thread.start()

    def stop(self) -> None:
        """Stop the health checks (the host's close hook)."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(5)
        self._pool.shutdown(wait=False, cancel_futures=True)

    def _key(self, topic: str) -> tuple[str, str, list[str]] | None:
        prefix = f"{self.root}/"
        if not topic.startswith(prefix):
            return None
        levels = topic[len(prefix) :].split("/")
        if len(levels) < 3:
            return None
        return levels[0], levels[1], levels[2:]

    def _local(self, node: str, slug: str) -> bool:
        """True when this process serves node/slug itself: local wins, logged once."""
        if node != self.host.node or slug not in self.host.runtimes:
            return False
        if (node, slug) not in self._shadowed:
            self._shadowed.add((node, slug))
            logger.warning(
                "%s/%s is announced by another process but runs in this one: serving the local one",
                node,
                slug,
            )
        return True

    def _on_status(self, message: mqtt.MQTTMessage) -> None:
        parsed = self._key(message.topic)
        payload = message.payload.decode(errors="replace")
        if parsed is None or not payload:
            return  # an empty retained status was cleared (a node left)
        if payload not in (ONLINE, OFFLINE):
            self.host.metrics.reject(
                "status", message.topic, message.payload, "expected online or offline", log=logger
            )
            return
        node, slug, _rest = parsed
        key = (node, slug)
        reason = "" if payload == ONLINE else RETAINED_OFFLINE if message.retain else LIVE_OFFLINE
        known = self.registry.get(node, slug) is not None
        with self._lock:
            if known:
                self._statuses[key] = (payload, reason)
            else:
                self._pending.pop(key, None)
                self._pending[key] = (payload, reason)
                while len(self._pending) > MAX_PENDING_STATUSES:
                    del self._pending[next(iter(self._pending))]
            # Online: it reconnected; offline: its status says so, no health check needed.
            self._health_failed.discard(key)
            self._due.pop(key, None)
        if known:
            self.registry.mark(node, slug, payload, reason)

    def _on_announce(self, message: mqtt.MQTTMessage) -> None:
        parsed = self._key(message.topic)
        if parsed is None:
            return
        node, slug, _rest = parsed
        if not message.payload:
            # The retained announcement was cleared (a node left): forget the service.
            self.registry.forget(node, slug)
            return
        if self._local(node, slug):
            return
        try:
            try:
                raw = json.loads(message.payload)
            except RecursionError:
                raise ValueError("nested too deep") from None
            data = AnnouncementSchema().load(raw)
            if (data["node"], data["slug"]) != (node, slug):
                raise ValueError(f"it names {data['node']}/{data['slug']}")
            url = announced_url(data["url"], loopback_ok=node == self.host.node)
            # Never fetched from: the document is always <url>/api/openapi.json.
            openapi = data["openapi"]
            allowed = {f"{base}/api/openapi.json" for base in (url, data["url"].rstrip("/"))}
            if openapi is not None and openapi not in allowed:
                raise ValueError(f"openapi {openapi!r} is not {url}/api/openapi.json")
        except (ValueError, ma.ValidationError) as exc:
            detail = exc.messages if isinstance(exc, ma.ValidationError) else exc
            self.host.metrics.reject(
                "announcement", message.topic, message.payload, detail, log=logger
            )
            return
        with self._lock:
            status, reason = self._statuses.get((node, slug)) or self._pending.pop(
                (node, slug), (ONLINE, "")
            )
            self._statuses[(node, slug)] = (status, reason)
            self._health_failed.discard((node, slug))
            self._due.pop((node, slug), None)
        old = self.registry.get(node, slug)
        if old is not None and old.announced_at == data["announced_at"] and old.url == url:
            # The same announcement again (retained, after a reconnect): keep its state.
            if old.status != status:
                self.registry.mark(node, slug, status, reason)
            return
        now = time.monotonic()
        offline_since = None
        if status == OFFLINE:
            keep = old is not None and old.offline_since is not None
            offline_since = old.offline_since if keep and old is not None else now
        self.registry.put(
            RemoteService(
                node=node,
                slug=slug,
                title=data["title"],
                version=data["version"],
                description=data["description"],
                machine=data["machine"],
                url=url,
                ops=tuple(data["ops"]),
                tls_fingerprint=data["tls_fingerprint"],
                announced_at=data["announced_at"],
                status=status,
                reason=reason,
                last_seen=now,
                offline_since=offline_since,
            )
        )
        logger.info("%s/%s announced at %s (%s)", node, slug, url, status)

    def _on_op(self, message: mqtt.MQTTMessage) -> None:
        parsed = self._key(message.topic)
        if parsed is None or len(parsed[2]) != 2:
            return
        node, slug, (_ops, op) = parsed
        if node == self.host.node and slug in self.host.runtimes:
            return  # a local service: the host knows its sessions first hand
        service = self.registry.get(node, slug)
        if service is None or op not in {listed["name"] for listed in service.ops}:
            return  # only the operations its announcement lists
        if not message.payload:
            return  # cleared (a node left)
        try:
            session = json.loads(message.payload)
            state = {"state": session["state"], "success": session.get("success")}
            if state["state"] not in OP_STATES or state["success"] not in (True, False, None):
                raise ValueError(f"no session state: {state}")
        except (ValueError, TypeError, KeyError, AttributeError, RecursionError) as exc:
            self.host.metrics.reject(
                "op_state", message.topic, message.payload, repr(exc), log=logger
            )
            return
        with self._lock:
            self._ops.setdefault((node, slug), {})[op] = state

    def _changed(self, old: RemoteService | None, new: RemoteService | None) -> None:
        if new is None and old is not None:
            # Forgotten: nothing of it is kept.
            with self._lock:
                self._due.pop(old.key, None)
                self._reported.pop(old.key, None)
                self._ops.pop(old.key, None)
                self._statuses.pop(old.key, None)
                self._pending.pop(old.key, None)
                self._health_failed.discard(old.key)
        elif new is not None and (old is None or old.ops != new.ops):
            listed = {op["name"] for op in new.ops}
            with self._lock:
                states = self._ops.get(new.key)
                if states is not None:
                    for op in [op for op in states if op not in listed]:
                        del states[op]

    # -- what the views show -----------------------------------------------------------

    def op_states(self, node: str, slug: str) -> Mapping[str, Mapping[str, Any]]:
        """The last published state of each operation of node/slug."""
        with self._lock:
            return dict(self._ops.get((node, slug), {}))

    def reported_health(self, node: str, slug: str) -> Mapping[str, str] | None:
        """What the service's own /api/health said of it at the last check."""
        with self._lock:
            return self._reported.get((node, slug))

    # -- health checks ----------------------------------------------------------------

    def _run(self) -> None:
        tick = min(1.0, self.interval / 2, max(self.grace / 4, 0.1))
        while not self._stop.wait(tick):
            try:
                self._sweep()
            except Exception:
                logger.exception("remote services sweep failed")

    def _sweep(self) -> None:
        now = time.monotonic()
        for service in self.registry.services():
            key = service.key
            if not service.online:
                since = service.offline_since
                if since is not None and now - since > self.grace:
                    logger.info("forgetting %s/%s: offline for %.0f s", *key, now - since)
                    self.registry.forget(*key)
                    continue
            with self._lock:
                if not service.online and key not in self._health_failed:
                    continue  # offline by its status: it comes back by saying online
                due = self._due.setdefault(key, now + self.interval)
                if now < due or key in self._checking:
                    continue
                self._due[key] = now + self.interval
                self._checking.add(key)
            self._pool.submit(self._check, service)

    def _check(self, service: RemoteService) -> None:
        key = service.key
        try:
            problem = self._probe(service)
        except Exception as exc:
            problem = f"{type(exc).__name__}: {exc}"
        finally:
            with self._lock:
                self._checking.discard(key)
        current = self.registry.get(*key)
        if current is None or self._stop.is_set():
            return
        with self._lock:
            if problem is None:
                self.registry.seen(*key)
                back = key in self._health_failed and not current.online
                self._health_failed.discard(key)
            else:
                # A service offline by its status stays so, whatever its URL says.
                if not current.online and key not in self._health_failed:
                    return
                self._health_failed.add(key)
        if problem is None:
            if back:
                logger.info("%s/%s answers its health check again", *key)
                self.registry.mark(*key, ONLINE)
            return
        if current.online:
            logger.warning("%s/%s is offline: %s", *key, problem)
        self.registry.mark(*key, OFFLINE, f"health check failed: {problem}")

    def _probe(self, service: RemoteService) -> str | None:
        """None when `<url>/api/health` answers for this node and service; else why not."""
        url = f"{service.url}/api/health"
        try:
            # 503 is a degraded but living service: it stays online, degraded.
            report = fetch_json(
                url,
                headers={"Accept": "application/json"},
                deadline_s=self.timeout,
                max_bytes=MAX_HEALTH_BYTES,
                accept=(200, 503),
                fingerprint=service.tls_fingerprint,
            )
        except FetchError as exc:
            return str(exc)
        try:
            node, own = report["node"], report["services"].get(service.slug)
        except (ValueError, TypeError, KeyError, AttributeError):
            return f"{url} did not answer with a PyEdge health report"
        if node != service.node or not isinstance(own, dict):
            return f"{url} answers as node {node!r} without {service.slug}"
        with self._lock:
            self._reported[service.key] = {
                "status": str(own.get("status", "ok")),
                "detail": str(own.get("detail", "")),
            }
        return None


def init_app(app: Flask, host: ServiceHost) -> RemoteRegistry:
    """Give the app its services tree, fed from the bus in the node and hub roles.

    Call after host.init_app and before host.start; the listener stops when the host closes.
    """
    registry: RemoteRegistry = app.extensions.setdefault(EXTENSION, RemoteRegistry())
    conf = app.config
    role = conf.get("EDGE_ROLE", "solo")
    if role not in ROLES_LISTENING:
        return registry
    listener = RemoteListener(
        registry,
        host,
        root=topic_root(conf.get("EDGE_SITE") or ""),
        nodes=host.node if role == "node" else "+",
        interval=conf["EDGE_REMOTE_HEALTH_INTERVAL"],
        grace=conf["EDGE_REMOTE_GRACE"],
    )
    app.extensions[LISTENER_EXTENSION] = listener
    listener.start()
    host.close_hooks.append(listener.stop)
    return registry


def listener_of(app: Flask) -> RemoteListener | None:
    """The app's listener, None in the solo role."""
    listener: RemoteListener | None = app.extensions.get(LISTENER_EXTENSION)
    return listener
