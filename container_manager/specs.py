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

from container_manager.pull import REF_PATTERN, parse_ref
from pyedge import fields

# The engine's own rule for container and volume names: at least two characters.
NAME_RE = re.compile(r"^[a-zA-Z0-9][a-zA-Z0-9_.-]{1,127}$")
# A volume a spec names: one character will do in an app, whose volumes are prefixed.
SOURCE_RE = re.compile(r"^[a-zA-Z0-9][a-zA-Z0-9_.-]{0,127}$")
RESTART_RE = re.compile(r"^(no|always|unless-stopped|on-failure(:[0-9]{1,9})?)$")


def at_least(number: int, max_digits: int) -> str:
    """A regex of the decimal integers from `number` up to `max_digits` digits long."""
    digits = str(number)
    longer = f"[1-9][0-9]{{{len(digits)},{max_digits - 1}}}" if max_digits > len(digits) else ""
    same = [
        f"{digits[:i]}[{int(d) + 1}-9][0-9]{{{len(digits) - i - 1}}}"
        for i, d in enumerate(digits)
        if d != "9"
    ]
    return "|".join([*filter(None, [longer]), *same, digits])


# A memory limit: 0 (none), or the engine's minimum of 6 MiB at least, below 2^63 bytes.
MIN_MEMORY = 6 * 1024 * 1024
MEMORY_RE = re.compile(
    r"^0*(?:0[bkmgBKMG]?"
    rf"|(?:{at_least(MIN_MEMORY, 18)})[bB]?"
    rf"|(?:{at_least(MIN_MEMORY // 1024, 15)})[kK]"
    rf"|(?:{at_least(MIN_MEMORY // 1024**2, 12)})[mM]"
    r"|[1-9][0-9]{0,8}[gG])$"
)
_PORT = r"(?:[1-9][0-9]{0,3}|[1-5][0-9]{4}|6[0-4][0-9]{3}|65[0-4][0-9]{2}|655[0-2][0-9]|6553[0-5])"
_OCTET = r"(?:25[0-5]|2[0-4][0-9]|1[0-9]{2}|[1-9]?[0-9])"
PORT_RE = re.compile(
    rf"^(?:(?P<ip>{_OCTET}(?:\.{_OCTET}){{3}}):)?(?:(?P<host>{_PORT})?:)?"
    rf"(?P<container>{_PORT})(?:/(?P<proto>tcp|udp|sctp))?$"
)
# A volume: a named volume or an absolute host path, an absolute target, ro or rw. Paths
# are printable ASCII without spaces (the engine takes a source as it is: a trailing
# space would name another path).
_PATH = r"/[!-9;-~]*"
VOLUME_RE = re.compile(rf"^(?:{_PATH}|{SOURCE_RE.pattern[1:-1]}):{_PATH}(?::(?:ro|rw))?$")
DEVICE_RE = re.compile(r"^/[^:]*(?::[^:]*(?::[rwm]+)?)?$")
# The capabilities every kernel the engine runs on knows (up to CAP_AUDIT_READ, 3.16),
# as the engine takes them: upper case, with or without CAP_; or ALL.
_CAPABILITIES = [
    "CHOWN",
    "DAC_OVERRIDE",
    "DAC_READ_SEARCH",
    "FOWNER",
    "FSETID",
    "KILL",
    "SETGID",
    "SETUID",
    "SETPCAP",
    "LINUX_IMMUTABLE",
    "NET_BIND_SERVICE",
    "NET_BROADCAST",
    "NET_ADMIN",
    "NET_RAW",
    "IPC_LOCK",
    "IPC_OWNER",
    "SYS_MODULE",
    "SYS_RAWIO",
    "SYS_CHROOT",
    "SYS_PTRACE",
    "SYS_PACCT",
    "SYS_ADMIN",
    "SYS_BOOT",
    "SYS_NICE",
    "SYS_RESOURCE",
    "SYS_TIME",
    "SYS_TTY_CONFIG",
    "MKNOD",
    "LEASE",
    "AUDIT_WRITE",
    "AUDIT_CONTROL",
    "SETFCAP",
    "MAC_OVERRIDE",
    "MAC_ADMIN",
    "SYSLOG",
    "WAKE_ALARM",
    "BLOCK_SUSPEND",
    "AUDIT_READ",
]
CAPABILITIES = ["ALL", *_CAPABILITIES, *(f"CAP_{name}" for name in _CAPABILITIES)]


def json_pattern(regex: re.Pattern[str]) -> str:
    """A Python regex as a JSON Schema pattern: its named groups unnamed."""
    return re.sub(r"\(\?P<\w+>", "(", regex.pattern)


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
    match = PORT_RE.fullmatch(raw)
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
    if not VOLUME_RE.fullmatch(raw):
        raise ma.ValidationError(
            f"{raw!r} is not volume_name:/target[:ro|rw] or /host/path:/target[:ro|rw] "
            "(printable ASCII: no spaces or control characters)"
        )
    source, target = parts[0], parts[1]
    mode = parts[2] if len(parts) == 3 else "rw"
    if mode not in ("ro", "rw"):
        raise ma.ValidationError(f"{raw!r}: mode is ro or rw")
    if not target.startswith("/"):
        raise ma.ValidationError(f"{raw!r}: the target must be an absolute path")
    bind = source.startswith(("/", ".", "~"))
    if bind and not source.startswith("/"):
        raise ma.ValidationError(f"{raw!r}: a host path must be absolute")
    if not bind and not SOURCE_RE.fullmatch(source):
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


# A string shlex can split (quotes closed, no lone trailing backslash) with a word in it.
SHELL_WORDS = r"""^(?=[\s\S]*\S)(?:[^'"\\]|\\[\s\S]|'[^']*'|"(?:[^"\\]|\\[\s\S])*")*$"""
COMMAND_DOC = {
    "oneOf": [
        {"type": "string", "pattern": SHELL_WORDS, "description": "run by the shell form"},
        {"type": "array", "items": {"type": "string"}, "minItems": 1},
    ]
}


class CommandField(ma.fields.Field):
    """A command as a string (run by the shell form of the image) or a list of strings."""

    def __init__(self, **kwargs: Any) -> None:
        metadata = {**COMMAND_DOC, **kwargs.pop("metadata", {})}
        super().__init__(metadata=metadata, **kwargs)

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


ENVIRONMENT_DOC = {
    "oneOf": [
        {
            "type": "object",
            "additionalProperties": {
                "nullable": True,
                "anyOf": [{"type": "string"}, {"type": "number"}, {"type": "boolean"}],
            },
            "x-propertyNames": {"pattern": "^[^=]+$"},
        },
        {"type": "array", "items": {"type": "string", "pattern": "^[^=]+="}},
    ]
}


class EnvironmentField(ma.fields.Field):
    """Environment as a mapping or as a list of 'KEY=value', loaded into a mapping."""

    def __init__(self, **kwargs: Any) -> None:
        metadata = {**ENVIRONMENT_DOC, **kwargs.pop("metadata", {})}
        super().__init__(metadata=metadata, **kwargs)

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


def _image_reference(ref: str) -> None:
    try:
        parse_ref(ref)
    except ValueError as exc:
        raise ma.ValidationError(str(exc)) from exc


def _capabilities() -> ma.fields.List:
    return ma.fields.List(
        ma.fields.String(validate=ma.validate.OneOf(CAPABILITIES)), load_default=list
    )


class ContainerSpecSchema(ma.Schema):
    """What a container runs and may reach, in compose's field names."""

    image = ma.fields.String(
        required=True,
        validate=_image_reference,
        metadata={"pattern": REF_PATTERN, "description": "an image reference, e.g. app:1.2"},
    )
    command = CommandField(load_default=None)
    entrypoint = CommandField(load_default=None)
    environment = EnvironmentField(load_default=dict)
    ports = ma.fields.List(
        ShortSyntax(parse_port, metadata={"pattern": json_pattern(PORT_RE)}), load_default=list
    )
    volumes = ma.fields.List(
        ShortSyntax(parse_volume, metadata={"pattern": VOLUME_RE.pattern}), load_default=list
    )
    restart = ma.fields.String(
        load_default="no",
        validate=fields.FullMatch(
            RESTART_RE, error="restart is no, always, unless-stopped or on-failure[:N]"
        ),
    )
    labels = ma.fields.Dict(keys=ma.fields.String(), values=ma.fields.String(), load_default=dict)
    user = ma.fields.String(load_default=None)
    working_dir = ma.fields.String(load_default=None)
    hostname = ma.fields.String(load_default=None)
    healthcheck = ma.fields.Nested(HealthcheckSchema, load_default=None)
    privileged = fields.Boolean(load_default=False)
    network_mode = ma.fields.String(load_default=None)
    pid = ma.fields.String(load_default=None)
    ipc = ma.fields.String(load_default=None)
    # The engine knows no other value for these two (docker-py refuses others itself).
    uts = ma.fields.String(load_default=None, validate=ma.validate.OneOf(["host"]))
    userns_mode = ma.fields.String(load_default=None, validate=ma.validate.OneOf(["host"]))
    devices = ma.fields.List(
        ShortSyntax(parse_device, metadata={"pattern": DEVICE_RE.pattern}), load_default=list
    )
    cap_add = _capabilities()
    cap_drop = _capabilities()
    security_opt = _strings(load_default=list)
    mem_limit = ma.fields.String(
        load_default=None,
        validate=fields.FullMatch(MEMORY_RE, error="0 (no limit) or at least 6m, e.g. 256m or 1g"),
    )
    cpus = ma.fields.Float(load_default=None, validate=ma.validate.Range(min=0.01, max=1024))
    pids_limit = ma.fields.Integer(load_default=None, validate=ma.validate.Range(min=1))


class ContainerCreateSchema(ContainerSpecSchema):
    """POST /containers: a spec, a name, and whether to start it."""

    name = ma.fields.String(
        load_default=None, validate=fields.FullMatch(NAME_RE, error="not a container name")
    )
    start = fields.Boolean(load_default=True, metadata={"description": "start it at once"})


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
