"""Network mode: `pyedge serve <slug>`, one service in a gunicorn process of its own.

It serves exactly like `pyedge run` (one gthread worker, see edge_server.serving.runner) but with
EDGE_SERVICES=[slug], its own HTTP port, never the embedded broker, and the service's own
broker account, so the service's status topic carries the process's last will and its
announcement tells the network where its API is.
"""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import IO, Any

from edge_server.broker.accounts import AccountError, load_accounts
from edge_server.network.join import joined_overrides
from edge_server.registry import configure
from edge_server.serving.runner import NodeLocked, hold_lock, https_files, serve_app
from pyedge import ConfigError
from pyedge.bus_config import CREDENTIALS, PASSWORD, USERNAME, bus_settings
from pyedge.config import LoadedConfig

logger = logging.getLogger(__name__)

ADVERTISE_URL = "EDGE_ADVERTISE_URL"

__all__ = ["NodeLocked", "broker_login", "lock_service", "serve"]


def lock_service(settings: LoadedConfig, slug: str) -> list[IO[str]]:
    """Lock `slug` in the data dir and, machine-wide, on this node id: it runs once."""
    data_dir: Path = settings["EDGE_DATA_DIR"]
    node = settings["EDGE_NODE_ID"]
    what = f"pyedge serve {slug}"
    return [
        hold_lock(data_dir / f"pyedge-serve-{slug}.lock", f"EDGE_DATA_DIR: {data_dir}", what),
        hold_lock(
            Path(tempfile.gettempdir()) / f"pyedge-node-{node}-{slug}.lock",
            f"EDGE_NODE_ID: {node}",
            what,
        ),
    ]


def broker_login(settings: LoadedConfig, slug: str) -> dict[str, Any]:
    """The settings overrides that log `slug` in to the broker; ConfigError if none found.

    In this order: EDGE_MQTT_USERNAME/PASSWORD or EDGE_MQTT_CREDENTIALS when set (nothing
    to add); what `pyedge join` saved (broker, TLS, site and account); the slug's account
    in `<data>/mosquitto/accounts.json`, made by `pyedge run` on this device.
    """
    if any(settings.get(key) is not None for key in (USERNAME, PASSWORD, CREDENTIALS)):
        logger.info("%s logs in to the broker with the configured account", slug)
        return {}
    data_dir: Path = settings["EDGE_DATA_DIR"]
    joined = joined_overrides(data_dir, slug)
    if joined:
        logger.info("%s logs in to the broker %s joined", slug, data_dir)
        return joined
    accounts_dir = data_dir / "mosquitto"
    try:
        login = load_accounts(accounts_dir).login(slug)
    except AccountError as exc:
        raise ConfigError(
            CREDENTIALS,
            settings.sources.get(CREDENTIALS, "settings"),
            f"no broker login for {slug}: set {USERNAME} and {PASSWORD} or {CREDENTIALS}, "
            f"run `pyedge join`, or serve from the data dir of this device's `pyedge run` "
            f"({exc})",
        ) from exc
    logger.info("%s logs in to the broker with its account in %s", slug, accounts_dir)
    return {USERNAME: login["username"], PASSWORD: login["password"]}


def _check_advertise_url(settings: LoadedConfig) -> None:
    url = settings.get(ADVERTISE_URL)
    if url is not None and not url.startswith(("http://", "https://")):
        raise settings.error(ADVERTISE_URL, "must start with http:// or https://")


def serve(settings: LoadedConfig, overrides: Mapping[str, Any], slug: str) -> None:
    """Serve `slug` alone until SIGTERM or Ctrl-C; raises PyEdgeError if it cannot start.

    `settings` must already have EDGE_SERVICES=[slug] (so the slug is known installed).
    """
    _check_advertise_url(settings)
    overrides = {
        **overrides,
        "EDGE_SERVICES": slug,
        "EDGE_MQTT_EMBEDDED": False,
        # A served service is not an edge-server: it builds no services tree.
        "EDGE_ROLE": "solo",
        **broker_login(settings, slug),
    }
    # A bad login, account file or CA stops start-up here rather than in the worker.
    checked, _services = configure(overrides)
    bus_settings(checked, slug)
    # The joined node id (join.json) when there is one: the lock is that node's.
    locks = lock_service(checked, slug)
    try:
        tls = https_files(settings)
        serve_app(settings, overrides, tls, locks, stopped=f"pyedge serve {slug} stopped")
    finally:
        # Reached only when start-up failed: the exec'd arbiter holds the locks.
        for lock in locks:
            lock.close()
