"""ServiceHost: the Flask extension that runs EdgeServices inside one app and one process."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from typing import Any

from flask import Flask
from flask_smorest import Api

from pyedge import config as cfg
from pyedge.announce import Announcer
from pyedge.bus import Bus
from pyedge.bus_config import MQTT_PROTOCOLS, bus_settings
from pyedge.metrics import Metrics
from pyedge.service import EdgeService, ServiceRuntime
from pyedge.tls import node_tls
from pyedge.version import __version__

logger = logging.getLogger(__name__)

EXTENSION = "pyedge"

CORE_SETTINGS: tuple[cfg.Setting, ...] = (
    cfg.Setting(
        "node_id",
        cfg.node_id,
        cfg.default_node_id,
        "this device's id in topics and the API (default: the hostname)",
    ),
    cfg.Setting("data_dir", cfg.path, "data", "where services keep their files"),
    cfg.Setting(
        "site",
        cfg.site,
        "",
        "site name: topics become <site>/pyedge/... (for several sites on one broker)",
    ),
    cfg.Setting("mqtt_host", cfg.text, "127.0.0.1", "MQTT broker host"),
    cfg.Setting("mqtt_port", cfg.integer(1, 65535), 1883, "MQTT broker port"),
    cfg.Setting(
        "mqtt_keepalive",
        cfg.integer(5, 3600),
        30,
        "seconds; the broker fires the last will after 1.5x this",
    ),
    cfg.Setting(
        "mqtt_protocol",
        cfg.choice(*MQTT_PROTOCOLS),
        "5",
        "MQTT version to try first (5 falls back to 3.1.1 by itself)",
    ),
    cfg.Setting("mqtt_username", cfg.text, None, "broker account (pyedge run sets its own)"),
    cfg.Setting("mqtt_password", cfg.secret, None, "password of EDGE_MQTT_USERNAME", secret=True),
    cfg.Setting(
        "mqtt_credentials",
        cfg.path,
        None,
        'JSON file {"username": ..., "password": ...}, instead of the two settings above',
    ),
    cfg.Setting("mqtt_tls", cfg.boolean, False, "connect to the broker over TLS, verified"),
    cfg.Setting(
        "advertise_url",
        cfg.text,
        None,
        "base URL other nodes reach this process at, announced by `pyedge serve` "
        "(default: http://<hostname>:<http port>)",
    ),
    cfg.Setting(
        "hub_public_key",
        cfg.path,
        None,
        "the edge-server's public key file: services trust the callers it signs, and an "
        "edge-server writes its own there (default: <data_dir>/network/hub.pub)",
    ),
    cfg.Setting(
        "mqtt_ca",
        cfg.path,
        None,
        "CA certificate(s) the broker's certificate is checked against (default: the system's)",
    ),
)


class ServiceHost:
    """Mounts services' blueprints on an app and runs them with one shared MQTT client.

    One host per process: it owns the process's only bus connection, whose last will
    marks `[<site>/]pyedge/<node>/<process_slug>/status` offline.
    """

    def __init__(
        self,
        services: Sequence[EdgeService],
        process_slug: str,
        advertise_url: str | None = None,
        tls_fingerprint: str | None = None,
    ) -> None:
        self.services = list(services)
        self.process_slug = process_slug
        # Set when the process serves its services on its own: they are announced (on
        # every connect) as reachable at this base URL.
        self.advertise_url = advertise_url
        # SHA-256 (hex) of its HTTPS certificate, announced so that it can be pinned.
        self.tls_fingerprint = tls_fingerprint
        self.runtimes: dict[str, ServiceRuntime] = {}
        self.node = ""
        self.bus: Bus | None = None
        # The process's Prometheus registry (GET /metrics), shared with the runtimes.
        self.metrics = Metrics()
        self._close_lock = threading.Lock()
        self._closed = False
        # Run after the services stop (e.g. the app's account store closing).
        self.close_hooks: list[Callable[[], None]] = []

    @property
    def serves_alone(self) -> bool:
        """True when the process serves its services on its own (`pyedge serve`), announced
        for the hubs: the only kind a hub proxies to, so the only kind that takes the callers
        a hub forwards (an edge-server, which signs them, never does)."""
        return self.advertise_url is not None

    def init_app(self, app: Flask, api: Api) -> None:
        """Register every service's blueprint and create its runtime from app.config."""
        conf = app.config
        self.node = conf["EDGE_NODE_ID"]
        self.bus = Bus(bus_settings(conf, self.process_slug))
        self.metrics.init_app(app)
        self.metrics.watch_host(self)
        # The app's Auth (pyedge.auth, which imports this module), when it has one.
        auth = app.extensions.get("pyedge.auth")
        accounts = auth.store if auth is not None else None
        tls = node_tls(conf)
        for service in self.services:
            api.register_blueprint(service.blueprint)
            self.runtimes[service.slug] = ServiceRuntime(
                service,
                node=self.node,
                bus=self.bus,
                settings=conf,
                data_dir=conf["EDGE_DATA_DIR"],
                site=conf["EDGE_SITE"],
                metrics=self.metrics,
                accounts=accounts,
                tls=tls,
            )
        app.extensions[EXTENSION] = self

    def start(self) -> None:
        """Connect the bus and start every service (autostart Processes included)."""
        assert self.bus is not None, "init_app first"
        if self.advertise_url is not None:
            # Before the bus connects, so that the first connect announces too.
            Announcer(self.runtimes.values(), self.advertise_url, self.tls_fingerprint).start()
        self.bus.start()
        for runtime in self.runtimes.values():
            runtime.start()

    def close(self, timeout: float = 5.0) -> None:
        """Stop every operation, mark the services offline and disconnect.

        Idempotent; a second caller waits until the first has finished.
        """
        with self._close_lock:
            if self._closed:
                return
            self._closed = True
            for runtime in self.runtimes.values():
                runtime.stop(timeout)
            if self.bus is not None:
                self.bus.close()
            for hook in self.close_hooks:
                hook()
            logger.info("services stopped: %s", ", ".join(self.runtimes) or "none")

    def health(self) -> dict[str, Any]:
        """The node's health: every service's, and the bus's."""
        healths = {slug: runtime.health() for slug, runtime in self.runtimes.items()}
        bus = self.bus
        mqtt = {
            "status": "connected" if bus and bus.connected else "disconnected",
            "broker": bus.broker if bus else "",
            "detail": (bus.last_error if bus else "no bus") or "",
        }
        ok = mqtt["status"] == "connected" and all(h.ok for h in healths.values())
        return {
            "status": "ok" if ok else "degraded",
            "node": self.node,
            "version": __version__,
            "mqtt": mqtt,
            "services": {
                slug: {"status": h.status, "detail": h.detail} for slug, h in healths.items()
            },
        }

    def describe(self, runtime: ServiceRuntime) -> dict[str, Any]:
        """A service as the services tree shows it."""
        service, health = runtime.service, runtime.health()
        return {
            "slug": service.slug,
            "title": service.title,
            "version": service.version,
            "description": service.description,
            "mode": "local",
            "node": self.node,
            "url": f"/api/{service.slug}",
            "health": {"status": health.status, "detail": health.detail},
            "ops": [
                {
                    "name": name,
                    "kind": session.kind,
                    "state": session.state,
                    "success": session.success,
                }
                for name, session in runtime.runner.sessions.items()
            ],
        }
