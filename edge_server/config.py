"""edge-server settings: [edge] in the TOML file, EDGE_* in the environment."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from pyedge import config as cfg
from pyedge.host import CORE_SETTINGS

# The checkout's Mosquitto configuration (editable installs and containers keep it there).
REPO_MQTT_CONFIG = Path(__file__).resolve().parent.parent / "mqtt" / "mosquitto.conf"

SERVER_SETTINGS: tuple[cfg.Setting, ...] = (
    cfg.Setting(
        "services",
        cfg.slug_list,
        None,
        "service slugs to run, comma-separated, or none (default: every installed one)",
    ),
    cfg.Setting("http_host", cfg.text, "0.0.0.0", "address the HTTP API listens on"),
    cfg.Setting("http_port", cfg.integer(1, 65535), 8000, "port the HTTP API listens on"),
    cfg.Setting(
        # Each long-polling `wait` holds a thread for up to 60 s; health must still answer.
        "http_threads",
        cfg.integer(2, 64),
        16,
        "request threads of the one gunicorn worker",
    ),
    cfg.Setting(
        # Each open /api/events stream holds a thread of its own, beside EDGE_HTTP_THREADS:
        # streams never take the API's threads. One more is refused with 503.
        "sse_clients",
        cfg.integer(0, 256),
        32,
        "event streams (/api/events) open at once, each with a thread of its own",
    ),
    cfg.Setting(
        "sse_heartbeat",
        cfg.number(1.0),
        15.0,
        "seconds between keep-alive comments on an idle event stream",
    ),
    cfg.Setting(
        "mqtt_embedded",
        cfg.boolean,
        True,
        "pyedge run starts its own Mosquitto (off: use EDGE_MQTT_HOST's broker)",
    ),
    cfg.Setting("mqtt_bind", cfg.text, "127.0.0.1", "address the embedded broker listens on"),
    cfg.Setting(
        "mqtt_config",
        cfg.path,
        REPO_MQTT_CONFIG,
        "the Mosquitto configuration pyedge run starts the broker with",
    ),
    cfg.Setting(
        "mqtt_tls_port",
        cfg.integer(1, 65535),
        8883,
        "port of the embedded broker's TLS listener (opened with EDGE_MQTT_TLS)",
    ),
    cfg.Setting(
        "mqtt_tls_bind",
        cfg.text,
        "0.0.0.0",
        "address of the embedded broker's TLS listener: the one for other machines",
    ),
    cfg.Setting(
        "tls",
        cfg.boolean,
        False,
        "serve HTTPS with EDGE_TLS_CERT / EDGE_TLS_KEY, else a self-signed certificate",
    ),
    cfg.Setting("tls_cert", cfg.path, None, "PEM certificate (chain) for HTTPS"),
    cfg.Setting("tls_key", cfg.path, None, "PEM private key of EDGE_TLS_CERT (unencrypted)"),
    cfg.Setting(
        "log_level", cfg.choice("DEBUG", "INFO", "WARNING", "ERROR"), "INFO", "logging level"
    ),
    cfg.Setting(
        "role",
        cfg.choice("solo", "node", "hub"),
        "solo",
        "solo: only the services in this process; node: also those serving on their own on "
        "this node; hub: those of every node on the broker",
    ),
    cfg.Setting(
        "remote_grace",
        cfg.number(0),
        300.0,
        "seconds an offline remote service stays listed before it is forgotten",
    ),
    cfg.Setting(
        "remote_health_interval",
        cfg.number(1),
        10.0,
        "seconds between health checks of each remote service",
    ),
    cfg.Setting(
        "proxy_timeout",
        cfg.number(1),
        75.0,
        "seconds a proxied request may wait for the remote service's next bytes",
    ),
    cfg.Setting(
        "proxy_max_body",
        cfg.integer(0),
        16 * 1024 * 1024,
        "largest request body (bytes) the proxy forwards to a remote service",
    ),
)

EDGE_SECTION = cfg.Section("edge", CORE_SETTINGS + SERVER_SETTINGS)


def load_settings(
    overrides: Mapping[str, Any] | None = None,
    environ: Mapping[str, str] | None = None,
    service_sections: Iterable[cfg.Section] = (),
) -> cfg.LoadedConfig:
    """Load the edge section and the given services' sections; raises ConfigError."""
    return cfg.load([EDGE_SECTION, *service_sections], overrides, environ)
