"""The operation endpoints generated on every service's blueprint."""

from __future__ import annotations

from http import HTTPStatus
from typing import TYPE_CHECKING, Any

from flask.views import MethodView
from flask_smorest import abort

from pyedge.errors import OperationConflict, UnknownOperation
from pyedge.operations import Operation, Session
from pyedge.schemas import OperationSchema, SessionSchema, WaitArgsSchema, json_schema

if TYPE_CHECKING:
    from pyedge.service import EdgeService, ServiceRuntime


def describe(op: Operation, session: Session) -> dict[str, Any]:
    """An operation as GET /ops lists it."""
    return {
        "name": op.name,
        "kind": op.kind,
        "description": op.description,
        "params_schema": json_schema(op.params),
        "session": session.to_dict(),
    }


def call(runtime: ServiceRuntime, action: str, name: str, *args: Any) -> Session:
    """Run a runner action, translating its errors into the API's error envelope."""
    try:
        session: Session = getattr(runtime.runner, action)(name, *args)
    except UnknownOperation as exc:
        abort(HTTPStatus.NOT_FOUND, message=f"{runtime.slug}: {exc}")
    except OperationConflict as exc:
        abort(HTTPStatus.CONFLICT, message=str(exc))
    return session


def add_generic_routes(service: EdgeService) -> None:
    """Add the endpoints shared by all operations: list, status, wait, abort, stop."""
    blp = service.blueprint

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
            return call(service.runtime(), "session", op).to_dict()

    @blp.route("/ops/<op>/wait")
    class OperationWait(MethodView):
        @blp.arguments(WaitArgsSchema, location="query")
        @blp.response(200, SessionSchema)
        def post(self, args: dict[str, float], op: str) -> dict[str, Any]:
            """Wait until the session ends or the timeout passes; returns the session."""
            session = call(service.runtime(), "session", op)
            session.wait(args["timeout"])
            return session.to_dict()

    @blp.route("/ops/<op>/abort")
    class OperationAbort(MethodView):
        @blp.response(200, SessionSchema)
        @blp.alt_response(409, description="Not a Task, or not running")
        def post(self, op: str) -> dict[str, Any]:
            """Abort a running Task (a Process is stopped, not aborted)."""
            return call(service.runtime(), "abort", op).to_dict()

    @blp.route("/ops/<op>/stop")
    class OperationStop(MethodView):
        @blp.response(200, SessionSchema)
        @blp.alt_response(409, description="Not a Process, or not running")
        def post(self, op: str) -> dict[str, Any]:
            """Stop a running Process (a Task is aborted, not stopped)."""
            return call(service.runtime(), "stop", op).to_dict()


def add_start_route(service: EdgeService, op: Operation) -> None:
    """Add POST /ops/<op>/start, typed by the operation's own parameter schema."""
    blp = service.blueprint

    def start(params: dict[str, Any]) -> dict[str, Any]:
        return call(service.runtime(), "start", op.name, params).to_dict()

    start.__doc__ = f"Start the {op.kind.value} {op.name}.\n\n{op.description}"
    start.__name__ = f"start_{op.name}"
    view = blp.response(202, SessionSchema)(start)
    view = blp.alt_response(409, description="Already running")(view)
    view = blp.arguments(op.params)(view)
    blp.route(f"/ops/{op.name}/start", methods=["POST"], endpoint=f"start_{op.name}")(view)
