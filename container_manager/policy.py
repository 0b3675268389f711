"""The security policy: what a container spec may ask of the host, deny by default.

A container with the Docker socket, the host's namespaces or a system directory is root on
the device. Every spec is checked in full before anything reaches the engine, and a denial
lists every violation with its reason, so that one answer tells the user all to fix.
"""

from __future__ import annotations

import os
import posixpath
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

# Host paths no bind mount may reach, whatever the settings grant.
SYSTEM_DIRS = ("/", "/etc", "/proc", "/sys", "/dev", "/boot", "/run")
DOCKER_SOCKETS = ("/var/run/docker.sock", "/run/docker.sock")
NAMESPACE_FIELDS = ("network_mode", "pid", "ipc", "uts", "userns_mode")
# security_opt values that switch a confinement off.
UNCONFINED = (
    "seccomp=unconfined",
    "seccomp:unconfined",
    "apparmor=unconfined",
    "apparmor:unconfined",
    "label=disable",
    "label:disable",
    "systempaths=unconfined",
)
SYSTEM_LABEL = "pyedge.system"


@dataclass(frozen=True)
class Policy:
    """What the node's settings grant beyond the defaults."""

    allow_privileged: bool = False
    allow_host_namespaces: bool = False
    bind_dirs: tuple[str, ...] = ()
    devices: tuple[str, ...] = ()
    cap_add: tuple[str, ...] = field(default_factory=tuple)

    @classmethod
    def from_settings(cls, settings: Mapping[str, Any]) -> Policy:
        """The policy of a service's settings."""
        return cls(
            allow_privileged=settings["allow_privileged"],
            allow_host_namespaces=settings["allow_host_namespaces"],
            bind_dirs=tuple(_normal(path) for path in settings["bind_dirs"]),
            devices=tuple(_normal(path) for path in settings["devices"]),
            cap_add=tuple(_cap(cap) for cap in settings["cap_add"]),
        )

    def check(self, spec: Mapping[str, Any], where: str = "") -> list[dict[str, str]]:
        """Every violation of a loaded container spec: [{"field", "value", "reason"}]."""
        found: list[dict[str, str]] = []

        def deny(name: str, value: Any, reason: str) -> None:
            found.append({"field": f"{where}{name}", "value": str(value), "reason": reason})

        if spec.get("privileged") and not self.allow_privileged:
            deny("privileged", True, "privileged containers are root on the host")
        for name in NAMESPACE_FIELDS:
            value = spec.get(name)
            if value == "host" and not self.allow_host_namespaces:
                deny(name, value, f"the host's {_namespace(name)} namespace is not granted")
        for volume in spec.get("volumes", ()):
            reason = self._bind_denied(volume["source"]) if volume["bind"] else None
            if reason:
                deny("volumes", volume["raw"], reason)
        for device in spec.get("devices", ()):
            if _normal(device["host"]) not in self.devices:
                deny(
                    "devices", device["raw"], f"device {device['host']} is not granted on this node"
                )
        for cap in spec.get("cap_add", ()):
            if _cap(cap) not in self.cap_add:
                deny("cap_add", cap, f"capability {_cap(cap)} is not in the allow-list")
        for option in spec.get("security_opt", ()):
            if option.replace(" ", "") in UNCONFINED:
                deny("security_opt", option, "switching off seccomp, AppArmor or SELinux is denied")
        if str(spec.get("labels", {}).get(SYSTEM_LABEL, "")).lower() == "true":
            deny("labels", SYSTEM_LABEL, "only PyEdge's own containers carry pyedge.system")
        return found

    def _bind_denied(self, source: str) -> str | None:
        # Symlinks are resolved as the engine will (it runs on this host in solo mode), so
        # a link inside a granted directory cannot point the mount at /etc.
        path = _normal(os.path.realpath(_normal(source)))
        if path in DOCKER_SOCKETS or posixpath.basename(path) == "docker.sock":
            return "the Docker socket gives root on the host"
        for system in SYSTEM_DIRS:
            if path == system or (system != "/" and _inside(path, system)):
                return f"{system} is a system directory"
        if not any(_inside(path, allowed) for allowed in self.bind_dirs):
            return f"bind mount of {path}: only named volumes and the granted host directories"
        return None


def _normal(path: str) -> str:
    return posixpath.normpath("/" + path.strip().lstrip("/"))


def _inside(path: str, directory: str) -> bool:
    return path == directory or path.startswith(directory.rstrip("/") + "/")


def _cap(cap: str) -> str:
    cap = cap.strip().upper()
    return cap.removeprefix("CAP_")


def _namespace(name: str) -> str:
    return {"network_mode": "network", "userns_mode": "user"}.get(name, name)


def check_all(
    policy: Policy, specs: Iterable[tuple[str, Mapping[str, Any]]]
) -> list[dict[str, str]]:
    """Every violation of several specs, each field prefixed with its spec's name."""
    return [found for where, spec in specs for found in policy.check(spec, where)]
