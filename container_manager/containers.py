"""Containers as the API shows them: sparse summaries, redacted inspects, stats, logs."""

from __future__ import annotations

import heapq
import re
from datetime import UTC, datetime
from typing import Any

from container_manager.engine import Engine
from container_manager.errors import Forbidden
from container_manager.policy import SYSTEM_LABEL
from container_manager.specs import MANAGED_LABEL

APP_LABEL = "pyedge.app"
SERVICE_LABEL = "pyedge.service"
REDACTED = "<redacted>"
# The engine's names of a published port's fields (GET /containers/json).
PORT_FIELDS = frozenset({"IP", "PrivatePort", "PublicPort", "Type"})
# A log line longer than this is cut: one runaway line must not fill the answer.
MAX_LINE_CHARS = 16_384


def is_true(labels: dict[str, str] | None, key: str) -> bool:
    """True when a label is set to 'true'."""
    return str((labels or {}).get(key, "")).lower() == "true"


def ownership(labels: dict[str, str]) -> dict[str, Any]:
    """Who a container belongs to, from its labels: PyEdge, PyEdge itself, an app."""
    return {
        "managed": is_true(labels, MANAGED_LABEL),
        "system": is_true(labels, SYSTEM_LABEL),
        "app": labels.get(APP_LABEL),
    }


def summary(raw: dict[str, Any]) -> dict[str, Any]:
    """A container of the engine's sparse listing (GET /containers/json), as we list it."""
    labels = raw.get("Labels") or {}
    names = raw.get("Names") or []
    return {
        "id": raw["Id"],
        "name": names[0].lstrip("/") if names else raw["Id"][:12],
        "image": raw.get("Image"),
        "state": raw.get("State"),
        "status": raw.get("Status"),
        "created": datetime.fromtimestamp(raw.get("Created", 0), UTC).isoformat(),
        "labels": labels,
        # The fields PortSchema declares, and no other: the listing is sent as built here.
        "ports": [
            {key.lower(): value for key, value in port.items() if key in PORT_FIELDS}
            for port in raw.get("Ports") or []
        ],
        **ownership(labels),
    }


def list_containers(engine: Engine, *, all: bool, labels: list[str]) -> list[dict[str, Any]]:
    """The sparse listing: one engine call, no inspect per container."""
    filters = {"label": labels} if labels else None
    raws = engine.call(lambda c: c.api.containers(all=all, filters=filters))
    return [summary(raw) for raw in raws]


def inspect(engine: Engine, ident: str) -> dict[str, Any]:
    """The engine's inspect of a container, environment values redacted."""
    attrs: dict[str, Any] = engine.call(lambda c: c.api.inspect_container(ident))
    config = attrs.get("Config") or {}
    if config.get("Env"):
        # Environment values are where passwords and tokens live; names stay useful.
        config["Env"] = [f"{item.partition('=')[0]}={REDACTED}" for item in config["Env"]]
    return attrs


def redact_app_spec(spec: dict[str, Any]) -> dict[str, Any]:
    """An app spec as stored, each service's environment values redacted (as inspect does)."""
    services = {}
    for name, service in (spec.get("services") or {}).items():
        environment = service.get("environment")
        if isinstance(environment, dict):
            environment = dict.fromkeys(environment, REDACTED)
        elif isinstance(environment, list):
            environment = [f"{str(item).partition('=')[0]}={REDACTED}" for item in environment]
        services[name] = {**service, **({"environment": environment} if environment else {})}
    return {**spec, "services": services}


def describe(attrs: dict[str, Any]) -> dict[str, Any]:
    """An inspected container as GET /containers/<id> shows it: summary and raw attrs."""
    config = attrs.get("Config") or {}
    state = attrs.get("State") or {}
    labels = config.get("Labels") or {}
    return {
        "id": attrs["Id"],
        "name": attrs.get("Name", "").lstrip("/"),
        "image": config.get("Image"),
        "state": state.get("Status"),
        "exit_code": state.get("ExitCode"),
        "health": (state.get("Health") or {}).get("Status"),
        "restart_count": attrs.get("RestartCount", 0),
        "started_at": state.get("StartedAt"),
        "finished_at": state.get("FinishedAt"),
        "labels": labels,
        **ownership(labels),
        "attrs": attrs,
    }


def guard(engine: Engine, ident: str, action: str) -> dict[str, Any]:
    """Inspect a container before `action`; PyEdge's own containers refuse every change."""
    attrs = inspect(engine, ident)
    if is_true((attrs.get("Config") or {}).get("Labels"), SYSTEM_LABEL):
        raise Forbidden(
            f"{attrs.get('Name', ident).lstrip('/')} is a PyEdge system container: "
            f"it cannot be {action} through the API"
        )
    return attrs


def cpu_percent(stats: dict[str, Any]) -> float | None:
    """CPU use in percent of one CPU, from the deltas between two samples (as docker stats)."""
    cpu = stats.get("cpu_stats") or {}
    pre = stats.get("precpu_stats") or {}
    try:
        cpu_delta = cpu["cpu_usage"]["total_usage"] - pre["cpu_usage"]["total_usage"]
        system_delta = cpu["system_cpu_usage"] - pre["system_cpu_usage"]
    except KeyError:
        return None  # the first sample of a container has no previous one
    cpus = cpu.get("online_cpus") or len(cpu["cpu_usage"].get("percpu_usage") or []) or 1
    if system_delta <= 0 or cpu_delta < 0:
        return 0.0
    return round(cpu_delta / system_delta * cpus * 100.0, 2)


def stats(engine: Engine, ident: str) -> dict[str, Any]:
    """One sample of a container's CPU, memory, network and block I/O."""
    # The engine samples twice, a second apart, to give the CPU deltas.
    raw: dict[str, Any] = engine.call(lambda c: c.api.stats(ident, stream=False), slow=True)
    memory = raw.get("memory_stats") or {}
    usage = memory.get("usage")
    # As docker stats does: page cache is not the container's own memory.
    cache = (memory.get("stats") or {}).get("inactive_file") or (memory.get("stats") or {}).get(
        "cache", 0
    )
    used = usage - cache if usage is not None else None
    limit = memory.get("limit")
    networks = raw.get("networks") or {}
    blkio = (raw.get("blkio_stats") or {}).get("io_service_bytes_recursive") or []
    return {
        "id": raw.get("id", ident),
        "read_at": raw.get("read"),
        "cpu_percent": cpu_percent(raw),
        "memory_bytes": used,
        "memory_limit_bytes": limit,
        "memory_percent": round(used / limit * 100.0, 2) if used is not None and limit else None,
        "network_rx_bytes": sum(n.get("rx_bytes", 0) for n in networks.values()),
        "network_tx_bytes": sum(n.get("tx_bytes", 0) for n in networks.values()),
        "block_read_bytes": sum(e["value"] for e in blkio if e.get("op", "").lower() == "read"),
        "block_write_bytes": sum(e["value"] for e in blkio if e.get("op", "").lower() == "write"),
        "pids": (raw.get("pids_stats") or {}).get("current"),
    }


def split_timestamp(line: str) -> tuple[str, str]:
    """'<RFC 3339 ts> <text>' as the engine writes with timestamps=True, into (ts, text)."""
    ts, _, text = line.partition(" ")
    return ts, text


STAMP_RE = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{1,9})?Z$")


def timestamp_key(ts: str) -> tuple[str, int]:
    """A sort key for the engine's RFC 3339 nanosecond stamps (their fractions vary in length).

    Raises ValueError for anything else.
    """
    if not STAMP_RE.match(ts):
        raise ValueError(f"not an engine timestamp: {ts!r}")
    base, _, fraction = ts.rstrip("Z").partition(".")
    return base, int(fraction.ljust(9, "0"))


def order_key(ts: str) -> tuple[str, int]:
    """timestamp_key for the engine's own lines; one without a stamp sorts first."""
    try:
        return timestamp_key(ts)
    except ValueError:
        return "", 0


def logs(
    engine: Engine,
    ident: str,
    *,
    tail: int,
    since: datetime | None,
    until: datetime | None,
    timestamps: bool,
) -> list[dict[str, Any]]:
    """The last `tail` lines of stdout and stderr, merged in time order, each marked."""
    engine.call(lambda c: c.api.inspect_container(ident))  # 404 before anything else
    streams = {}
    for stream in ("stdout", "stderr"):
        raw = engine.call(
            lambda c, s=stream: c.api.logs(
                ident,
                stdout=s == "stdout",
                stderr=s == "stderr",
                timestamps=True,
                tail=tail,
                # docker-py takes naive datetimes only; a float stamp is unambiguous.
                since=since.timestamp() if since else None,
                until=until.timestamp() if until else None,
            ),
            slow=True,
        )
        streams[stream] = [
            (*split_timestamp(line), stream)
            for line in raw.decode("utf-8", "replace").splitlines()
            if line
        ]
    merged = heapq.merge(*streams.values(), key=lambda item: order_key(item[0]))
    lines = list(merged)[-tail:] if tail else list(merged)
    return [
        {"stream": stream, "text": text[:MAX_LINE_CHARS], **({"ts": ts} if timestamps else {})}
        for ts, text, stream in lines
    ]
