"""The Docker Engine API endpoints the gateway relays, each with its role, and the refused.

Only what Docker tools need to manage a device is relayed (allow-list); every other
endpoint is refused with a reason, the known dangerous ones with their own.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from werkzeug.exceptions import MethodNotAllowed, NotFound
from werkzeug.routing import Map, Rule

from pyedge.security import Role

# /v1.41/containers/json and /containers/json are the same endpoint.
VERSION_RE = re.compile(r"^/v\d+(?:\.\d+)?(?=/)")


@dataclass(frozen=True)
class Route:
    """What an endpoint needs: its role, what it acts on, and how it is checked."""

    role: Role
    # The kind of object in the path (`ident`) that is checked before a change:
    # container, volume or network; None: nothing to protect.
    target: str | None = None
    # What the change does, for the refusal ("stopped"); None for reads.
    action: str | None = None
    # Streams (logs, events, pulls, stats, wait) have no read time-out.
    stream: bool = False
    # A check of the request's body or query: create (a container's), volume or network
    # (their creates), prune, pull.
    check: str | None = None

    @property
    def changes(self) -> bool:
        """True when the endpoint changes something (audited)."""
        return self.role >= Role.OPERATOR


def _read(stream: bool = False) -> Route:
    return Route(Role.VIEWER, stream=stream)


def _lifecycle(action: str) -> Route:
    return Route(Role.OPERATOR, target="container", action=action)


ROUTES: tuple[tuple[str, tuple[str, ...], Route], ...] = (
    ("/_ping", ("GET", "HEAD"), _read()),
    ("/version", ("GET",), _read()),
    ("/info", ("GET",), _read()),
    ("/system/df", ("GET",), _read()),
    ("/events", ("GET",), _read(stream=True)),
    ("/containers/json", ("GET",), _read()),
    ("/containers/create", ("POST",), Route(Role.ADMIN, check="create")),
    ("/containers/<ident>/json", ("GET",), _read()),
    ("/containers/<ident>/top", ("GET",), _read()),
    ("/containers/<ident>/changes", ("GET",), _read()),
    ("/containers/<ident>/logs", ("GET",), _read(stream=True)),
    ("/containers/<ident>/stats", ("GET",), _read(stream=True)),
    # Waiting changes nothing (`docker run` waits for its container).
    ("/containers/<ident>/wait", ("POST",), _read(stream=True)),
    ("/containers/<ident>/start", ("POST",), _lifecycle("started")),
    ("/containers/<ident>/stop", ("POST",), _lifecycle("stopped")),
    ("/containers/<ident>/restart", ("POST",), _lifecycle("restarted")),
    ("/containers/<ident>/kill", ("POST",), _lifecycle("killed")),
    ("/containers/<ident>/pause", ("POST",), _lifecycle("paused")),
    ("/containers/<ident>/unpause", ("POST",), _lifecycle("unpaused")),
    ("/containers/<ident>/rename", ("POST",), Route(Role.ADMIN, "container", "renamed")),
    ("/containers/<ident>", ("DELETE",), Route(Role.ADMIN, "container", "removed")),
    ("/images/json", ("GET",), _read()),
    ("/images/create", ("POST",), Route(Role.ADMIN, stream=True, check="pull")),
    ("/images/prune", ("POST",), Route(Role.ADMIN, check="prune")),
    ("/images/<path:ident>/json", ("GET",), _read()),
    ("/images/<path:ident>/history", ("GET",), _read()),
    ("/images/<path:ident>/tag", ("POST",), Route(Role.ADMIN)),
    ("/images/<path:ident>", ("DELETE",), Route(Role.ADMIN)),
    ("/networks", ("GET",), _read()),
    ("/networks/create", ("POST",), Route(Role.ADMIN, check="network")),
    ("/networks/prune", ("POST",), Route(Role.ADMIN, check="prune")),
    ("/networks/<ident>", ("GET",), _read()),
    ("/networks/<ident>", ("DELETE",), Route(Role.ADMIN, "network", "removed")),
    ("/volumes", ("GET",), _read()),
    ("/volumes/create", ("POST",), Route(Role.ADMIN, check="volume")),
    ("/volumes/prune", ("POST",), Route(Role.ADMIN, check="prune")),
    ("/volumes/<ident>", ("GET",), _read()),
    ("/volumes/<ident>", ("DELETE",), Route(Role.ADMIN, "volume", "removed")),
)

# Why the endpoints Docker tools know but PyEdge does not relay are refused (by the first
# match of the path without its version).
REFUSED: tuple[tuple[re.Pattern[str], str], ...] = tuple(
    (re.compile(pattern), reason)
    for pattern, reason in (
        (
            r"^/(containers/[^/]+/exec|exec/)",
            "docker exec is not allowed through PyEdge: a command run inside a container "
            "escapes what its spec was checked for, and is not audited",
        ),
        (
            r"^/containers/[^/]+/(attach|resize)",
            "attaching to a container is not allowed through PyEdge: run it with -d and "
            "read its output with docker logs",
        ),
        (
            r"^/(build|session)",
            "docker build is not allowed through PyEdge: a build runs its steps on the "
            "device with the engine's privileges; build elsewhere and pull the image",
        ),
        (
            r"^/commit",
            "docker commit is not allowed through PyEdge: it copies a container's files, "
            "secrets included, into an image",
        ),
        (
            r"^/containers/[^/]+/(export|archive)|^/images/(get|load)|^/images/[^/].*/get$",
            "copying files into or out of containers and images is not allowed through "
            "PyEdge: it bypasses the policy on mounts",
        ),
        (
            r"^/(swarm|services|nodes|tasks|secrets|configs)(/|$)",
            "swarm is not managed through PyEdge",
        ),
        (
            r"^/plugins",
            "plugins are not allowed through PyEdge: they run with the host's privileges",
        ),
        (
            r"^/auth",
            "registry logins are not kept through PyEdge: pass registry credentials with each pull",
        ),
    )
)
NOT_RELAYED = "is not allowed through PyEdge's Docker API gateway"

URL_MAP = Map(
    [Rule(path, methods=list(methods), endpoint=route) for path, methods, route in ROUTES],
    strict_slashes=False,
    merge_slashes=False,
)
_ADAPTER = URL_MAP.bind("gateway")


class Refused(Exception):
    """The endpoint is not relayed; `reason` says why."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def unversioned(path: str) -> str:
    """A path without its API version prefix (/v1.41/info -> /info)."""
    return VERSION_RE.sub("", path, count=1)


def match(method: str, path: str) -> tuple[Route, dict[str, str]]:
    """The route of an unversioned path and its arguments; Refused when not relayed."""
    try:
        route, args = _ADAPTER.match(path, method)
    except (NotFound, MethodNotAllowed):
        for pattern, reason in REFUSED:
            if pattern.search(path):
                raise Refused(reason) from None
        raise Refused(f"{method} {path} {NOT_RELAYED}") from None
    return route, args
