"""Solo mode: Mosquitto, then one gunicorn worker serving the edge-server.

Background Processes must run once per node. They live in the process that created the
app, so `pyedge run` serves with exactly one gunicorn worker (gthread: concurrency comes
from its threads), and a lock file in the data dir stops a second `pyedge run` on the
same data, or machine-wide for the same node id, from starting its own copies.
"""

from __future__ import annotations

import fcntl
import logging
import os
import signal
import tempfile
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import IO, Any

from flask import Flask
from gunicorn.app.base import BaseApplication

from edge_server.app import PROCESS_SLUG, create_app
from edge_server.broker.embedded import embedded_broker, solo_login
from edge_server.registry import installed_services
from edge_server.security.tls import TlsFiles, server_tls
from pyedge import PyEdgeError
from pyedge.bus_config import bus_settings
from pyedge.config import LoadedConfig

logger = logging.getLogger(__name__)

LOCK_FILE = "pyedge.lock"
# A `wait` call can hold a request for 60 s; shutdown ends the sessions it waits on first.
GRACEFUL_TIMEOUT_S = 10


class NodeLocked(PyEdgeError):
    """Another `pyedge run` (or `pyedge serve` of the same service) already runs here."""


def hold_lock(path: Path, what: str, holder_name: str = "pyedge run") -> IO[str]:
    """Hold an exclusive lock on `path` for this process's life; NodeLocked if taken."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle = path.open("a+")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.seek(0)
        holder = handle.read().strip() or "unknown"
        handle.close()
        raise NodeLocked(f"{what} is in use by another {holder_name} (pid {holder})") from None
    handle.seek(0)
    handle.truncate()
    handle.write(f"{os.getpid()}\n")
    handle.flush()
    return handle


def lock_node(settings: LoadedConfig) -> list[IO[str]]:
    """Lock the data dir and, machine-wide, the node id: each runs its Processes once."""
    data_dir: Path = settings["EDGE_DATA_DIR"]
    node = settings["EDGE_NODE_ID"]
    return [
        hold_lock(data_dir / LOCK_FILE, f"EDGE_DATA_DIR: {data_dir}"),
        hold_lock(
            Path(tempfile.gettempdir()) / f"pyedge-node-{node}.lock", f"EDGE_NODE_ID: {node}"
        ),
    ]


def close_services(app: Flask) -> None:
    """Stop the app's operations and say offline on the bus (idempotent)."""
    host = app.extensions.get("pyedge")
    if host is not None:
        host.close()


class EdgeServerApplication(BaseApplication):  # type: ignore[misc]
    """gunicorn serving create_app(overrides) with one gthread worker."""

    def __init__(
        self, settings: LoadedConfig, overrides: Mapping[str, Any], tls: TlsFiles | None = None
    ) -> None:
        self.settings = settings
        self.overrides = dict(overrides)
        self.tls = tls
        super().__init__()

    def load_config(self) -> None:
        """Fixed gunicorn settings: the one-worker rule is not configurable on purpose."""
        s = self.settings
        options = {
            "bind": f"{s['EDGE_HTTP_HOST']}:{s['EDGE_HTTP_PORT']}",
            "workers": 1,
            "worker_class": "gthread",
            "threads": s["EDGE_HTTP_THREADS"] + s["EDGE_SSE_CLIENTS"],
            "timeout": 120,
            "graceful_timeout": GRACEFUL_TIMEOUT_S,
            "loglevel": s["EDGE_LOG_LEVEL"].lower(),
            "post_worker_init": _post_worker_init,
            "worker_exit": _worker_exit,
            # gunicorn's control socket would live in ~/.gunicorn, shared by every node.
            "control_socket_disable": True,
        }
        if "control_socket_disable" not in self.cfg.settings:  # gunicorn < 24 has none
            del options["control_socket_disable"]
        if self.tls is not None:
            options.update(
                certfile=str(self.tls.cert.resolve()), keyfile=str(self.tls.key.resolve())
            )
        for key, value in options.items():
            self.cfg.set(key, value)

    def load(self) -> Flask:
        """Create the app inside the worker, where its threads will live."""
        return create_app(self.overrides)


def _post_worker_init(worker: Any) -> None:
    # On SIGTERM, end the sessions right away so that long-polling `wait` requests return
    # and gunicorn's graceful shutdown does not sit out its timeout.
    previous = signal.getsignal(signal.SIGTERM)

    def on_term(signum: int, frame: Any) -> None:
        threading.Thread(target=close_services, args=(worker.wsgi,), daemon=True).start()
        if callable(previous):
            previous(signum, frame)

    signal.signal(signal.SIGTERM, on_term)


def _worker_exit(server: Any, worker: Any) -> None:
    app = getattr(worker, "wsgi", None)
    if isinstance(app, Flask):
        close_services(app)


def https_files(settings: LoadedConfig) -> TlsFiles | None:
    """The HTTPS certificate when EDGE_TLS is on (checked or generated), announced."""
    if not settings["EDGE_TLS"]:
        if settings["EDGE_TLS_CERT"] is not None:
            logger.warning("EDGE_TLS_CERT is set but EDGE_TLS is off: serving plain HTTP")
        return None
    # After the data dir lock: two runs must not generate two certificates at once.
    tls = server_tls(settings)
    logger.info("HTTPS certificate %s fingerprint SHA256 %s", tls.cert, tls.fingerprint)
    return tls


def serve_app(settings: LoadedConfig, overrides: Mapping[str, Any], tls: TlsFiles | None) -> None:
    """Serve create_app(overrides) with one gunicorn gthread worker until it stops."""
    logger.info(
        "serving %s://%s:%d/ (API docs at /api/docs)",
        "https" if tls else "http",
        settings["EDGE_HTTP_HOST"],
        settings["EDGE_HTTP_PORT"],
    )
    EdgeServerApplication(settings, overrides, tls).run()


def run(settings: LoadedConfig, overrides: Mapping[str, Any]) -> None:
    """Run solo mode until SIGTERM or Ctrl-C; raises PyEdgeError if it cannot start."""
    locks = lock_node(settings)
    # gunicorn forks its worker inside run() below; the worker leaves through this same
    # `finally` when it exits, and must not stop the broker the master still serves.
    owner = os.getpid()
    broker = None
    try:
        tls = https_files(settings)
        if settings["EDGE_MQTT_EMBEDDED"]:
            broker = embedded_broker(settings, installed_services())
            broker.start()
            # The app logs in as edge-server: the account made for it in the data dir.
            overrides = {**overrides, **solo_login(broker)}
        else:
            # A missing account file or CA stops start-up here rather than in the worker.
            bus_settings(settings, PROCESS_SLUG)
        serve_app(settings, overrides, tls)
    finally:
        if os.getpid() == owner:
            if broker is not None:
                broker.stop()
            for lock in locks:
                lock.close()
            logger.info("pyedge stopped")
