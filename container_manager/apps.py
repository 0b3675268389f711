"""Apps: their desired state in SQLite, the names of their engine objects, and the planner.

An app's spec is stored as the user sent it (validated), so that GET shows exactly that,
with the networks and volumes it adopted (force=true) beside it. The planner is a pure
function of the desired spec, what the engine has and the policy; the reconciler
(reconciler.py) carries its steps out, and POST /apps/<name>/plan only shows them.
"""

from __future__ import annotations

import json
import logging
import sqlite3
import threading
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http import HTTPStatus
from pathlib import Path
from typing import Any

from container_manager.app_schemas import dependency_order
from container_manager.containers import APP_LABEL, SERVICE_LABEL, is_true
from container_manager.errors import ContainerManagerError
from container_manager.policy import SYSTEM_LABEL, Policy
from container_manager.specs import spec_hash
from pyedge.sqlite import transaction

logger = logging.getLogger(__name__)

HASH_LABEL = "pyedge.spec-hash"
NETWORK_PREFIX = "pyedge-"

SCHEMA = """
CREATE TABLE IF NOT EXISTS apps (
    name TEXT PRIMARY KEY,
    spec TEXT NOT NULL,
    generation INTEGER NOT NULL,
    updated_at TEXT NOT NULL,
    adopted TEXT NOT NULL DEFAULT '[]'
);
"""
# A container that a denied service may not keep running (stopped, never removed).
LIVE_STATES = ("running", "paused", "restarting")


def container_name(app: str, service: str) -> str:
    """The container of an app's service."""
    return f"{app}-{service}"


def network_name(app: str) -> str:
    """The app's own bridge network."""
    return f"{NETWORK_PREFIX}{app}"


def volume_name(app: str, volume: str) -> str:
    """The engine volume of an app's named volume (compose's prefix)."""
    return f"{app}_{volume}"


def named_volumes(service: Mapping[str, Any]) -> list[str]:
    """The named volumes (not bind mounts) of a loaded service spec."""
    return [volume["source"] for volume in service["volumes"] if not volume["bind"]]


def app_volumes(app: str, services: Mapping[str, Any]) -> list[str]:
    """The engine volumes of an app's loaded services, each once, in the spec's order."""
    found = (volume_name(app, v) for service in services.values() for v in named_volumes(service))
    return list(dict.fromkeys(found))


def uses_app_network(service: Mapping[str, Any]) -> bool:
    """True when the service joins the app's network (it sets no network_mode)."""
    return service["network_mode"] is None


def service_hashes(raw_spec: Mapping[str, Any]) -> dict[str, str]:
    """Each service's spec hash, of the spec as given: a changed one means recreate."""
    return {name: spec_hash(raw) for name, raw in raw_spec["services"].items()}


def restart_wanted(restart: str, exit_code: int | None) -> bool:
    """Whether a service's restart policy restarts a container that exited with exit_code."""
    name = restart.partition(":")[0]
    if name in ("always", "unless-stopped"):
        return True
    return name == "on-failure" and exit_code not in (None, 0)


def denial(violations: list[dict[str, str]]) -> str:
    """A service's policy violations as one line (its last_error)."""
    reasons = "; ".join(f"{v['field']}: {v['reason']}" for v in violations)
    return f"denied by the security policy: {reasons}"


def max_restarts(restart: str) -> int | None:
    """The N of on-failure:N, else None (no limit)."""
    name, _, count = restart.partition(":")
    return int(count) if name == "on-failure" and count else None


class AppStoreError(ContainerManagerError):
    """The app store (its SQLite file) failed."""

    status = HTTPStatus.INTERNAL_SERVER_ERROR


@dataclass(frozen=True)
class StoredApp:
    """An app's desired state as stored."""

    name: str
    spec: dict[str, Any]
    generation: int
    updated_at: str
    # Networks and volumes PyEdge did not create that a PUT with force=true let it use.
    adopted: tuple[str, ...] = ()


class AppStore:
    """The apps' desired state: one SQLite file (WAL), one connection under a lock."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._lock = threading.Lock()
        try:
            # Shared by the API's threads and the reconciler, under the lock.
            self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
            self._db.execute("PRAGMA journal_mode=WAL")
            # Writes are rare (one per PUT or DELETE): make each survive a power cut.
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.executescript(SCHEMA)
            columns = {row[1] for row in self._db.execute("PRAGMA table_info(apps)")}
            if "adopted" not in columns:  # a store written before adoption existed
                self._db.execute("ALTER TABLE apps ADD COLUMN adopted TEXT NOT NULL DEFAULT '[]'")
        except sqlite3.Error as exc:
            raise AppStoreError(f"app store {path}: {exc}") from exc

    def put(
        self, name: str, spec: dict[str, Any], adopted: tuple[str, ...] = ()
    ) -> tuple[StoredApp, bool]:
        """Store an app's spec and adopted objects; (the app, True when it is new).

        The generation grows only when the spec changes, so a repeated PUT is a no-op.
        """
        text = json.dumps(spec, sort_keys=True, separators=(",", ":"))
        adopted = tuple(sorted(set(adopted)))
        adopted_text = json.dumps(adopted)
        now = datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
        with self._session(write=True):
            row = self._db.execute(
                "SELECT spec, generation, updated_at, adopted FROM apps WHERE name = ?", (name,)
            ).fetchone()
            if row is None:
                self._db.execute(
                    "INSERT INTO apps (name, spec, generation, updated_at, adopted)"
                    " VALUES (?, ?, 1, ?, ?)",
                    (name, text, now, adopted_text),
                )
                return StoredApp(name, spec, 1, now, adopted), True
            if row[0] == text:
                if row[3] != adopted_text:
                    self._db.execute(
                        "UPDATE apps SET adopted = ? WHERE name = ?", (adopted_text, name)
                    )
                return StoredApp(name, spec, row[1], row[2], adopted), False
            self._db.execute(
                "UPDATE apps SET spec = ?, generation = ?, updated_at = ?, adopted = ?"
                " WHERE name = ?",
                (text, row[1] + 1, now, adopted_text, name),
            )
            return StoredApp(name, spec, row[1] + 1, now, adopted), False

    def get(self, name: str) -> StoredApp | None:
        """One app, or None."""
        with self._session():
            row = self._db.execute(
                "SELECT name, spec, generation, updated_at, adopted FROM apps WHERE name = ?",
                (name,),
            ).fetchone()
        return _app(row) if row else None

    def all(self) -> list[StoredApp]:
        """Every app, by name."""
        with self._session():
            rows = self._db.execute(
                "SELECT name, spec, generation, updated_at, adopted FROM apps ORDER BY name"
            ).fetchall()
        return [_app(row) for row in rows]

    def delete(self, name: str) -> bool:
        """Forget an app; False when there was none."""
        with self._session(write=True):
            return self._db.execute("DELETE FROM apps WHERE name = ?", (name,)).rowcount > 0

    def close(self) -> None:
        """Close the connection."""
        with self._lock:
            self._db.close()

    @contextmanager
    def _session(self, write: bool = False) -> Iterator[None]:
        """The lock; for a write, a transaction; any SQLite error becomes an AppStoreError."""
        with self._lock:
            try:
                with transaction(self._db, write):
                    yield
            except sqlite3.Error as exc:
                raise AppStoreError(f"app store {self.path}: {exc}") from exc


def _app(row: tuple[str, str, int, str, str]) -> StoredApp:
    return StoredApp(row[0], json.loads(row[1]), row[2], row[3], tuple(json.loads(row[4])))


@dataclass(frozen=True)
class Observed:
    """A container as the engine's inspect shows it, reduced to what the planner needs."""

    id: str
    name: str
    state: str
    labels: dict[str, str]
    image: str | None = None
    exit_code: int | None = None
    health: str | None = None
    started_at: str | None = None
    finished_at: str | None = None

    @classmethod
    def from_inspect(cls, attrs: Mapping[str, Any]) -> Observed:
        """From the engine's inspect of a container."""
        config = attrs.get("Config") or {}
        state = attrs.get("State") or {}
        status = state.get("Status") or "unknown"
        return cls(
            id=attrs["Id"],
            name=str(attrs.get("Name", "")).lstrip("/"),
            state=status,
            labels=config.get("Labels") or {},
            image=config.get("Image"),
            # A running container's ExitCode is the last run's (0): meaningless.
            exit_code=None if status in ("running", "created") else state.get("ExitCode"),
            health=(state.get("Health") or {}).get("Status"),
            started_at=state.get("StartedAt"),
            finished_at=state.get("FinishedAt"),
        )

    def owned_by(self, app: str, service: str) -> bool:
        """True when the reconciler created this container for `service` of `app`."""
        return self.labels.get(APP_LABEL) == app and self.labels.get(SERVICE_LABEL) == service


@dataclass(frozen=True)
class Actual:
    """What the engine has of one app: containers by target name or app label, and the
    app's network and volumes (each with its labels) when they exist."""

    containers: tuple[Observed, ...] = ()
    networks: dict[str, dict[str, str]] = field(default_factory=dict)
    volumes: dict[str, dict[str, str]] = field(default_factory=dict)

    def by_name(self, name: str) -> Observed | None:
        """The container of that name, if any."""
        return next((c for c in self.containers if c.name == name), None)


@dataclass
class Plan:
    """The planner's answer: the steps in order, policy violations and conflicts.

    `blocked` names each service that no step may touch because a network or volume it
    needs is in the way, with why.
    """

    steps: list[dict[str, Any]] = field(default_factory=list)
    violations: list[dict[str, str]] = field(default_factory=list)
    conflicts: list[dict[str, Any]] = field(default_factory=list)
    blocked: dict[str, str] = field(default_factory=dict)


def service_violations(
    policy: Policy, loaded: Mapping[str, Any]
) -> dict[str, list[dict[str, str]]]:
    """Every policy violation, by service; fields read `services.<name>.<field>`."""
    found = {
        name: policy.check(service, f"services.{name}.")
        for name, service in loaded["services"].items()
    }
    return {name: violations for name, violations in found.items() if violations}


def container_conflict(app: str, service: str, found: Observed) -> dict[str, Any] | None:
    """Why a container with a service's target name is in the way, or None if it is ours."""
    if found.owned_by(app, service):
        return None
    conflict: dict[str, Any] = {"service": service, "container": found.name, "id": found.id}
    other = found.labels.get(APP_LABEL)
    if is_true(found.labels, SYSTEM_LABEL):
        reason, forceable = "it is a PyEdge system container", False
    elif other and other != app:
        # Replacing it would make the two apps fight over the name forever.
        reason, forceable = f"it belongs to app {other!r}", False
    else:
        reason, forceable = "a container PyEdge did not create has this name", True
    return {**conflict, "reason": reason, "forceable": forceable}


def object_conflict(
    app: str, kind: str, name: str, labels: Mapping[str, str]
) -> dict[str, Any] | None:
    """Why an existing network or volume (`kind`) with an app's target name is not the
    app's, or None when the app created it."""
    owner = labels.get(APP_LABEL)
    if owner == app:
        return None
    if is_true(dict(labels), SYSTEM_LABEL):
        reason, forceable = f"it is a PyEdge system {kind}", False
    elif owner:
        # Names like a_b + c and a + b_c meet: sharing it would leak one app's data.
        reason, forceable = f"it belongs to app {owner!r}", False
    else:
        # Maybe a user's data: adopted as is with force, never removed.
        reason, forceable = f"a {kind} PyEdge did not create has this name", True
    return {kind: name, "reason": reason, "forceable": forceable}


def object_conflicts(
    app: str,
    loaded: Mapping[str, Any],
    actual: Actual,
    adopted: tuple[str, ...] = (),
    force: bool = False,
) -> tuple[list[dict[str, Any]], dict[str, str]]:
    """The app's network and volumes in its way: (conflicts, why each blocked service is).

    An object the app adopted earlier is the app's. With `force` a forceable conflict is
    still listed but blocks nothing: it is adopted as it is.
    """
    services: Mapping[str, Any] = loaded["services"]
    conflicts: list[dict[str, Any]] = []
    in_the_way: dict[str, str] = {}

    def check(kind: str, name: str, labels: Mapping[str, str]) -> None:
        conflict = object_conflict(app, kind, name, labels)
        if conflict is None or (conflict["forceable"] and name in adopted):
            return
        conflicts.append(conflict)
        if not (force and conflict["forceable"]):
            in_the_way[name] = f"{kind} {name}: {conflict['reason']}"

    network = network_name(app)
    if network in actual.networks and any(uses_app_network(s) for s in services.values()):
        check("network", network, actual.networks[network])
    wanted = app_volumes(app, services)
    for volume in wanted:
        if volume in actual.volumes:
            check("volume", volume, actual.volumes[volume])

    blocked: dict[str, str] = {}
    for name, service in services.items():
        needs = [volume_name(app, volume) for volume in named_volumes(service)]
        if uses_app_network(service):
            needs.insert(0, network)
        reasons = [in_the_way[need] for need in needs if need in in_the_way]
        if reasons:
            blocked[name] = "; ".join(reasons)
    return conflicts, blocked


def plan(
    app: str,
    raw: Mapping[str, Any],
    loaded: Mapping[str, Any],
    actual: Actual,
    policy: Policy,
    *,
    force: bool = False,
    adopted: tuple[str, ...] = (),
) -> Plan:
    """The steps that take `actual` to the app's spec, dependencies first; changes nothing.

    `raw` is the spec as given (its services' hashes label the containers), `loaded` the
    same spec validated. Containers, networks and volumes in the way that PyEdge did not
    create are conflicts; with `force` the forceable containers are replaced and the
    forceable networks and volumes adopted (`adopted` lists those adopted before). A
    service the policy denies gets no step but `stop` while its container runs; one whose
    network or volume is in the way gets none. Violations are listed, not raised.
    """
    services: Mapping[str, Any] = loaded["services"]
    hashes = service_hashes(raw)
    denied = service_violations(policy, loaded)
    result = Plan(violations=[v for vs in denied.values() for v in vs])
    targets = {container_name(app, name) for name in services}

    # Services gone from the spec go first: they may hold ports the new ones need.
    for found in actual.containers:
        gone = found.labels.get(SERVICE_LABEL) not in services
        if found.labels.get(APP_LABEL) == app and gone and found.name not in targets:
            result.steps.append(
                {
                    "action": "remove",
                    "service": found.labels.get(SERVICE_LABEL, ""),
                    "container": found.name,
                    "reason": "the service is no longer in the spec",
                }
            )

    network = network_name(app)
    network_missing = False
    if network not in actual.networks and any(uses_app_network(s) for s in services.values()):
        network_missing = True
        result.steps.append({"action": "create_network", "network": network, "reason": "missing"})
    wanted = app_volumes(app, services)
    for volume in wanted:
        if volume not in actual.volumes:
            result.steps.append({"action": "create_volume", "volume": volume, "reason": "missing"})
    result.conflicts, result.blocked = object_conflicts(app, loaded, actual, adopted, force)

    order = dependency_order({name: service["depends_on"] for name, service in services.items()})
    for name in order:
        service = services[name]
        current = actual.by_name(container_name(app, name))
        if name in denied:
            # The policy changed since the spec was stored: it may not keep running.
            if current and current.owned_by(app, name) and current.state in LIVE_STATES:
                result.steps.append(
                    {
                        "action": "stop",
                        "service": name,
                        "container": current.name,
                        "reason": "denied by the security policy",
                    }
                )
            continue
        if name in result.blocked:
            continue
        step = _service_step(
            app, name, service, hashes[name], current, network_missing, result, force
        )
        if step:
            result.steps.append({"service": name, **step})
    return result


def _service_step(
    app: str,
    name: str,
    service: Mapping[str, Any],
    desired_hash: str,
    found: Observed | None,
    network_missing: bool,
    result: Plan,
    force: bool,
) -> dict[str, Any] | None:
    """The one step (or none) that takes a service's container to its spec."""
    if found is None:
        return {"action": "create", "reason": "no container"}
    conflict = container_conflict(app, name, found)
    if conflict:
        result.conflicts.append(conflict)
        if force and conflict["forceable"]:
            return {
                "action": "recreate",
                "container": found.name,
                "reason": f"replaces {found.name}, which PyEdge did not create (force)",
            }
        return None
    if found.labels.get(HASH_LABEL) != desired_hash:
        return {"action": "recreate", "reason": "the spec changed"}
    if found.state == "dead":
        return {"action": "recreate", "reason": "the container is dead"}
    if network_missing and uses_app_network(service):
        return {"action": "recreate", "reason": "the app's network is gone"}
    if found.state == "created":
        return {"action": "start", "reason": "created but never started"}
    if found.state == "exited" and restart_wanted(service["restart"], found.exit_code):
        return {
            "action": "start",
            "reason": f"exited with code {found.exit_code}; restart: {service['restart']}",
        }
    return None
