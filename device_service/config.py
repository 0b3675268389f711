"""device-service settings: [device-service] in the TOML file, EDGE_DEVICE_SERVICE_* in the env."""

from __future__ import annotations

import platform
from pathlib import Path

from pyedge import config as cfg

MACHINE_TYPES = ("pc_linux", "pc_win", "mac", "rpi")
PI_MODEL = Path("/proc/device-tree/model")


def detect_machine_type() -> str:
    """rpi on a Raspberry Pi, else the PC kind of this operating system."""
    try:
        if PI_MODEL.read_bytes().startswith(b"Raspberry Pi"):
            return "rpi"
    except OSError:
        pass
    return {"Windows": "pc_win", "Darwin": "mac"}.get(platform.system(), "pc_linux")


def discovery_prefix(value: object) -> str:
    """Parse Home Assistant's discovery prefix: a topic name, which goes into ACL filters."""
    prefix = cfg.text(value)
    # The broker's ACL is built from it (edge_server/broker/accounts.py): a wildcard would
    # widen every rule, a line break would add rules of its own, and `$` topics are the
    # broker's. Empty levels (`a//b`, a leading or trailing `/`) are typos.
    if any(char in prefix for char in "+#") or any(not char.isprintable() for char in prefix):
        raise ValueError(f"expected a topic without '+', '#' or control characters, got {value!r}")
    if prefix.startswith("$"):
        raise ValueError(f"expected a topic not starting with '$' (the broker's), got {value!r}")
    if "" in prefix.split("/"):
        raise ValueError(f"expected topic levels joined by single '/', got {value!r}")
    return prefix


SETTINGS = (
    cfg.Setting(
        "sensors",
        cfg.path,
        None,
        "TOML file of the sensors (default: by machine type)",
        env_alias="EDGE_SENSORS",
    ),
    cfg.Setting(
        "machine_type",
        cfg.choice(*MACHINE_TYPES),
        detect_machine_type,
        "which default sensors to run without a sensors file",
        env_alias="EDGE_MACHINE_TYPE",
    ),
    cfg.Setting(
        "outbox_max_rows",
        cfg.integer(100, 100_000_000),
        1_000_000,
        "readings the outbox keeps while the broker is away",
    ),
    cfg.Setting(
        "outbox_max_age",
        cfg.number(low=60),
        7 * 24 * 3600.0,
        "seconds a reading may wait in the outbox",
    ),
    cfg.Setting(
        "outbox_policy",
        cfg.choice("drop_oldest", "reject_new"),
        "drop_oldest",
        "what a full outbox gives up: its oldest reading, or the new one",
    ),
    cfg.Setting(
        "drain_rate",
        cfg.number(low=1),
        2000.0,
        "readings per second at most when the outbox drains after an outage",
    ),
    cfg.Setting(
        "inflight",
        cfg.integer(1, 1000),
        100,
        "readings published and not yet acknowledged at most (bounds paho's queue)",
    ),
    cfg.Setting(
        "history_retention", cfg.number(low=0.01), 24.0, "hours of readings the history keeps"
    ),
    cfg.Setting("acquire_autostart", cfg.boolean, True, "start sampling when the service starts"),
    cfg.Setting("discovery", cfg.boolean, True, "announce the sensors to Home Assistant"),
    cfg.Setting(
        "discovery_prefix", discovery_prefix, "homeassistant", "Home Assistant's discovery prefix"
    ),
)
