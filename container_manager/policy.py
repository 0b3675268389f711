"""The security policy: what a container spec may ask of the host, deny by default.

A container with the Docker socket, the host's namespaces or a system directory is root on
the device. Every spec is checked in full before anything reaches the engine, and a denial
lists every violation with its reason, so that one answer tells the user all to fix.
"""

from __future__ import annotations

import os
import posixpath
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

# Host paths no bind mount may reach (nor anything inside them), whatever the settings grant.
SYSTEM_DIRS = (
    "/etc", "/proc", "/sys", "/dev", "/boot", "/run", "/var/run", "/usr", "/lib", "/lib64",
    "/bin", "/sbin", "/root", "/var/lib/docker", "/var/lib/containerd",
)  # fmt: skip
DOCKER_SOCKET_NAME = "docker.sock"
# Namespace fields, and the values that share the host's or another container's namespace.
NAMESPACE_FIELDS = ("network_mode", "pid", "ipc", "uts", "userns_mode")
JOIN_PREFIXES = ("container:", "service:")
# The only security_opt values allowed: every other one can loosen a confinement
# (seccomp=unconfined, a permissive seccomp profile, apparmor=<profile>, label=disable...).
SAFE_SECURITY_OPTS = ("no-new-privileges", "no-new-privileges=true", "no-new-privileges:true")
RESERVED_LABEL_PREFIX = "pyedge."
SYSTEM_LABEL = "pyedge.system"


@dataclass(frozen=True)
class Policy:
    """What the node's settings grant beyond the defaults."""

    allow_privileged: bool = False
    allow_host_namespaces: bool = False
    bind_dirs: tuple[str, ...] = ()
    devices: tuple[str, ...] = ()
    cap_add: tuple[str, ...] = field(default_factory=tuple)
    # The engine's socket when it is not at a usual place (DOCKER_HOST=unix:///srv/x.sock).
    engine_socket: str | None = None

    @classmethod
    def from_settings(cls, settings: Mapping[str, Any], engine_socket: str | None) -> Policy:
        """The policy of a service's settings."""
        return cls(
            allow_privileged=settings["allow_privileged"],
            allow_host_namespaces=settings["allow_host_namespaces"],
            bind_dirs=tuple(_normal(path) for path in settings["bind_dirs"]),
            devices=tuple(_normal(path) for path in settings["devices"]),
            cap_add=tuple(_cap(cap) for cap in settings["cap_add"]),
            engine_socket=_normal(engine_socket) if engine_socket else None,
        )

    def check(self, spec: Mapping[str, Any], where: str = "") -> list[dict[str, str]]:
        """Every violation of a loaded container spec: [{"field", "value", "reason"}]."""
        found: list[dict[str, str]] = []

        def deny(name: str, value: Any, reason: str) -> None:
            found.append({"field": f"{where}{name}", "value": str(value), "reason": reason})

        if spec.get("privileged") and not self.allow_privileged:
            deny("privileged", True, "privileged containers are root on the host")
        for name in NAMESPACE_FIELDS:
            value = str(spec.get(name) or "")
            if self.allow_host_namespaces:
                continue
            if value == "host":
                deny(name, value, f"the host's {_namespace(name)} namespace is not granted")
            elif value.startswith(JOIN_PREFIXES):
                deny(
                    name,
                    value,
                    f"joining another container's {_namespace(name)} namespace is not granted "
                    "(it may have the host's)",
                )
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
            if option.strip().lower() not in SAFE_SECURITY_OPTS:
                deny(
                    "security_opt",
                    option,
                    "only no-new-privileges may be set: other options can switch seccomp, "
                    "AppArmor or SELinux off",
                )
        for key in spec.get("labels", {}):
            if key.startswith(RESERVED_LABEL_PREFIX):
                deny("labels", key, "labels starting with pyedge. are PyEdge's own")
        return found

    def _bind_denied(self, source: str) -> str | None:
        path = _normal(source)
        for system in SYSTEM_DIRS:
            if _inside(path, system):
                return f"{system} is a system directory"
        if path == "/":
            return "the host's root directory"
        if self.engine_socket and _inside(self.engine_socket, path):
            return "it holds the Docker socket, which gives root on the host"
        if posixpath.basename(path) == DOCKER_SOCKET_NAME:
            return "the Docker socket gives root on the host"
        if path not in self.bind_dirs:
            if any(_inside(path, granted) for granted in self.bind_dirs):
                # A container that can write the granted directory could swap this
                # subdirectory for a symlink before the engine mounts it again.
                return f"{path} is inside a granted directory: only the granted ones themselves"
            return f"bind mount of {path}: only named volumes and the granted host directories"
        # As the engine will resolve it on this host: it must exist and be no symlink.
        try:
            resolved = os.path.realpath(path, strict=True)
        except (OSError, ValueError):
            return f"{path} does not exist on this host (or cannot be resolved)"
        if resolved != path:
            return f"{path} goes through a symlink (to {resolved})"
        return None


def _normal(path: str) -> str:
    return posixpath.normpath("/" + path.lstrip("/"))


def _inside(path: str, directory: str) -> bool:
    return path == directory or path.startswith(directory.rstrip("/") + "/")


def _cap(cap: str) -> str:
    cap = cap.strip().upper()
    return cap.removeprefix("CAP_")


def _namespace(name: str) -> str:
    return {"network_mode": "network", "userns_mode": "user"}.get(name, name)
