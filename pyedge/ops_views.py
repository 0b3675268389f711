"""The operation endpoints generated on every service's blueprint, and `perform`: the one
place an operation call (start, status, wait, abort, stop) runs, over HTTP or MQTT."""

from __future__ import annotations

from collections.abc import Mapping
from http import HTTPStatus
from typing import TYPE_CHECKING, Any, NoReturn

import marshmallow as ma
from flask import g, request
from flask.views import MethodView
from flask_smorest import abort
from werkzeug.http import HTTP_STATUS_CODES

from pyedge.errors import OperationConflict, PyEdgeError, ShuttingDown, UnknownOperation
from pyedge.operations import Operation, OperationRunner, Session
from pyedge.schemas import (
    MAX_WAIT_S,
    OperationSchema,
    SessionSchema,
    WaitArgsSchema,
    json_schema,
)
from pyedge.security import Role, requires

if TYPE_CHECKING:
    from pyedge.service import EdgeService

ACTIONS = ("start", "status", "wait", "abort", "stop")


class OpCallError(PyEdgeError):
    """An operation call refused, as the API answers it: status code, message, errors."""

    def __init__(self, code: int, message: str, errors: Mapping[str, Any] | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.errors = dict(errors) if errors is not None else None

    def envelope(self) -> dict[str, Any]:
        """flask-smorest's error envelope: {code, status, message, errors?}."""
        body: dict[str, Any] = {
            "code": self.code,
            # werkzeug's names, which Flask's HTTP errors (and so smorest's envelope) carry.
            "status": HTTP_STATUS_CODES.get(self.code, "Unknown Error"),
            "message": self.message,
        }
        if self.errors is not None:
            body["errors"] = self.errors
        return body


def action_role(op: Operation, action: str) -> Role:
    """The role an action on `op` needs: viewer reads; its own role starts and ends it."""
    if action in ("status", "wait"):
        return Role.VIEWER
    # abort and stop: the generic routes let operators in; an admin-only operation (an
    # image pull) may be ended only by an admin, as it may be started only by one.
    return op.role


def perform(
    runner: OperationRunner,
    slug: str,
    name: str,
    action: str,
    *,
    params: Mapping[str, Any] | None = None,
    timeout: float = MAX_WAIT_S,
    caller: Role | None = None,
    raw_params: bool = False,
) -> dict[str, Any]:
    """Do `action` on operation `name` and return its session; raises OpCallError.

    `caller` is the caller's role, checked against `action_role` (None: an app without
    Auth). `raw_params` (MQTT) are validated here by the operation's schema; over HTTP
    webargs has loaded them with that same schema. `timeout` (wait) is in seconds, at
    most MAX_WAIT_S.
    """
    try:
        op = runner.operation(name)
        if action not in ACTIONS:
            raise OpCallError(HTTPStatus.BAD_REQUEST, f"unknown action {action!r}")
        needed = action_role(op, action)
        if caller is not None and caller < needed:
            raise OpCallError(
                HTTPStatus.FORBIDDEN,
                f"{action} of {name} needs the {needed.label} role; the caller is {caller.label}",
            )
        if raw_params and action == "start":
            params = load_params(op, params or {})
        session: Session
        if action == "start":
            session = runner.start(name, params or {})
        elif action == "abort":
            session = runner.abort(name)
        elif action == "stop":
            session = runner.stop(name)
        else:
            session = runner.session(name)
            if action == "wait":
                session.wait(min(max(timeout, 0.0), MAX_WAIT_S))
        return session.to_dict()
    except UnknownOperation as exc:
        raise OpCallError(HTTPStatus.NOT_FOUND, f"{slug}: {exc}") from exc
    except OperationConflict as exc:
        raise OpCallError(HTTPStatus.CONFLICT, str(exc)) from exc
    except ShuttingDown as exc:
        raise OpCallError(HTTPStatus.SERVICE_UNAVAILABLE, str(exc)) from exc


def load_params(op: Operation, raw: Any) -> dict[str, Any]:
    """`raw` params validated by the operation's schema, as webargs does for HTTP (422)."""
    try:
        return op.load_params(raw)
    except ma.ValidationError as exc:
        # webargs keys the errors by location; the params are the JSON body over HTTP.
        raise OpCallError(
            HTTPStatus.UNPROCESSABLE_ENTITY, "invalid params", {"json": exc.messages}
        ) from exc


def abort_call(exc: OpCallError) -> NoReturn:
    """Answer a refused HTTP call with the API's error envelope (abort always raises)."""
    extra = {"errors": exc.errors} if exc.errors is not None else {}
    abort(exc.code, message=exc.message, **extra)
    raise AssertionError("abort returned")


def describe(op: Operation, session: Session) -> dict[str, Any]:
    """An operation as GET /ops lists it."""
    return {
        "name": op.name,
        "kind": op.kind,
        "role": op.role.label,
        "destructive": op.destructive,
        "description": op.description,
        "params_schema": json_schema(op.params),
        "session": session.to_dict(),
    }


def call(
    service: EdgeService,
    name: str,
    action: str,
    *,
    params: Mapping[str, Any] | None = None,
    timeout: float = MAX_WAIT_S,
) -> dict[str, Any]:
    """`perform` for an HTTP request, whose params webargs loaded."""
    runner = service.runtime().runner
    # Auth checked the route's role; abort and stop also need the operation's own.
    identity = g.get("identity")
    caller = identity.role if identity is not None else None
    try:
        return perform(
            runner, service.slug, name, action, params=params, timeout=timeout, caller=caller
        )
    except OpCallError as exc:
        abort_call(exc)


def add_generic_routes(service: EdgeService) -> None:
    """Add the endpoints shared by all operations: list, status, wait, abort, stop."""
    blp = service.blueprint

    @blp.before_request
    def require_json_params() -> None:
        # webargs ignores a body that is not JSON; parameters silently dropped would start
        # an operation with its defaults, so say so instead.
        rule = request.url_rule.rule if request.url_rule else ""
        if rule.endswith("/start") and request.content_length and not request.is_json:
            abort(
                HTTPStatus.UNSUPPORTED_MEDIA_TYPE,
                message="send operation parameters as application/json",
            )

    @blp.route("/ops")
    class Operations(MethodView):
        @blp.response(200, OperationSchema(many=True))
        def get(self) -> list[dict[str, Any]]:
            """List the operations with their kind, parameters and session."""
            runner = service.runtime().runner
            return [describe(op, runner.sessions[name]) for name, op in runner.operations.items()]

    @blp.route("/ops/<op>")
    class OperationStatus(MethodView):
        @blp.response(200, SessionSchema)
        def get(self, op: str) -> dict[str, Any]:
            """Show an operation's session."""
            return call(service, op, "status")

    @blp.route("/ops/<op>/wait")
    class OperationWait(MethodView):
        @requires(Role.VIEWER)  # a POST that only reads
        @blp.arguments(WaitArgsSchema, location="query")
        @blp.response(200, SessionSchema)
        def post(self, args: dict[str, float], op: str) -> dict[str, Any]:
            """Wait until the session ends or the timeout passes; returns the session."""
            return call(service, op, "wait", timeout=args["timeout"])

    @blp.route("/ops/<op>/abort")
    class OperationAbort(MethodView):
        @requires(Role.OPERATOR)
        @blp.response(200, SessionSchema)
        @blp.alt_response(409, description="Not a Task, or not running")
        def post(self, op: str) -> dict[str, Any]:
            """Abort a running Task (a Process is stopped, not aborted)."""
            return call(service, op, "abort")

    @blp.route("/ops/<op>/stop")
    class OperationStop(MethodView):
        @requires(Role.OPERATOR)
        @blp.response(200, SessionSchema)
        @blp.alt_response(409, description="Not a Process, or not running")
        def post(self, op: str) -> dict[str, Any]:
            """Stop a running Process (a Task is aborted, not stopped)."""
            return call(service, op, "stop")


def add_start_route(service: EdgeService, op: Operation) -> None:
    """Add POST /ops/<op>/start, typed by the operation's own parameter schema."""
    blp = service.blueprint
    # Parameters that all have defaults may be left out, body and all: start with them.
    params = op.params()
    body_required = any(field.required for field in params.fields.values())

    class StartOperation(MethodView):
        @requires(op.role)
        @blp.arguments(params, required=body_required)
        @blp.response(202, SessionSchema)
        @blp.alt_response(409, description="Already running")
        @blp.alt_response(503, description="The service is shutting down")
        def post(self, params: dict[str, Any]) -> dict[str, Any]:
            return call(service, op.name, "start", params=params)

    # The OpenAPI summary is the docstring's first line: name the operation in it.
    StartOperation.post.__doc__ = f"Start the {op.kind.value} {op.name}.\n\n{op.description}"
    StartOperation.__name__ = f"Start_{op.name}"
    blp.route(f"/ops/{op.name}/start", endpoint=f"start_{op.name}")(StartOperation)
