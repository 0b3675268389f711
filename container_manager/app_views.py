"""container-manager REST resources for apps: desired state, its plan, and its removal.

PUT stores the desired state and wakes the reconciler, which does the work; the answer
shows the app as it is at that moment (usually still converging).
"""

from __future__ import annotations

from http import HTTPStatus
from typing import Any

from flask import request
from flask.views import MethodView
from flask_smorest import abort

from container_manager.app_schemas import (
    APP_NAME_RE,
    NAME_ERROR,
    AppDetailSchema,
    ApplyArgs,
    AppSchema,
    AppSpecSchema,
    DeleteArgs,
    PlanSchema,
)
from container_manager.apps import (
    AppStore,
    app_volumes,
    network_name,
    plan,
    service_violations,
    uses_app_network,
)
from container_manager.errors import Conflict, ContainerManagerError, NotFound, PolicyDenied
from container_manager.reconciler import APPS, RECONCILER, Reconciler
from container_manager.service import policy_of, service

blp = service.blueprint


class NotRunning(ContainerManagerError):
    """The service is not started (or is stopping): its apps cannot be reached."""

    status = HTTPStatus.SERVICE_UNAVAILABLE


def reconciler() -> Reconciler:
    """This app's reconciler, or 503 while the service is not started."""
    found: Reconciler | None = service.runtime().extras.get(RECONCILER)
    if found is None:
        raise NotRunning("container-manager is not running")
    return found


def store() -> AppStore:
    """This app's app store, or 503 while the service is not started."""
    found: AppStore | None = service.runtime().extras.get(APPS)
    if found is None:
        raise NotRunning("container-manager is not running")
    return found


def checked_name(name: str) -> str:
    """The app name of the path, or 422 as for any invalid argument."""
    if not APP_NAME_RE.fullmatch(name):
        abort(
            HTTPStatus.UNPROCESSABLE_ENTITY,
            message="Unprocessable Entity",
            errors={"path": {"name": [f"not an app name: {NAME_ERROR}"]}},
        )
    return name


def raw_spec() -> dict[str, Any]:
    """The body as the user sent it (already validated by @blp.arguments), to be stored."""
    body: dict[str, Any] = request.get_json()
    return body


def adopted_targets(
    name: str, loaded: dict[str, Any], adopted: tuple[str, ...], forced: list[str | None]
) -> tuple[str, ...]:
    """The adopted networks and volumes the spec still uses (a dropped one needs force again)."""
    services = loaded["services"]
    targets = set(app_volumes(name, services))
    if any(uses_app_network(spec) for spec in services.values()):
        targets.add(network_name(name))
    return tuple(sorted({n for n in (*adopted, *forced) if n and n in targets}))


@blp.route("/apps")
class Apps(MethodView):
    @blp.response(200, AppSchema(many=True))
    def get(self) -> list[dict[str, Any]]:
        """List the apps: desired state against the engine's, per service."""
        rec = reconciler()
        return [rec.view(app) for app in store().all()]


# The app name of a path, as the document says it (checked_name answers any other 422).
APP_NAME_PARAMETER = {
    "in": "path",
    "name": "name",
    "required": True,
    "schema": {"type": "string", "pattern": APP_NAME_RE.pattern},
}


@blp.route("/apps/<name>", parameters=[APP_NAME_PARAMETER])
class AppResource(MethodView):
    @blp.response(200, AppDetailSchema)
    @blp.alt_response(404, description="No such app")
    def get(self, name: str) -> dict[str, Any]:
        """Show an app: its spec as given and, per service, desired against actual."""
        app = store().get(checked_name(name))
        if app is None:
            raise NotFound(f"no app {name!r}")
        return reconciler().view(app, detail=True)

    @blp.arguments(AppSpecSchema)
    @blp.arguments(ApplyArgs, location="query")
    @blp.response(200, AppDetailSchema)
    @blp.alt_response(201, schema=AppDetailSchema, description="The app is new")
    @blp.alt_response(403, description="Denied by the security policy; errors.violations")
    @blp.alt_response(
        409, description="A container, network or volume in the way; errors.conflicts"
    )
    def put(
        self, loaded: dict[str, Any], args: dict[str, Any], name: str
    ) -> tuple[dict[str, Any], int]:
        """Deploy an app: store its spec as the desired state; the reconciler converges.

        Each service is checked against the security policy first (403 with every
        violation, nothing stored). A container, network or volume with a target name that
        the app did not create is a conflict (409). With force=true such a container is
        removed, and such a network or volume adopted as it is (never removed, even by
        DELETE ?volumes=true); one of another app, or a system one, never. Any PUT, even
        of the same spec, starts the services' crash counts and backoff afresh.
        """
        name = checked_name(name)
        raw = raw_spec()
        rec = reconciler()
        policy = policy_of(service.runtime())
        # Checked before anything reaches the engine, reads included.
        violations = [v for vs in service_violations(policy, loaded).values() for v in vs]
        if violations:
            raise PolicyDenied(violations)
        with rec.app_lock(name):
            stored = store().get(name)
            adopted = stored.adopted if stored else ()
            actual = rec.observe(name, loaded)
            found = plan(name, raw, loaded, actual, policy, force=args["force"], adopted=adopted)
            blocking = [c for c in found.conflicts if not (args["force"] and c["forceable"])]
            if blocking:
                reasons = "; ".join(
                    f"{c.get('container') or c.get('network') or c.get('volume')}: {c['reason']}"
                    for c in blocking
                )
                raise Conflict(f"in the way of app {name}: {reasons}", {"conflicts": blocking})
            for conflict in found.conflicts:
                if "id" in conflict:
                    rec.remove_container(conflict["id"])
            # What is left is forced networks and volumes: the app uses them from now on.
            forced = [c.get("network") or c.get("volume") for c in found.conflicts]
            app, created = store().put(name, raw, adopted_targets(name, loaded, adopted, forced))
            rec.reset(name)
        rec.wake.set()
        status = HTTPStatus.CREATED if created else HTTPStatus.OK
        return rec.view(app, detail=True), status

    @blp.arguments(DeleteArgs, location="query")
    @blp.response(204)
    @blp.alt_response(404, description="No such app")
    def delete(self, args: dict[str, Any], name: str) -> None:
        """Remove an app: its containers and network; its volumes only with volumes=true."""
        name = checked_name(name)
        rec = reconciler()
        with rec.app_lock(name):
            if store().get(name) is None:
                raise NotFound(f"no app {name!r}")
            rec.delete(name, volumes=args["volumes"])
            store().delete(name)
            rec.forget(name)


@blp.route("/apps/<name>/plan", parameters=[APP_NAME_PARAMETER])
class AppPlan(MethodView):
    @blp.arguments(AppSpecSchema)
    @blp.arguments(ApplyArgs, location="query")
    @blp.response(200, PlanSchema)
    def post(self, loaded: dict[str, Any], args: dict[str, Any], name: str) -> dict[str, Any]:
        """Dry run: the steps applying a spec would take, its violations and conflicts."""
        name = checked_name(name)
        rec = reconciler()
        stored = store().get(name)
        found = plan(
            name,
            raw_spec(),
            loaded,
            rec.observe(name, loaded),
            policy_of(service.runtime()),
            force=args["force"],
            adopted=stored.adopted if stored else (),
        )
        return {
            "app": name,
            "steps": found.steps,
            "violations": found.violations,
            "conflicts": found.conflicts,
        }
