"""Container specs in compose's field names: the schema, and its translation for docker-py.

The same spec is the body of POST /containers and each service of an app. The dangerous
fields (privileged, host namespaces, devices, cap_add, security_opt, bind mounts) are
accepted here on purpose: the policy, not a validation error, answers them with reasons.
"""

from __future__ import annotations

import hashlib
import json
import re
import shlex
from collections.abc import Callable
from typing import Any

import marshmallow as ma

NAME_RE = re.compile(r"^[a-zA-Z0-9][a-zA-Z0-9_.-]{0,127}$")
RESTART_RE = re.compile(r"^(no|always|unless-stopped|on-failure(:\d+)?)$")
MEMORY_RE = re.compile(r"^\d+[bkmgBKMG]?$")
PORT_RE = re.compile(
    r"^(?:(?P<ip>\d{1,3}(?:\.\d{1,3}){3}):)?(?:(?P<host>\d{1,5})?:)?"
    r"(?P<container>\d{1,5})(?:/(?P<proto>tcp|udp|sctp))?$"
)
MANAGED_LABEL = "pyedge.managed"


class ShortSyntax(ma.fields.String):
    """A string in compose's short syntax, loaded by `parse` into a dict with the raw text."""

    def __init__(self, parse: Callable[[str], dict[str, Any]], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.parse = parse

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> Any:
        raw = super()._deserialize(value, attr, data, **kwargs)
        return {"raw": raw, **self.parse(raw)}

    def _serialize(self, value: Any, attr: str | None, obj: Any, **kwargs: Any) -> Any:
        return value["raw"] if isinstance(value, dict) else value


def parse_port(raw: str) -> dict[str, Any]:
    """'[ip:][host:]container[/proto]', as compose writes ports."""
    match = PORT_RE.match(raw.strip())
    if not match:
        raise ma.ValidationError(f"{raw!r} is not [ip:][host_port:]container_port[/proto]")
    host = match["host"]
    ports = [int(match["container"])] + ([int(host)] if host else [])
    if not all(0 < port < 65536 for port in ports):
        raise ma.ValidationError(f"{raw!r}: ports are 1-65535")
    return {
        "host_ip": match["ip"],
        "host_port": int(host) if host else None,
        "container_port": int(match["container"]),
        "protocol": match["proto"] or "tcp",
    }


def parse_volume(raw: str) -> dict[str, Any]:
    """'source:target[:mode]': a named volume, or a bind mount when source is a path."""
    parts = raw.split(":")
    if len(parts) not in (2, 3) or not all(parts[:2]):
        raise ma.ValidationError(f"{raw!r} is not source:target[:ro|rw]")
    if any(char.isspace() or not char.isprintable() for char in raw):
        # The engine takes a source as it is: a trailing space would name another path.
        raise ma.ValidationError(f"{raw!r}: no spaces or control characters")
    source, target = parts[0], parts[1]
    mode = parts[2] if len(parts) == 3 else "rw"
    if mode not in ("ro", "rw"):
        raise ma.ValidationError(f"{raw!r}: mode is ro or rw")
    if not target.startswith("/"):
        raise ma.ValidationError(f"{raw!r}: the target must be an absolute path")
    bind = source.startswith(("/", ".", "~"))
    if bind and not source.startswith("/"):
        raise ma.ValidationError(f"{raw!r}: a host path must be absolute")
    if not bind and not NAME_RE.match(source):
        raise ma.ValidationError(f"{raw!r}: {source!r} is not a volume name")
    return {"source": source, "target": target, "mode": mode, "bind": bind}


def parse_device(raw: str) -> dict[str, Any]:
    """'host_path[:container_path[:perms]]', as compose writes devices."""
    parts = raw.split(":")
    if not 1 <= len(parts) <= 3 or not parts[0].startswith("/"):
        raise ma.ValidationError(f"{raw!r} is not host_path[:container_path[:rwm]]")
    host = parts[0]
    container = parts[1] if len(parts) > 1 and parts[1] else host
    perms = parts[2] if len(parts) == 3 else "rwm"
    if not perms or set(perms) - set("rwm"):
        raise ma.ValidationError(f"{raw!r}: permissions are letters of rwm")
    return {"host": host, "container": container, "perms": perms}


class CommandField(ma.fields.Field):
    """A command as a string (run by the shell form of the image) or a list of strings."""

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> Any:
        if isinstance(value, str) and value.strip():
            try:
                shlex.split(value)  # as docker-py will split it, before sending anything
            except ValueError as exc:
                raise ma.ValidationError(f"cannot split {value!r}: {exc}") from exc
            return value
        if isinstance(value, list) and value and all(isinstance(item, str) for item in value):
            return value
        raise ma.ValidationError("expected a non-empty string or list of strings")


class EnvironmentField(ma.fields.Field):
    """Environment as a mapping or as a list of 'KEY=value', loaded into a mapping."""

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> Any:
        if isinstance(value, list):
            pairs = {}
            for item in value:
                if not isinstance(item, str) or "=" not in item:
                    raise ma.ValidationError(f"{item!r} is not KEY=value")
                key, _, val = item.partition("=")
                pairs[key] = val
            value = pairs
        if not isinstance(value, dict):
            raise ma.ValidationError("expected a mapping or a list of KEY=value")
        result = {}
        for key, val in value.items():
            if not isinstance(key, str) or not key or "=" in key:
                raise ma.ValidationError(f"{key!r} is not a variable name")
            if not isinstance(val, str | int | float | bool) and val is not None:
                raise ma.ValidationError(f"{key}: values are strings or numbers")
            result[key] = "" if val is None else str(val)
        return result


class HealthcheckSchema(ma.Schema):
    """A container health check; times in seconds."""

    test = CommandField(required=True, metadata={"description": "list (CMD form) or shell string"})
    interval = ma.fields.Float(load_default=30.0, validate=ma.validate.Range(min=0.1))
    timeout = ma.fields.Float(load_default=30.0, validate=ma.validate.Range(min=0.1))
    retries = ma.fields.Integer(load_default=3, validate=ma.validate.Range(min=1))
    start_period = ma.fields.Float(load_default=0.0, validate=ma.validate.Range(min=0))


def _strings(**kwargs: Any) -> ma.fields.List:
    return ma.fields.List(ma.fields.String(validate=ma.validate.Length(min=1)), **kwargs)


class ContainerSpecSchema(ma.Schema):
    """What a container runs and may reach, in compose's field names."""

    image = ma.fields.String(required=True, validate=ma.validate.Length(min=1, max=255))
    command = CommandField(load_default=None)
    entrypoint = CommandField(load_default=None)
    environment = EnvironmentField(load_default=dict)
    ports = ma.fields.List(ShortSyntax(parse_port), load_default=list)
    volumes = ma.fields.List(ShortSyntax(parse_volume), load_default=list)
    restart = ma.fields.String(
        load_default="no",
        validate=ma.validate.Regexp(
            RESTART_RE, error="restart is no, always, unless-stopped or on-failure[:N]"
        ),
    )
    labels = ma.fields.Dict(keys=ma.fields.String(), values=ma.fields.String(), load_default=dict)
    user = ma.fields.String(load_default=None)
    working_dir = ma.fields.String(load_default=None)
    hostname = ma.fields.String(load_default=None)
    healthcheck = ma.fields.Nested(HealthcheckSchema, load_default=None)
    privileged = ma.fields.Boolean(load_default=False)
    network_mode = ma.fields.String(load_default=None)
    pid = ma.fields.String(load_default=None)
    ipc = ma.fields.String(load_default=None)
    # The engine knows no other value for these two (docker-py refuses others itself).
    uts = ma.fields.String(load_default=None, validate=ma.validate.OneOf(["host"]))
    userns_mode = ma.fields.String(load_default=None, validate=ma.validate.OneOf(["host"]))
    devices = ma.fields.List(ShortSyntax(parse_device), load_default=list)
    cap_add = _strings(load_default=list)
    cap_drop = _strings(load_default=list)
    security_opt = _strings(load_default=list)
    mem_limit = ma.fields.String(
        load_default=None, validate=ma.validate.Regexp(MEMORY_RE, error="e.g. 256m or 1g")
    )
    cpus = ma.fields.Float(load_default=None, validate=ma.validate.Range(min=0.01, max=1024))
    pids_limit = ma.fields.Integer(load_default=None, validate=ma.validate.Range(min=1))


class ContainerCreateSchema(ContainerSpecSchema):
    """POST /containers: a spec, a name, and whether to start it."""

    name = ma.fields.String(
        load_default=None, validate=ma.validate.Regexp(NAME_RE, error="not a container name")
    )
    start = ma.fields.Boolean(load_default=True, metadata={"description": "start it at once"})


def spec_hash(raw_spec: Any) -> str:
    """A short stable hash of a spec as given, to tell when a container must be recreated."""
    canonical = json.dumps(raw_spec, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]


def _restart_policy(restart: str) -> dict[str, Any]:
    name, _, count = restart.partition(":")
    policy: dict[str, Any] = {"Name": "" if name == "no" else name}
    if count:
        policy["MaximumRetryCount"] = int(count)
    return policy


def _nanoseconds(seconds: float) -> int:
    return int(seconds * 1_000_000_000)


def _healthcheck(check: dict[str, Any]) -> dict[str, Any]:
    test = check["test"]
    return {
        "test": ["CMD-SHELL", test] if isinstance(test, str) else test,
        "interval": _nanoseconds(check["interval"]),
        "timeout": _nanoseconds(check["timeout"]),
        "retries": check["retries"],
        "start_period": _nanoseconds(check["start_period"]),
    }


def create_kwargs(
    spec: dict[str, Any],
    *,
    volume_names: dict[str, str] | None = None,
    restart: bool = True,
) -> dict[str, Any]:
    """docker-py's containers.create() arguments for a loaded spec.

    `volume_names` renames named volumes (an app's are prefixed with its name); with
    `restart=False` the engine restarts nothing (the reconciler does, with backoff).
    """
    renamed = volume_names or {}
    kwargs: dict[str, Any] = {
        "image": spec["image"],
        "command": spec["command"],
        "entrypoint": spec["entrypoint"],
        "environment": spec["environment"],
        "labels": {**spec["labels"], MANAGED_LABEL: "true"},
        "user": spec["user"],
        "working_dir": spec["working_dir"],
        "hostname": spec["hostname"],
        "privileged": spec["privileged"],
        "network_mode": spec["network_mode"],
        "pid_mode": spec["pid"],
        "ipc_mode": spec["ipc"],
        "uts_mode": spec["uts"],
        "userns_mode": spec["userns_mode"],
        "cap_add": spec["cap_add"] or None,
        "cap_drop": spec["cap_drop"] or None,
        "security_opt": spec["security_opt"] or None,
        "devices": [f"{d['host']}:{d['container']}:{d['perms']}" for d in spec["devices"]] or None,
        "mem_limit": spec["mem_limit"],
        "nano_cpus": int(spec["cpus"] * 1e9) if spec["cpus"] else None,
        "pids_limit": spec["pids_limit"],
        "restart_policy": _restart_policy(spec["restart"] if restart else "no"),
        "healthcheck": _healthcheck(spec["healthcheck"]) if spec["healthcheck"] else None,
    }
    if spec["ports"]:
        kwargs["ports"] = _ports(spec["ports"])
    if spec["volumes"]:
        kwargs["volumes"] = {
            volume["source"]
            if volume["bind"]
            else renamed.get(volume["source"], volume["source"]): {
                "bind": volume["target"],
                "mode": volume["mode"],
            }
            for volume in spec["volumes"]
        }
    return {key: value for key, value in kwargs.items() if value is not None}


def _ports(ports: list[dict[str, Any]]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for port in ports:
        key = f"{port['container_port']}/{port['protocol']}"
        binding = (port["host_ip"], port["host_port"]) if port["host_ip"] else port["host_port"]
        result.setdefault(key, []).append(binding)
    return result
