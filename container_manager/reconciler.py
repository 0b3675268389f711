"""The reconciler: converges the engine to every app's spec, restarting with backoff.

It is the `reconcile` Process. Each pass plans every app (apps.plan) and carries the steps
out. The engine restarts nothing of an app (its containers have restart policy "no"): the
reconciler does, per the service's `restart`, and backs off a container that crashes
(dies within CRASH_WINDOW_S of starting): 1 s, 2 s, 4 s, ... up to crash_backoff_max. A
service that crashed DEGRADED_AFTER times in a row is degraded until it stays up for
CRASH_WINDOW_S. What the reconciler knows of each service lives in memory, here: a
restarted service starts counting again, and so does an app PUT again (reset()).

Nothing one app or one service does may stop the others converging: any exception of an
app's pass (its stored spec no longer valid, the engine refusing it) is that app's, and
any exception of a service's step (docker-py rejecting a value client-side with its own
ValueError, say) is that service's. Each is logged once per distinct error, not each pass.
Only the engine being away ends a pass.

The views and the passes change an app's engine objects only under that app's lock, so a
DELETE cannot race a pass that is recreating what it removes.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import marshmallow as ma

from container_manager.app_schemas import load_spec
from container_manager.apps import (
    HASH_LABEL,
    Actual,
    AppStore,
    Observed,
    StoredApp,
    container_conflict,
    container_name,
    denial,
    max_restarts,
    named_volumes,
    network_name,
    object_conflicts,
    plan,
    restart_wanted,
    service_hashes,
    service_violations,
    uses_app_network,
    volume_name,
)
from container_manager.containers import APP_LABEL, SERVICE_LABEL, redact_app_spec
from container_manager.engine import Engine
from container_manager.errors import (
    ContainerManagerError,
    EngineUnavailable,
    InvalidRequest,
    NotFound,
)
from container_manager.policy import Policy
from container_manager.specs import MANAGED_LABEL, create_kwargs
from pyedge import Session

logger = logging.getLogger(__name__)

RECONCILER = "reconciler"
APPS = "apps"
# A container that dies sooner than this after starting has crashed (a crash loop's
# failures add up); one that has run this long resets its count.
CRASH_WINDOW_S = 10.0
BACKOFF_BASE_S = 1.0
DEGRADED_AFTER = 3
# SIGTERM, then SIGKILL after this long, as compose stops a service.
STOP_TIMEOUT_S = 10
# Service statuses that the reconciler cannot mend alone: the app and the service degrade.
BLOCKED = ("degraded", "conflict", "denied")


class StoredSpecInvalid(ContainerManagerError):
    """A stored spec that the current schema rejects (stored before an upgrade)."""


def describe_error(exc: BaseException) -> str:
    """An exception as a line; one that is not ours is named by its type, as it may be a bug."""
    if isinstance(exc, ContainerManagerError):
        return str(exc)
    return f"{type(exc).__name__}: {exc}"


@dataclass
class ServiceStatus:
    """What the reconciler knows of one service beyond what the engine shows."""

    spec_hash: str | None = None
    restart_count: int = 0
    failures: int = 0
    backoff: float = 0.0
    next_attempt: float = 0.0  # time.monotonic()
    last_error: str | None = None
    # The FinishedAt of the last death counted, so that one death counts once.
    seen_finish: str | None = None
    gave_up: bool = False
    # The last step failed on the spec's values (docker-py or the engine refused one) or
    # on a bug: retrying the same spec fails the same way, so it is degraded at once.
    rejected: bool = False
    # The last error logged, so that a failure repeated by each retry is logged once.
    logged: str | None = None

    def copy(self) -> ServiceStatus:
        """A snapshot, for readers outside the reconciler's lock."""
        return ServiceStatus(**self.__dict__)


@dataclass
class _AppLock:
    """An app's lock and how many threads hold or wait for it."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    users: int = 0


@dataclass
class Reconciler:
    """The reconciler of one service runtime: its engine, store, policy and memory."""

    engine: Engine
    store: AppStore
    policy: Policy
    backoff_max: float = 300.0
    # Set by the views when an app changes, and by stop: the loop wakes at once.
    wake: threading.Event = field(default_factory=threading.Event)
    summary: dict[str, Any] = field(default_factory=dict)
    # Why the last pass failed as a whole (the store, or a bug), for the health check.
    pass_error: str | None = None
    _statuses: dict[tuple[str, str], ServiceStatus] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    # Only while someone holds or waits for an app's lock: names of apps that do not
    # exist (a DELETE of any name) must not pile up.
    _app_locks: dict[str, _AppLock] = field(default_factory=dict)
    # Why each app's last pass failed, so that a failure is logged once, not each pass.
    _app_errors: dict[str, str] = field(default_factory=dict)

    @contextmanager
    def app_lock(self, app: str) -> Iterator[None]:
        """Hold an app's lock: its engine objects and stored spec change under it only."""
        with self._lock:
            entry = self._app_locks.setdefault(app, _AppLock())
            entry.users += 1
        try:
            with entry.lock:
                yield
        finally:
            with self._lock:
                entry.users -= 1
                if not entry.users:
                    # Nobody holds or waits for it: the next user makes a fresh one.
                    del self._app_locks[app]

    def locked_apps(self) -> int:
        """How many app locks exist (held or waited for) right now."""
        with self._lock:
            return len(self._app_locks)

    def status(self, app: str, service: str) -> ServiceStatus:
        """A snapshot of a service's status (a fresh one if the reconciler knows nothing)."""
        with self._lock:
            found = self._statuses.get((app, service))
            return found.copy() if found else ServiceStatus()

    def forget(self, app: str) -> None:
        """Drop what is known of a deleted app."""
        with self._lock:
            for key in [key for key in self._statuses if key[0] == app]:
                del self._statuses[key]
            self.summary.pop(app, None)
            self._app_errors.pop(app, None)

    def reset(self, app: str) -> None:
        """Start the app's services' counts afresh (restarts, crashes, backoff): a PUT.

        The user may have mended something outside the spec (pulled the missing image):
        the next pass retries at once instead of after the current backoff.
        """
        with self._lock:
            for key in [key for key in self._statuses if key[0] == app]:
                old = self._statuses[key]
                # seen_finish stays: the death already counted must not count again.
                self._statuses[key] = ServiceStatus(
                    spec_hash=old.spec_hash, seen_finish=old.seen_finish, last_error=old.last_error
                )
            self._app_errors.pop(app, None)

    def degraded(self) -> list[str]:
        """'app/service (why)' for each service the last pass found degraded or blocked."""
        with self._lock:
            summary = dict(self.summary)
        found = [f"reconcile pass failed ({self.pass_error})"] if self.pass_error else []
        for app, view in summary.items():
            if view.get("error"):
                found.append(f"{app} ({view['error']})")
            for name, service in view["services"].items():
                if service["status"] in BLOCKED:
                    why = service.get("last_error") or service["status"]
                    found.append(f"{app}/{name} ({why})")
        return found

    # Reading the engine ------------------------------------------------------------------

    def observe(self, app: str, loaded: Mapping[str, Any] | None) -> Actual:
        """The app's containers (by target name or app label), network and volumes."""
        services = loaded["services"] if loaded else {}
        targets = {container_name(app, name) for name in services}
        raws = self.engine.call(lambda c: c.api.containers(all=True))
        found = []
        for raw in raws:
            name = (raw.get("Names") or [""])[0].lstrip("/")
            if name in targets or (raw.get("Labels") or {}).get(APP_LABEL) == app:
                observed = self._inspect(raw["Id"])
                if observed is not None:
                    found.append(observed)
        network = network_name(app)
        networks = {
            raw["Name"]: raw.get("Labels") or {}
            for raw in self.engine.call(lambda c: c.api.networks(names=[network]))
            if raw["Name"] == network
        }
        wanted = {volume_name(app, v) for s in services.values() for v in named_volumes(s)}
        listed = self.engine.call(lambda c: c.api.volumes()).get("Volumes") or []
        volumes = {
            raw["Name"]: raw.get("Labels") or {}
            for raw in listed
            if raw["Name"] in wanted or (raw.get("Labels") or {}).get(APP_LABEL) == app
        }
        return Actual(tuple(found), networks, volumes)

    def _inspect(self, ident: str) -> Observed | None:
        """A container inspected, or None when it was removed since the listing."""
        try:
            attrs = self.engine.call(lambda c: c.api.inspect_container(ident))
        except NotFound:
            return None
        return Observed.from_inspect(attrs)

    def view(self, app: StoredApp, detail: bool = False) -> dict[str, Any]:
        """An app as GET /apps shows it: desired against actual, per service."""
        try:
            loaded: dict[str, Any] | None = load_spec(app.spec)
        except ma.ValidationError as exc:
            loaded = None
            error: str | None = f"the stored spec is no longer valid: {exc.messages}"
        else:
            with self._lock:
                error = self._app_errors.get(app.name)
        actual = self.observe(app.name, loaded)
        result = self._describe(app, loaded, actual)
        result["error"] = error
        if error:
            result["status"] = "degraded"
        if detail:
            # Environment values are where secrets live: shown redacted, as containers are.
            result["spec"] = redact_app_spec(app.spec)
            result["adopted"] = list(app.adopted)
        return result

    def _describe(
        self, app: StoredApp, loaded: Mapping[str, Any] | None, actual: Actual
    ) -> dict[str, Any]:
        services: dict[str, Any] = {}
        hashes = service_hashes(app.spec) if loaded else {}
        # The policy may have changed since the spec was stored (settings, restart).
        denied = service_violations(self.policy, loaded) if loaded else {}
        blocked = object_conflicts(app.name, loaded, actual, app.adopted)[1] if loaded else {}
        for name, spec in (loaded or {"services": {}})["services"].items():
            found = actual.by_name(container_name(app.name, name))
            status = self.status(app.name, name)
            conflict = container_conflict(app.name, name, found) if found else None
            error = conflict["reason"] if conflict else status.last_error
            if name in denied:
                state, error = "denied", denial(denied[name])
            elif name in blocked:
                state, error = "conflict", blocked[name]
            else:
                state = _service_status(spec, found, hashes[name], status, conflict)
            services[name] = {
                "desired_image": spec["image"],
                "image": found.image if found else None,
                "container_id": found.id if found else None,
                "container_name": container_name(app.name, name),
                "state": found.state if found else None,
                "health": found.health if found else None,
                "exit_code": found.exit_code if found else None,
                "up_to_date": found is not None and found.labels.get(HASH_LABEL) == hashes[name],
                "restart_count": status.restart_count,
                "failures": status.failures,
                "backoff": status.backoff,
                "status": state,
                "last_error": error,
            }
        return {
            "name": app.name,
            "generation": app.generation,
            "updated_at": app.updated_at,
            "status": _app_status([s["status"] for s in services.values()]),
            "services": services,
        }

    # Changing the engine -----------------------------------------------------------------

    def remove_container(self, ident: str) -> None:
        """Stop a container (SIGTERM, then SIGKILL after STOP_TIMEOUT_S) and remove it."""
        with suppress(NotFound):  # already gone: what we wanted
            # docker-py adds the stop timeout to the call's own.
            self.engine.call(lambda c: c.api.stop(ident, timeout=STOP_TIMEOUT_S))
            self.engine.call(lambda c: c.api.remove_container(ident, force=True), slow=True)

    def delete(self, app: str, *, volumes: bool) -> None:
        """Remove an app's containers and network (and its volumes when asked).

        The caller holds the app's lock. Anything the engine refuses raises, and the app
        is then still stored: DELETE either removes it all or leaves it deployed.
        """
        actual = self.observe(app, None)
        for found in actual.containers:
            if found.labels.get(APP_LABEL) == app:
                self.remove_container(found.id)
        for network, labels in actual.networks.items():
            if labels.get(APP_LABEL) == app:
                self._remove_network(network)
        if volumes:
            for volume, labels in actual.volumes.items():
                if labels.get(APP_LABEL) == app:
                    self._remove_volume(volume)

    def _remove_network(self, name: str) -> None:
        with suppress(NotFound):
            self.engine.call(lambda c: c.api.remove_network(name))

    def _remove_volume(self, name: str) -> None:
        with suppress(NotFound):
            self.engine.call(lambda c: c.api.remove_volume(name))

    # The passes --------------------------------------------------------------------------

    def run_pass(self, should_stop: Callable[[], bool]) -> dict[str, Any]:
        """Converge every stored app once; the summary per app.

        EngineUnavailable ends the pass (the next one tries again); any other exception is
        the app's (logged once, the app degraded with it) and leaves the other apps alone.
        """
        summary: dict[str, Any] = {}
        for app in self.store.all():
            if should_stop():
                break
            try:
                view = self.converge(app.name, should_stop)
            except EngineUnavailable:
                raise
            except Exception as exc:  # one app's failure must not stop the others converging
                view = self._app_failed(app, exc)
            else:
                with self._lock:
                    self._app_errors.pop(app.name, None)
            if view is not None:
                summary[app.name] = view
        with self._lock:
            if not should_stop():
                self.summary = summary
            return dict(self.summary)

    def _app_failed(self, app: StoredApp, exc: Exception) -> dict[str, Any]:
        """Record why an app's pass failed, logging it when it differs from the last time."""
        error = describe_error(exc)
        with self._lock:
            new = self._app_errors.get(app.name) != error
            self._app_errors[app.name] = error
        if new and isinstance(exc, ContainerManagerError):
            logger.warning("reconciling app %s failed: %s", app.name, error)
        elif new:
            # Not the engine's answer nor ours: the traceback is what finds the bug.
            logger.error("reconciling app %s failed: %s", app.name, error, exc_info=exc)
        return {
            "name": app.name,
            "generation": app.generation,
            "updated_at": app.updated_at,
            "status": "degraded",
            "error": error,
            "services": {},
        }

    def converge(self, name: str, should_stop: Callable[[], bool]) -> dict[str, Any] | None:
        """Carry out one app's plan, under its lock; None when the app is gone."""
        with self.app_lock(name):
            app = self.store.get(name)
            if app is None:
                self.forget(name)
                return None
            try:
                loaded = load_spec(app.spec)
            except ma.ValidationError as exc:
                raise StoredSpecInvalid(
                    f"the stored spec is no longer valid: {exc.messages}"
                ) from exc
            self._sync(app)
            actual = self.observe(name, loaded)
            result = plan(name, app.spec, loaded, actual, self.policy, adopted=app.adopted)
            # Checked again each pass: the node's policy may have changed since it was stored.
            denied = service_violations(self.policy, loaded)
            for service, violations in denied.items():
                self._set(name, service, last_error=denial(violations))
            for service, reason in result.blocked.items():
                self._set(name, service, last_error=reason)
            # Their dependents wait for them.
            failed = set(denied) | set(result.blocked)
            for step in result.steps:
                if should_stop():
                    break
                self._apply(app, loaded, actual, step, denied, failed)
            for conflict in result.conflicts:
                if "service" in conflict:
                    self._set(name, conflict["service"], last_error=conflict["reason"])
            if result.steps:
                actual = self.observe(name, loaded)
            self._forgive(name, loaded, actual)
            return self._describe(app, loaded, actual)

    def _sync(self, app: StoredApp) -> None:
        """Start a fresh status for each service whose spec changed; drop removed ones."""
        hashes = service_hashes(app.spec)
        with self._lock:
            for key in [k for k in self._statuses if k[0] == app.name and k[1] not in hashes]:
                del self._statuses[key]
            for service, desired in hashes.items():
                known = self._statuses.get((app.name, service))
                if known is None or known.spec_hash != desired:
                    self._statuses[(app.name, service)] = ServiceStatus(spec_hash=desired)

    def _set(self, app: str, service: str, **changes: Any) -> ServiceStatus:
        with self._lock:
            status = self._statuses.setdefault((app, service), ServiceStatus())
            for key, value in changes.items():
                setattr(status, key, value)
            return status.copy()

    def _apply(
        self,
        app: StoredApp,
        loaded: Mapping[str, Any],
        actual: Actual,
        step: dict[str, Any],
        denied: Mapping[str, list[dict[str, str]]],
        failed: set[str],
    ) -> None:
        """Carry out one step. A service's failure, whatever it raises, is that service's
        (counted, backed off); an app-wide step's is the app's; the engine away, the pass's."""
        action = step["action"]
        if action == "create_network":
            labels = {MANAGED_LABEL: "true", APP_LABEL: app.name}
            self.engine.call(
                lambda c: c.api.create_network(
                    step["network"], driver="bridge", labels=labels, check_duplicate=True
                )
            )
            return
        if action == "create_volume":
            labels = {MANAGED_LABEL: "true", APP_LABEL: app.name}
            self.engine.call(lambda c: c.api.create_volume(step["volume"], labels=labels))
            return
        if action == "remove":
            found = actual.by_name(step["container"])
            if found:
                self.remove_container(found.id)
            return
        name = step["service"]
        try:
            self._apply_service(app, loaded, actual, step, denied, failed)
        except EngineUnavailable:
            raise
        except Exception as exc:  # docker-py rejects some values client-side, not as APIError
            self._fail(app.name, name, action, exc)
            failed.add(name)

    def _apply_service(
        self,
        app: StoredApp,
        loaded: Mapping[str, Any],
        actual: Actual,
        step: dict[str, Any],
        denied: Mapping[str, list[dict[str, str]]],
        failed: set[str],
    ) -> None:
        """Carry out a step of one service: stop, start, create or recreate."""
        action = step["action"]
        name = step["service"]
        service = loaded["services"][name]
        found = actual.by_name(container_name(app.name, name))
        if action == "stop":
            if found is not None:
                self.engine.call(lambda c: c.api.stop(found.id, timeout=STOP_TIMEOUT_S))
                logger.warning("stopped %s: %s", found.name, denial(denied.get(name, [])))
            return
        # plan() gives a denied service no other step; checked here too, as this is the
        # one place that starts containers.
        if name in denied:
            self._set(app.name, name, last_error=denial(denied[name]))
            failed.add(name)
            return
        waiting = [dep for dep in service["depends_on"] if dep in failed]
        if waiting:
            self._set(app.name, name, last_error=f"waiting for {', '.join(waiting)}")
            failed.add(name)
            return
        now = time.monotonic()
        restarting = action == "start" and found is not None and found.state == "exited"
        if restarting and found is not None:
            status = self._count_exit(app.name, name, found, now)
            limit = max_restarts(service["restart"])
            if limit is not None and status.restart_count >= limit:
                self._set(
                    app.name, name, gave_up=True, last_error=f"gave up after {limit} restarts"
                )
                return
        else:
            status = self.status(app.name, name)
        if now < status.next_attempt:
            return  # backing off
        if action == "start":
            self.engine.call(lambda c: c.api.start(found.id if found else ""))
        else:
            if found is not None:
                self.remove_container(found.id)
            self._create(app, name, service)
        restarts = status.restart_count + (1 if restarting else 0)
        self._set(
            app.name, name, restart_count=restarts, last_error=None, rejected=False, logged=None
        )
        if restarting:
            logger.info("restarted %s/%s (restart %d)", app.name, name, restarts)

    def _create(self, app: StoredApp, name: str, service: Mapping[str, Any]) -> None:
        """Create and start a service's container on the app's network."""
        renamed = {volume: volume_name(app.name, volume) for volume in named_volumes(service)}
        kwargs = create_kwargs(dict(service), volume_names=renamed, restart=False)
        kwargs["labels"].update(
            {
                APP_LABEL: app.name,
                SERVICE_LABEL: name,
                HASH_LABEL: service_hashes(app.spec)[name],
            }
        )
        target = container_name(app.name, name)
        network = network_name(app.name)

        def create(client: Any) -> Any:
            if uses_app_network(service):
                # Its service name is its address on the app's network.
                endpoint = client.api.create_endpoint_config(aliases=[name])
                kwargs.update(network=network, networking_config={network: endpoint})
            return client.containers.create(name=target, **kwargs)

        created = self.engine.call(create, slow=True)
        self.engine.call(lambda c: c.api.start(created.id))
        logger.info("created %s for app %s", target, app.name)

    def _count_exit(self, app: str, service: str, found: Observed, now: float) -> ServiceStatus:
        """Count a death once: a crash (short run) adds a failure and backs off."""
        with self._lock:
            status = self._statuses.setdefault((app, service), ServiceStatus())
            if found.finished_at != status.seen_finish:
                status.seen_finish = found.finished_at
                ran = _seconds(found.started_at, found.finished_at)
                if ran is not None and ran < CRASH_WINDOW_S:
                    status.failures += 1
                    status.backoff = self._backoff(status.failures)
                    status.next_attempt = now + status.backoff
                    logger.warning(
                        "%s/%s crashed (exit %s after %.1f s, failure %d): next start in %.0f s",
                        app,
                        service,
                        found.exit_code,
                        ran,
                        status.failures,
                        status.backoff,
                    )
                else:
                    status.failures, status.backoff, status.next_attempt = 0, 0.0, now
            return status.copy()

    def _fail(self, app: str, service: str, action: str, exc: Exception) -> None:
        """A step of the service failed: count it and back off, as for a crash.

        The error is logged when it differs from the last one logged: a retry that fails
        the same way says nothing new.
        """
        ours = isinstance(exc, ContainerManagerError)
        error = f"{action} failed: {describe_error(exc)}"
        # A missing image or a taken port may be mended outside the spec; a refused value not.
        rejected = not ours or isinstance(exc, InvalidRequest)
        with self._lock:
            status = self._statuses.setdefault((app, service), ServiceStatus())
            status.failures += 1
            status.backoff = self._backoff(status.failures)
            status.next_attempt = time.monotonic() + status.backoff
            status.last_error = error
            status.rejected = rejected
            new, status.logged = status.logged != error, error
            backoff = status.backoff
        if new and ours:
            logger.warning(
                "%s/%s: %s (retried with backoff, from %.0f s)", app, service, error, backoff
            )
        elif new:
            # Not the engine's answer: docker-py refused a value, or a bug (the traceback).
            logger.error(
                "%s/%s: %s (retried with backoff, from %.0f s)",
                app,
                service,
                error,
                backoff,
                exc_info=exc,
            )

    def _backoff(self, failures: int) -> float:
        return float(min(BACKOFF_BASE_S * 2 ** (failures - 1), self.backoff_max))

    def _forgive(self, app: str, loaded: Mapping[str, Any], actual: Actual) -> None:
        """Reset the failures of each service that has now run for CRASH_WINDOW_S."""
        now = datetime.now(UTC)
        for name in loaded["services"]:
            found = actual.by_name(container_name(app, name))
            if found is None or found.state != "running" or not found.owned_by(app, name):
                continue
            with self._lock:
                status = self._statuses.get((app, name))
                if status is None or not status.failures:
                    continue
                started = _parse(found.started_at)
                if started and (now - started).total_seconds() >= CRASH_WINDOW_S:
                    status.failures, status.backoff, status.gave_up = 0, 0.0, False


def _service_status(
    spec: Mapping[str, Any],
    found: Observed | None,
    desired_hash: str,
    status: ServiceStatus,
    conflict: dict[str, Any] | None,
) -> str:
    """running, converging, exited (and not to be restarted), degraded or conflict."""
    if conflict:
        return "conflict"
    if status.failures >= DEGRADED_AFTER or status.rejected:
        return "degraded"
    if found is None or found.labels.get(HASH_LABEL) != desired_hash:
        return "converging"
    if found.state in ("running", "paused"):
        return "running"
    if found.state == "exited" and (
        status.gave_up or not restart_wanted(spec["restart"], found.exit_code)
    ):
        return "exited"
    return "converging"


def _app_status(statuses: list[str]) -> str:
    """running, degraded, converging or stopped, from its services' statuses."""
    if any(s in BLOCKED for s in statuses):
        return "degraded"
    if statuses and all(s == "exited" for s in statuses):
        return "stopped"
    if all(s in ("running", "exited") for s in statuses):
        return "running"
    return "converging"


def _parse(stamp: str | None) -> datetime | None:
    """The engine's RFC 3339 time; None for its zero time or nothing."""
    if not stamp or stamp.startswith("0001-"):
        return None
    try:
        return datetime.fromisoformat(stamp)
    except ValueError:
        return None


def _seconds(start: str | None, end: str | None) -> float | None:
    began, ended = _parse(start), _parse(end)
    return (ended - began).total_seconds() if began and ended else None


def _brief(summary: Mapping[str, Any]) -> dict[str, Any]:
    """What the session reports of each app: statuses and counts, not the whole view."""
    return {
        name: {
            "status": view["status"],
            "generation": view.get("generation"),
            "error": view.get("error"),
            "services": {
                service: {
                    "status": state["status"],
                    "restart_count": state["restart_count"],
                    "failures": state["failures"],
                }
                for service, state in view["services"].items()
            },
            "degraded": [
                service
                for service, state in view["services"].items()
                if state["status"] == "degraded"
            ],
        }
        for name, view in summary.items()
    }


def run_reconcile(session: Session, params: dict[str, Any]) -> str:
    """Converge the apps to their specs, restarting what dies with crash-loop backoff."""
    runtime = session.context
    reconciler: Reconciler = runtime.extras[RECONCILER]
    interval: float = runtime.settings["reconcile_interval"]
    should_stop = session.stop_requested.is_set
    last_error: str | None = None
    reported: dict[str, Any] | None = None
    session.log(f"reconciling every {interval:g} s")
    while not should_stop():
        # Cleared before the pass: a change made during it wakes the next one at once.
        reconciler.wake.clear()
        try:
            brief = _brief(reconciler.run_pass(should_stop))
        except Exception as exc:  # only a stop ends the Process: the next pass retries
            # The engine (or the store) is away, or a bug: say so once, try again later.
            error = describe_error(exc)
            if error != last_error:
                session.log(f"pass failed, retrying every {interval:g} s: {error}")
                if not isinstance(exc, ContainerManagerError):
                    logger.error("reconcile pass failed: %s", error, exc_info=exc)
            last_error = reconciler.pass_error = error
        else:
            if last_error is not None:
                session.log("passes succeed again")
                last_error = reconciler.pass_error = None
            if brief != reported:
                session.update(apps=brief)
                reported = brief
        reconciler.wake.wait(interval)
    reconciler.pass_error = None  # no pass runs now: nothing fails
    return "stopped"


def stop_reconcile(session: Session) -> None:
    """Wake the loop so that it sees the stop at once."""
    reconciler: Reconciler | None = session.context.extras.get(RECONCILER)
    if reconciler is not None:
        reconciler.wake.set()


def reconcile_autostart(runtime: Any) -> dict[str, Any] | None:
    """Start reconciling with the service, unless reconcile_autostart is off."""
    return {} if runtime.settings["reconcile_autostart"] else None
