"""EdgeService: a service declared once, mountable in the edge-server or served on its own."""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import marshmallow as ma
from flask import current_app

from pyedge import admin_views, ops_views
from pyedge.admin import AdminPanel, RingHandler, attach_log, detach_log, log_package
from pyedge.config import SLUG_RE, ConfigError, Section, Setting
from pyedge.errors import PyEdgeError
from pyedge.metrics import Metrics
from pyedge.operations import (
    Autostart,
    NoParams,
    Operation,
    OperationRunner,
    OpFunction,
    OpKind,
    StopFunction,
)
from pyedge.rpc import OpResponder
from pyedge.security import Blueprint, Role

if TYPE_CHECKING:
    from pyedge.accounts import AccountStore
    from pyedge.bus import Bus
    from pyedge.tls import NodeTls

logger = logging.getLogger(__name__)

OP_NAME_RE = re.compile(r"^[a-z][a-z0-9_]*$")
TOPIC_ROOT = "pyedge"

HealthCheck = Callable[["ServiceRuntime"], str | None]
LifecycleHook = Callable[["ServiceRuntime"], None]


def topic_root(site: str = "") -> str:
    """The levels every PyEdge topic starts with: `pyedge`, or `<site>/pyedge` for a site.

    The site goes in front, so that below the root the layout (`<node>/<slug>/...`) is
    the same with or without one, and `pyedge/#` never matches another site's topics.
    """
    return f"{site}/{TOPIC_ROOT}" if site else TOPIC_ROOT


class Degraded(PyEdgeError):
    """Raised by a health check to report the service degraded, with the reason."""


@dataclass(frozen=True)
class Health:
    """A service's health: 'ok' or 'degraded', and why."""

    status: str
    detail: str

    @property
    def ok(self) -> bool:
        """True when nothing is wrong."""
        return self.status == "ok"


class EdgeService:
    """A service's declaration: blueprint, operations, health checks and settings.

    It holds no run-time state, so the same declaration can be mounted in several apps
    (tests do); each app runs it through its own `ServiceRuntime`.
    """

    def __init__(
        self,
        slug: str,
        *,
        title: str,
        version: str,
        description: str = "",
        settings: Sequence[Setting] = (),
        import_name: str | None = None,
        mqtt_writes: Sequence[str] = (),
    ) -> None:
        if not SLUG_RE.fullmatch(slug):
            raise ValueError(f"service slug {slug!r} must be lowercase words joined by '-'")
        self.slug = slug
        self.title = title
        self.version = version
        self.description = description
        self.section = Section(slug, tuple(settings))
        # Topic filters beyond its own subtree that it publishes to, relative to
        # `<root>/<node>/` (e.g. `device-service/actuators/+/set`): its broker account
        # may write them on its node, and nothing else of another service.
        self.mqtt_writes = tuple(_checked_writes(slug, mqtt_writes))
        self.operations: dict[str, Operation] = {}
        self.health_checks: list[HealthCheck] = []
        self.start_hooks: list[LifecycleHook] = []
        self.stop_hooks: list[LifecycleHook] = []
        self.admin_panels: list[AdminPanel] = []
        # The logger whose records the admin page shows: the declaring module's package.
        self.log_package = log_package(import_name)
        self.blueprint = Blueprint(
            slug,
            import_name or __name__,
            url_prefix=f"/api/{slug}",
            description=description or title,
        )
        ops_views.add_generic_routes(self)
        admin_views.add_admin_routes(self)

    def task(
        self,
        name: str,
        run: OpFunction,
        *,
        params: type[ma.Schema] = NoParams,
        abort: StopFunction | None = None,
        role: Role = Role.OPERATOR,
        description: str | None = None,
        destructive: bool = False,
    ) -> Operation:
        """Register a Task: `run(session, params)` finishes by itself; abort ends it early.

        Abort sets `session.stop_requested`; the code should check it (or `session.sleep`).
        `abort(session)`, when given, is called too: to interrupt a blocking call.
        `role` may start and abort it. `destructive`: it deletes data, so the dashboard
        asks before starting it.
        """
        return self._add(
            Operation(
                name,
                OpKind.TASK,
                run,
                params,
                stop=abort,
                role=role,
                description=description or _first_line(run),
                destructive=destructive,
            )
        )

    def process(
        self,
        name: str,
        run: OpFunction,
        *,
        stop: StopFunction | None = None,
        params: type[ma.Schema] = NoParams,
        autostart: Autostart | None = None,
        role: Role = Role.OPERATOR,
        description: str | None = None,
    ) -> Operation:
        """Register a Process: `run(session, params)` runs until it is stopped.

        Stop sets `session.stop_requested`, then calls `stop(session)` when given.
        `autostart` (params, or a function of the ServiceRuntime returning params or None)
        starts it once per node when the service starts. `role` may start and stop it.
        """
        return self._add(
            Operation(
                name,
                OpKind.PROCESS,
                run,
                params,
                stop=stop,
                autostart=autostart,
                role=role,
                description=description or _first_line(run),
            )
        )

    def health_check(self, check: HealthCheck) -> HealthCheck:
        """Register a health check (usable as a decorator).

        The check raises Degraded (or anything) when the service is unwell, and may return
        a detail string when it is well.
        """
        self.health_checks.append(check)
        return check

    def on_start(self, hook: LifecycleHook) -> LifecycleHook:
        """Register `hook(runtime)` to run when the service starts, before its autostarts.

        It sets up what the service owns (files, threads), keeping it in `runtime.extras`;
        it may raise ConfigError, which stops start-up.
        """
        self.start_hooks.append(hook)
        return hook

    def on_stop(self, hook: LifecycleHook) -> LifecycleHook:
        """Register `hook(runtime)` to run when the service stops, after its operations."""
        self.stop_hooks.append(hook)
        return hook

    def admin_panel(self, panel: AdminPanel) -> AdminPanel:
        """Register a panel of the service's admin page (shown after the generic sections).

        The panel is data, drawn by the dashboard: its `source` is an endpoint of this
        service, its `edit` another one, with the `form` schema as the edit form.
        """
        if any(known.title == panel.title for known in self.admin_panels):
            raise ValueError(f"admin panel {panel.title!r} is already registered on {self.slug}")
        self.admin_panels.append(panel)
        return panel

    def runtime(self) -> ServiceRuntime:
        """This service's runtime in the current Flask app."""
        runtime: ServiceRuntime = current_app.extensions["pyedge"].runtimes[self.slug]
        return runtime

    def _add(self, op: Operation) -> Operation:
        if not OP_NAME_RE.match(op.name):
            raise ValueError(f"operation name {op.name!r} must match {OP_NAME_RE.pattern}")
        if op.name in self.operations:
            raise ValueError(f"operation {op.name!r} is already registered on {self.slug}")
        if isinstance(op.autostart, Mapping):
            op.load_params(op.autostart)  # a bad autostart is a programming error: fail now
        self.operations[op.name] = op
        ops_views.add_start_route(self, op)
        return op


class ServiceRuntime:
    """One service running in one process: its settings, bus, sessions and health."""

    def __init__(
        self,
        service: EdgeService,
        *,
        node: str,
        bus: Bus,
        settings: Mapping[str, Any],
        data_dir: Path,
        site: str = "",
        metrics: Metrics | None = None,
        accounts: AccountStore | None = None,
        tls: NodeTls | None = None,
    ) -> None:
        self.service = service
        self.node = node
        self.site = site
        self.root = topic_root(site)
        self.bus = bus
        # The process's metrics: a service counts its events and registers its collectors.
        self.metrics = metrics if metrics is not None else Metrics()
        # The node's users and tokens, and its certificate when it serves HTTPS: for a
        # service that opens a listener of its own (they guard the app's listener already).
        self.accounts = accounts
        self.tls = tls
        self.settings = {
            setting.name: settings[service.section.key(setting)]
            for setting in service.section.settings
        }
        self.data_dir = data_dir / service.slug
        self.runner = OperationRunner(
            service.operations,
            on_change=self.publish_session,
            thread_prefix=service.slug,
            context=self,
        )
        self.autostart = self._autostart_params()
        self.responder = OpResponder(self)
        # What the service's start hooks set up for this runtime (an outbox, a thread).
        self.extras: dict[str, Any] = {}
        self._log: RingHandler | None = None

    @property
    def slug(self) -> str:
        """The service's slug."""
        return self.service.slug

    def topic(self, *parts: str) -> str:
        """The service's MQTT topic for `parts`: [<site>/]pyedge/<node>/<slug>/<parts...>."""
        return "/".join((self.root, self.node, self.slug, *parts))

    def start(self) -> None:
        """Announce the service on the bus and start its autostart Processes."""
        self.data_dir.mkdir(parents=True, exist_ok=True)
        # First: what the start hooks log is the admin page's to show too.
        # The runner names each operation's thread <slug>-<op>.
        threads = [f"{self.slug}-{name}" for name in self.service.operations]
        self._log = attach_log(self.slug, self.service.log_package, threads)
        self.responder.start()  # before `online`: a caller who saw it is heard
        self.bus.add_status_topic(self.topic("status"))
        self.bus.on_connect(self.publish_all_sessions)
        self.publish_all_sessions()
        for hook in self.service.start_hooks:
            hook(self)
        for name, params in self.autostart.items():
            logger.info("autostarting %s/%s", self.slug, name)
            self.runner.start(name, params)
        # Last: a call must not reach operations whose start hooks have not run.
        self.responder.open()

    def _autostart_params(self) -> dict[str, dict[str, Any]]:
        # Resolved and validated before anything starts, so that settings which make
        # bad params stop start-up with a ConfigError rather than a crash later.
        result = {}
        for op in self.service.operations.values():
            raw = op.autostart(self) if callable(op.autostart) else op.autostart
            if raw is None:
                continue
            try:
                result[op.name] = op.load_params(raw)
            except ma.ValidationError as exc:
                raise ConfigError(
                    f"{self.service.section.prefix}*",
                    f"autostart of {self.slug}/{op.name}",
                    f"the settings give invalid params: {exc.messages}",
                ) from exc
        return result

    def stop(self, timeout: float = 5.0) -> None:
        """Stop every running operation, then run the stop hooks (last started, first)."""
        self.runner.shutdown(timeout)
        self.responder.stop(timeout)
        for hook in reversed(self.service.stop_hooks):
            try:
                hook(self)
            except Exception:
                logger.exception("stop hook of %s failed", self.slug)
        if self._log is not None:
            self._log = None
            detach_log(self.slug)

    def log_lines(self) -> list[dict[str, str]]:
        """The service's recent log records, oldest first (none while it is not running)."""
        return self._log.lines() if self._log is not None else []

    def publish_session(self, snapshot: dict[str, Any]) -> None:
        """Publish a session snapshot, retained, so late subscribers see the current state.

        Not while disconnected: paho would queue every progress update of a long outage,
        and the current sessions are published again on reconnect anyway.
        """
        if self.bus.connected:
            self.bus.publish_json(self.topic("ops", snapshot["op"]), snapshot, retain=True)

    def publish_all_sessions(self) -> None:
        """Publish every session (after a reconnect the broker's copy may be stale)."""
        for session in list(self.runner.sessions.values()):
            session.publish()

    def health(self) -> Health:
        """Run the health checks; a Process that ended in failure also degrades the service."""
        failed = self._failed_process()
        if failed is not None:
            return failed
        details = []
        for check in self.service.health_checks:
            result = self.run_check(check)
            if not result.ok:
                return result
            if result.detail:
                details.append(result.detail)
        return Health("ok", "; ".join(details))

    def health_detail(self) -> tuple[Health, list[tuple[HealthCheck, Health]]]:
        """The health as `health()` gives it, and every check's own result (all run)."""
        checks = [(check, self.run_check(check)) for check in self.service.health_checks]
        overall = self._failed_process()
        if overall is None:
            degraded = [result for _check, result in checks if not result.ok]
            details = "; ".join(result.detail for _check, result in checks if result.detail)
            overall = degraded[0] if degraded else Health("ok", details)
        return overall, checks

    def run_check(self, check: HealthCheck) -> Health:
        """One health check's result: degraded with the reason when it raises."""
        try:
            detail = check(self)
        except Exception as exc:  # any failure of a check is a degraded service
            return Health("degraded", str(exc) or type(exc).__name__)
        return Health("ok", detail or "")

    def _failed_process(self) -> Health | None:
        for session in self.runner.sessions.values():
            if session.kind is OpKind.PROCESS and session.success is False:
                last = session.messages[-1].text if session.messages else "no message"
                return Health("degraded", f"process {session.op.name} {last}")
        return None


def _checked_writes(slug: str, filters: Sequence[str]) -> list[str]:
    """The `mqtt_writes` filters, checked: relative, under another service's subtree."""
    for topic_filter in filters:
        first = topic_filter.split("/", 1)[0]
        if not SLUG_RE.fullmatch(first) or first == slug or "#" in topic_filter[:-1]:
            raise ValueError(
                f"{slug}: mqtt_writes {topic_filter!r} must start with another service's "
                "slug (it is relative to <root>/<node>/), with '#' only at the end"
            )
    return list(filters)


def _first_line(func: Callable[..., Any]) -> str:
    doc = (func.__doc__ or "").strip()
    return doc.splitlines()[0] if doc else ""
