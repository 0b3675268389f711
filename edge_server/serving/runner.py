"""Solo mode: Mosquitto, then one gunicorn worker serving the edge-server.

Background Processes must run once per node. They live in the process that created the
app, so `pyedge run` serves with exactly one gunicorn worker (gthread: concurrency comes
from its threads), and a lock file in the data dir stops a second `pyedge run` on the
same data, or machine-wide for the same node id, from starting its own copies.

Once the settings, the locks, TLS and the broker are in place, the process execs the lean
gunicorn arbiter (edge_server.serving.arbiter), which keeps them and its pid.
"""

from __future__ import annotations

import fcntl
import logging
import os
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import IO, Any, NoReturn

from gunicorn.config import Config

from edge_server.app import PROCESS_SLUG
from edge_server.broker.embedded import Mosquitto, embedded_broker, solo_login
from edge_server.registry import installed_services
from edge_server.security.tls import TlsFiles, server_tls
from edge_server.serving.arbiter import LOG_FORMAT, Plan, exec_arbiter
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


def gunicorn_options(settings: LoadedConfig, tls: TlsFiles | None) -> dict[str, Any]:
    """Fixed gunicorn settings: the one-worker rule is not configurable on purpose."""
    s = settings
    options: dict[str, Any] = {
        "bind": f"{s['EDGE_HTTP_HOST']}:{s['EDGE_HTTP_PORT']}",
        "workers": 1,
        "worker_class": "gthread",
        "threads": s["EDGE_HTTP_THREADS"] + s["EDGE_SSE_CLIENTS"],
        "timeout": 120,
        "graceful_timeout": GRACEFUL_TIMEOUT_S,
        "loglevel": s["EDGE_LOG_LEVEL"].lower(),
        # gunicorn's control socket would live in ~/.gunicorn, shared by every node.
        "control_socket_disable": True,
    }
    if "control_socket_disable" not in Config().settings:  # gunicorn < 24 has none
        del options["control_socket_disable"]
    if tls is not None:
        options.update(certfile=str(tls.cert.resolve()), keyfile=str(tls.key.resolve()))
    return options


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


def serve_app(
    settings: LoadedConfig,
    overrides: Mapping[str, Any],
    tls: TlsFiles | None,
    held: Sequence[IO[str]] = (),
    broker: Mosquitto | None = None,
    stopped: str = "pyedge stopped",
) -> NoReturn:
    """Become the gunicorn arbiter serving create_app(overrides) with one gthread worker.

    The process execs the lean arbiter (edge_server.serving.arbiter), keeping its pid, the
    `held` lock files and the broker child; OSError if the exec failed.
    """
    logger.info(
        "serving %s://%s:%d/ (API docs at /api/docs)",
        "https" if tls else "http",
        settings["EDGE_HTTP_HOST"],
        settings["EDGE_HTTP_PORT"],
    )
    for handle in held:
        os.set_inheritable(handle.fileno(), True)
    exec_arbiter(
        Plan(
            options=gunicorn_options(settings, tls),
            overrides=dict(overrides),
            log_level=settings["EDGE_LOG_LEVEL"],
            log_format=LOG_FORMAT,
            broker_pid=broker.process.pid if broker and broker.process else None,
            stopped=stopped,
        )
    )


def run(settings: LoadedConfig, overrides: Mapping[str, Any]) -> None:
    """Become solo mode's arbiter (until SIGTERM or Ctrl-C); PyEdgeError if it cannot start."""
    locks = lock_node(settings)
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
        serve_app(settings, overrides, tls, locks, broker)
    finally:
        # Reached only when start-up failed: the exec'd arbiter owns the broker and locks.
        if broker is not None:
            broker.stop()
        for lock in locks:
            lock.close()
