"""The operation endpoints generated on every service's blueprint."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from http import HTTPStatus
from typing import TYPE_CHECKING, Any

from flask import request
from flask.views import MethodView
from flask_smorest import abort

from pyedge.errors import OperationConflict, ShuttingDown, UnknownOperation
from pyedge.operations import Operation, Session
from pyedge.schemas import OperationSchema, SessionSchema, WaitArgsSchema, json_schema
from pyedge.security import Role, requires

if TYPE_CHECKING:
    from pyedge.service import EdgeService


@contextmanager
def api_errors(slug: str) -> Iterator[None]:
    """Translate the runner's errors into the API's error envelope, in one place."""
    try:
        yield
    except UnknownOperation as exc:
        abort(HTTPStatus.NOT_FOUND, message=f"{slug}: {exc}")
    except OperationConflict as exc:
        abort(HTTPStatus.CONFLICT, message=str(exc))
    except ShuttingDown as exc:
        abort(HTTPStatus.SERVICE_UNAVAILABLE, message=str(exc))


def describe(op: Operation, session: Session) -> dict[str, Any]:
    """An operation as GET /ops lists it."""
    return {
        "name": op.name,
        "kind": op.kind,
        "description": op.description,
        "params_schema": json_schema(op.params),
        "session": session.to_dict(),
    }


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
            with api_errors(service.slug):
                return service.runtime().runner.session(op).to_dict()

    @blp.route("/ops/<op>/wait")
    class OperationWait(MethodView):
        @requires(Role.VIEWER)  # a POST that only reads
        @blp.arguments(WaitArgsSchema, location="query")
        @blp.response(200, SessionSchema)
        def post(self, args: dict[str, float], op: str) -> dict[str, Any]:
            """Wait until the session ends or the timeout passes; returns the session."""
            with api_errors(service.slug):
                session = service.runtime().runner.session(op)
            session.wait(args["timeout"])
            return session.to_dict()

    @blp.route("/ops/<op>/abort")
    class OperationAbort(MethodView):
        @requires(Role.OPERATOR)
        @blp.response(200, SessionSchema)
        @blp.alt_response(409, description="Not a Task, or not running")
        def post(self, op: str) -> dict[str, Any]:
            """Abort a running Task (a Process is stopped, not aborted)."""
            with api_errors(service.slug):
                return service.runtime().runner.abort(op).to_dict()

    @blp.route("/ops/<op>/stop")
    class OperationStop(MethodView):
        @requires(Role.OPERATOR)
        @blp.response(200, SessionSchema)
        @blp.alt_response(409, description="Not a Process, or not running")
        def post(self, op: str) -> dict[str, Any]:
            """Stop a running Process (a Task is aborted, not stopped)."""
            with api_errors(service.slug):
                return service.runtime().runner.stop(op).to_dict()


def add_start_route(service: EdgeService, op: Operation) -> None:
    """Add POST /ops/<op>/start, typed by the operation's own parameter schema."""
    blp = service.blueprint

    class StartOperation(MethodView):
        @requires(op.role)
        @blp.arguments(op.params)
        @blp.response(202, SessionSchema)
        @blp.alt_response(409, description="Already running")
        @blp.alt_response(503, description="The service is shutting down")
        def post(self, params: dict[str, Any]) -> dict[str, Any]:
            with api_errors(service.slug):
                return service.runtime().runner.start(op.name, params).to_dict()

    # The OpenAPI summary is the docstring's first line: name the operation in it.
    StartOperation.post.__doc__ = f"Start the {op.kind.value} {op.name}.\n\n{op.description}"
    StartOperation.__name__ = f"Start_{op.name}"
    blp.route(f"/ops/{op.name}/start", endpoint=f"start_{op.name}")(StartOperation)
