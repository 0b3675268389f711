"""The security policy on Docker's own request bodies: a container create, a volume's options.

The whole create body is read, field by field, in Docker's names. Fields that reach the
host go through the container-manager's Policy (the same rules as the REST API's specs);
fields that loosen a confinement are refused when set; a field this table does not know
is refused when set and never passed on (one left at its zero value is dropped), so that
a newer client cannot slip a new host-facing field past the policy.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any

from container_manager.policy import Policy

Violation = dict[str, str]

# Config fields (the container's own process and metadata) that reach nothing of the host.
CONFIG_FIELDS = frozenset({
    "Hostname", "Domainname", "User", "AttachStdin", "AttachStdout", "AttachStderr",
    "ExposedPorts", "Tty", "OpenStdin", "StdinOnce", "Env", "Cmd", "Healthcheck",
    "ArgsEscaped", "Image", "Volumes", "WorkingDir", "Entrypoint", "NetworkDisabled",
    "MacAddress", "OnBuild", "StopSignal", "StopTimeout", "Shell", "Labels",
})  # fmt: skip
# HostConfig fields that are resource limits, naming, restart and DNS: never the host's.
SAFE_HOST_FIELDS = frozenset({
    "ContainerIDFile", "PortBindings", "RestartPolicy", "AutoRemove", "ConsoleSize",
    "Annotations", "CapDrop", "Dns", "DnsOptions", "DnsSearch", "ExtraHosts", "GroupAdd",
    "Links", "PublishAllPorts", "ReadonlyRootfs", "StorageOpt", "Tmpfs", "ShmSize", "Init",
    "CpuShares", "Memory", "NanoCpus", "BlkioWeight", "BlkioWeightDevice",
    "BlkioDeviceReadBps", "BlkioDeviceWriteBps", "BlkioDeviceReadIOps",
    "BlkioDeviceWriteIOps", "CpuPeriod", "CpuQuota", "CpusetCpus", "CpusetMems",
    "KernelMemory", "KernelMemoryTCP", "MemoryReservation", "MemorySwap",
    "MemorySwappiness", "PidsLimit", "Ulimits", "CpuCount", "CpuPercent",
    "IOMaximumIOps", "IOMaximumBandwidth",
})  # fmt: skip
# HostConfig fields refused whenever they are set, with why.
REFUSED_HOST_FIELDS = {
    "VolumeDriver": "volume plugins run with the host's privileges",
    "VolumesFrom": "it copies another container's mounts (a PyEdge container's secrets); "
    "name the volumes instead",
    "CgroupParent": "a cgroup parent escapes the engine's resource accounting",
    "Cgroup": "joining another container's cgroup is not granted",
    "Sysctls": "sysctls change the kernel's settings; none is granted",
    "DeviceRequests": "device requests (GPUs) reach the host's devices; none is granted",
    "DeviceCgroupRules": "device cgroup rules open the host's devices",
    "OomKillDisable": "a container the OOM killer may not kill can starve the device",
    "CpuRealtimePeriod": "real-time scheduling can starve the device",
    "CpuRealtimeRuntime": "real-time scheduling can starve the device",
    "MaskedPaths": "it unmasks the host's /proc and /sys files (systempaths=unconfined)",
    "ReadonlyPaths": "it unmasks the host's /proc and /sys files (systempaths=unconfined)",
}
# Values of the fields that only select the engine's defaults.
DEFAULT_RUNTIMES = ("", "runc")
DEFAULT_ISOLATION = ("", "default")
SAFE_LOG_DRIVERS = ("", "json-file", "local", "none", "journald")
SAFE_MOUNT_TYPES = ("bind", "volume", "tmpfs")
TOP_LEVEL = frozenset({"HostConfig", "NetworkingConfig"})


def is_zero(value: Any) -> bool:
    """True for a field left at its zero value: absent, null, "", 0, false, [] or {}."""
    return value is None or value in ("", 0, False) or value == [] or value == {}


def check_create(body: Mapping[str, Any], policy: Policy) -> tuple[dict[str, Any], list[Violation]]:
    """The body to pass on (known fields only), and every violation of the policy."""
    found: list[Violation] = []

    def deny(name: str, value: Any, reason: str) -> None:
        found.append({"field": name, "value": _short(value), "reason": reason})

    host = body.get("HostConfig") or {}
    if not isinstance(host, dict):
        deny("HostConfig", host, "not an object")
        host = {}
    passed: dict[str, Any] = {}
    for name, value in body.items():
        if name in CONFIG_FIELDS or name in TOP_LEVEL:
            passed[name] = value
        elif not is_zero(value):
            deny(name, value, "a field the gateway does not know is not passed on")
    passed_host: dict[str, Any] = {}
    for name, value in host.items():
        if name in SAFE_HOST_FIELDS or name in HOST_CHECKS:
            passed_host[name] = value
        elif name in REFUSED_HOST_FIELDS:
            # An empty list of masked paths unmasks everything: only null is the default.
            unset = value is None if name in ("MaskedPaths", "ReadonlyPaths") else is_zero(value)
            if unset:
                passed_host[name] = value
            else:
                deny(f"HostConfig.{name}", value, REFUSED_HOST_FIELDS[name])
        elif not is_zero(value):
            deny(f"HostConfig.{name}", value, "a field the gateway does not know is not passed on")
    if host or "HostConfig" in body:
        passed["HostConfig"] = passed_host
    for name, check in HOST_CHECKS.items():
        value = host.get(name)
        if not is_zero(value):
            for violation in check(value, policy):
                deny(f"HostConfig.{name}", violation["value"], violation["reason"])
    for violation in policy.check({"labels": body.get("Labels") or {}}):
        deny("Labels", violation["value"], violation["reason"])
    return passed, found


def _policy(key: str, convert: Callable[[Any], Any] = lambda value: value) -> Callable[..., Any]:
    """A check of one HostConfig field by the Policy's rule for spec field `key`."""

    def check(value: Any, policy: Policy) -> list[Violation]:
        return policy.check({key: convert(value)})

    return check


def _binds(binds: Iterable[str]) -> list[dict[str, Any]]:
    """Docker's Binds ("source:target[:options]") as the Policy reads compose volumes."""
    volumes = []
    for raw in binds:
        source = str(raw).split(":", 1)[0]
        volumes.append({"source": source, "bind": source.startswith("/"), "raw": raw})
    return volumes


def _devices(devices: Iterable[Mapping[str, Any]]) -> list[dict[str, str]]:
    """Docker's Devices as the Policy reads compose devices."""
    return [
        {
            "host": str(device.get("PathOnHost") or ""),
            "raw": ":".join(
                str(device.get(key) or "")
                for key in ("PathOnHost", "PathInContainer", "CgroupPermissions")
            ),
        }
        for device in devices
    ]


def _mounts(mounts: Iterable[Mapping[str, Any]], policy: Policy) -> list[Violation]:
    """Docker's Mounts: binds by the Policy, volumes without host-path options, tmpfs."""
    found: list[Violation] = []
    for mount in mounts:
        kind = mount.get("Type") or "volume"
        raw = f"type={kind},source={mount.get('Source') or ''},target={mount.get('Target')}"
        if kind not in SAFE_MOUNT_TYPES:
            found.append({"value": raw, "reason": f"{kind} mounts are not granted"})
        elif kind == "bind":
            source = str(mount.get("Source") or "")
            volume = {"source": source, "bind": True, "raw": raw}
            found.extend(policy.check({"volumes": [volume]}))
        elif kind == "volume":
            driver = (mount.get("VolumeOptions") or {}).get("DriverConfig") or {}
            reason = volume_options_refusal(driver.get("Name"), driver.get("Options"))
            if reason:
                found.append({"value": raw, "reason": reason})
    return found


def volume_options_refusal(driver: str | None, options: Mapping[str, Any] | None) -> str | None:
    """Why a volume's driver or options are refused (a plugin; a bind of a host path)."""
    if driver not in (None, "", "local"):
        return f"volume driver {driver}: volume plugins run with the host's privileges"
    options = options or {}
    kind = str(options.get("type") or "").lower()
    flags = {flag.strip().lower() for flag in str(options.get("o") or "").split(",")}
    if kind in ("none", "bind") or flags & {"bind", "rbind"}:
        return (
            "a local volume with o=bind mounts a host path: only named volumes and the "
            "granted host directories (bind mounts) may be used"
        )
    return None


def _namespace(key: str) -> Callable[..., Any]:
    return _policy(key, str)


def _cgroupns(value: Any, policy: Policy) -> list[Violation]:
    if str(value) == "host" and not policy.allow_host_namespaces:
        return [{"value": str(value), "reason": "the host's cgroup namespace is not granted"}]
    return []


def _one_of(allowed: tuple[str, ...], reason: str) -> Callable[..., Any]:
    def check(value: Any, policy: Policy) -> list[Violation]:
        return [] if str(value) in allowed else [{"value": str(value), "reason": reason}]

    return check


def _log_config(value: Any, policy: Policy) -> list[Violation]:
    driver = str((value or {}).get("Type") or "")
    if driver in SAFE_LOG_DRIVERS:
        return []
    return [
        {
            "value": driver,
            "reason": f"log driver {driver} sends the container's output off the device "
            f"(allowed: {', '.join(d for d in SAFE_LOG_DRIVERS if d)})",
        }
    ]


def _oom_score(value: Any, policy: Policy) -> list[Violation]:
    if isinstance(value, int) and value < 0:
        return [{"value": str(value), "reason": "a negative OOM score protects it over the device"}]
    return []


# HostConfig fields checked by the Policy or a rule of their own (when not zero).
HOST_CHECKS: dict[str, Callable[[Any, Policy], list[Violation]]] = {
    "Privileged": _policy("privileged"),
    "NetworkMode": _namespace("network_mode"),
    "PidMode": _namespace("pid"),
    "IpcMode": _namespace("ipc"),
    "UTSMode": _namespace("uts"),
    "UsernsMode": _namespace("userns_mode"),
    "CgroupnsMode": _cgroupns,
    "Binds": _policy("volumes", _binds),
    "Mounts": _mounts,
    "Devices": _policy("devices", _devices),
    "CapAdd": _policy("cap_add"),
    "SecurityOpt": _policy("security_opt"),
    "Runtime": _one_of(DEFAULT_RUNTIMES, "only the engine's default runtime (runc) is granted"),
    "Isolation": _one_of(DEFAULT_ISOLATION, "only the default isolation is granted"),
    "LogConfig": _log_config,
    "OomScoreAdj": _oom_score,
}


def _short(value: Any) -> str:
    text = str(value)
    return text if len(text) <= 200 else text[:197] + "..."
