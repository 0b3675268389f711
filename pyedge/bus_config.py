"""A process's BusSettings from the core settings: broker, account, TLS and topic root."""

from __future__ import annotations

import json
import logging
import ssl
import stat
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from paho.mqtt.enums import MQTTProtocolVersion

from pyedge.bus import BusSettings
from pyedge.config import ConfigError
from pyedge.service import topic_root

logger = logging.getLogger(__name__)

MQTT_PROTOCOLS = {"5": MQTTProtocolVersion.MQTTv5, "3.1.1": MQTTProtocolVersion.MQTTv311}
USERNAME, PASSWORD = "EDGE_MQTT_USERNAME", "EDGE_MQTT_PASSWORD"
CREDENTIALS = "EDGE_MQTT_CREDENTIALS"


def bus_settings(conf: Mapping[str, Any], process_slug: str) -> BusSettings:
    """The bus of the process `process_slug` on node EDGE_NODE_ID; ConfigError if unusable."""
    node = conf["EDGE_NODE_ID"]
    root = topic_root(conf.get("EDGE_SITE") or "")
    username, password = mqtt_login(conf)
    ca_file: Path | None = conf.get("EDGE_MQTT_CA")
    tls = bool(conf.get("EDGE_MQTT_TLS"))
    if tls and ca_file is not None:
        _check_ca(conf, ca_file)
    return BusSettings(
        host=conf["EDGE_MQTT_HOST"],
        port=conf["EDGE_MQTT_PORT"],
        # Client ids are unique per broker: a site's nodes must not take over another's.
        client_id=f"{root.replace('/', '-')}-{node}-{process_slug}",
        will_topic=f"{root}/{node}/{process_slug}/status",
        keepalive=conf["EDGE_MQTT_KEEPALIVE"],
        protocol=MQTT_PROTOCOLS[conf["EDGE_MQTT_PROTOCOL"]],
        username=username,
        password=password,
        tls=tls,
        ca_file=ca_file,
    )


def mqtt_login(conf: Mapping[str, Any]) -> tuple[str | None, str | None]:
    """The broker account: EDGE_MQTT_USERNAME/PASSWORD, or the EDGE_MQTT_CREDENTIALS file."""
    username, password, path = conf.get(USERNAME), conf.get(PASSWORD), conf.get(CREDENTIALS)
    if path is not None:
        if username is not None or password is not None:
            raise _error(conf, CREDENTIALS, f"set either it or {USERNAME} and {PASSWORD}, not both")
        return read_credentials(Path(path))
    if (username is None) != (password is None):
        missing = PASSWORD if password is None else USERNAME
        raise _error(conf, USERNAME if username else PASSWORD, f"{missing} must be set with it")
    return username, password


def read_credentials(path: Path) -> tuple[str, str]:
    """Username and password from a JSON file `{"username": ..., "password": ...}`."""
    try:
        data = json.loads(path.read_text())
        mode = path.stat().st_mode
    except OSError as exc:
        raise ConfigError(CREDENTIALS, str(path), f"cannot read it: {exc.strerror}") from exc
    except ValueError as exc:
        raise ConfigError(CREDENTIALS, str(path), f"not JSON: {exc}") from exc
    if not isinstance(data, dict) or not all(
        isinstance(data.get(key), str) and data[key] for key in ("username", "password")
    ):
        raise ConfigError(CREDENTIALS, str(path), 'expected {"username": "...", "password": "..."}')
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        # Still usable; but anyone on the machine could be this service on the broker.
        logger.warning("%s is readable by other users; chmod 600 it", path)
    return data["username"], data["password"]


def _check_ca(conf: Mapping[str, Any], ca_file: Path) -> None:
    try:
        ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT).load_verify_locations(str(ca_file))
    except (OSError, ssl.SSLError) as exc:
        problem = f"cannot load {ca_file} as CA certificates: {exc}"
        raise _error(conf, "EDGE_MQTT_CA", problem) from exc


def _error(conf: Mapping[str, Any], key: str, problem: str) -> ConfigError:
    sources: Mapping[str, str] = getattr(conf, "sources", {})
    return ConfigError(key, sources.get(key, "settings"), problem)
