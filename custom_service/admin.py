"""custom-service's own admin panel: the worked example of adding a section to the admin page.

Every service already gets an admin page in the dashboard (`GET /api/<slug>/admin`: its
settings and where each came from, health checks, operations, recent log lines). A
service adds sections of its own with `service.admin_panel(AdminPanel(...))`. A panel is
data, not HTML (the dashboard draws it, so a service on another node never serves code to
the hub's origin), made of ordinary endpoints of the service:

- `source`: a path under the service's API whose GET answers an object (shown as facts)
  or a list (shown as a table, one row per item, named by its `key` field); `columns`
  pick the fields shown, in order;
- `edit` and `form` (optional): the path that `method` sends a change to, and the
  marshmallow schema whose JSON Schema becomes the edit form, prefilled with the object
  (or the row: `{field}` in the path is filled in from it, e.g. `sensors/{name}`);
- `role`: who sees the Edit button. The endpoint declares its own role with `@requires`,
  which is what the server enforces.

Here: the heartbeat Process, shown as an object, and restarted at another interval with
the same schema that its start takes. device_service/service.py has a list panel (the
sensors, each editable), container_manager/admin.py a read-only one (its policy).
"""

from __future__ import annotations

import contextlib
from http import HTTPStatus
from typing import Any

import marshmallow as ma
from flask.views import MethodView
from flask_smorest import abort

from custom_service.schemas import HeartbeatParams
from custom_service.service import service
from pyedge import AdminPanel, OperationConflict, ServiceRuntime
from pyedge.errors import ShuttingDown
from pyedge.security import Role, requires

blp = service.blueprint
HEARTBEAT = "heartbeat"
# How long a restart waits for the running heartbeat to stop (it stops within a beat's sleep).
STOP_WAIT_S = 5.0


class HeartbeatSchema(ma.Schema):
    """The heartbeat Process as the admin panel shows it."""

    state = ma.fields.String(required=True, metadata={"description": "the session's state"})
    running = ma.fields.Boolean(required=True)
    interval = ma.fields.Float(
        required=True, allow_none=True, metadata={"description": "seconds between beats"}
    )
    beats = ma.fields.Integer(required=True, metadata={"description": "sent since it started"})
    last_beat = ma.fields.String(required=True, allow_none=True)
    topic = ma.fields.String(required=True, metadata={"description": "where it beats"})


def heartbeat_state(runtime: ServiceRuntime) -> dict[str, Any]:
    """The heartbeat's session, summed up."""
    session = runtime.runner.session(HEARTBEAT)
    snapshot = session.to_dict()
    return {
        "state": snapshot["state"].value,
        "running": session.active,
        "interval": snapshot["params"].get("interval"),
        "beats": snapshot["data"].get("seq", 0),
        "last_beat": snapshot["data"].get("last_beat"),
        "topic": runtime.topic(HEARTBEAT),
    }


@blp.route("/heartbeat")
class Heartbeat(MethodView):
    @blp.response(200, HeartbeatSchema)
    def get(self) -> dict[str, Any]:
        """The heartbeat Process: running or not, its interval, beats sent, the last one."""
        return heartbeat_state(service.runtime())

    # The role that starts and stops the Process itself: this is a restart of it.
    @requires(Role.OPERATOR)
    @blp.arguments(HeartbeatParams)
    @blp.response(200, HeartbeatSchema)
    @blp.alt_response(409, description="The running heartbeat did not stop in time")
    def put(self, params: dict[str, Any]) -> dict[str, Any]:
        """(Re)start the heartbeat at this interval, until it is stopped or the service restarts."""
        runtime = service.runtime()
        runner = runtime.runner
        session = runner.session(HEARTBEAT)
        if session.active:
            with contextlib.suppress(OperationConflict):  # it ended meanwhile: fine
                runner.stop(HEARTBEAT)
            session.wait(STOP_WAIT_S)
        try:
            runner.start(HEARTBEAT, params)
        except OperationConflict as exc:
            abort(HTTPStatus.CONFLICT, message=str(exc))
        except ShuttingDown as exc:
            abort(HTTPStatus.SERVICE_UNAVAILABLE, message=str(exc))
        return heartbeat_state(runtime)


# The panel: one object from GET /heartbeat, edited through PUT /heartbeat with the form
# of HeartbeatParams (a number field, its range and default from the schema).
service.admin_panel(
    AdminPanel(
        title="Heartbeat",
        description="The heartbeat Process publishes a beat at this interval. Saving restarts "
        "it at the new one, until it is stopped or the service restarts (then "
        "EDGE_CUSTOM_SERVICE_HEARTBEAT_INTERVAL applies again).",
        source="heartbeat",
        columns=("running", "state", "interval", "beats", "last_beat", "topic"),
        edit="heartbeat",
        form=HeartbeatParams,
        method="PUT",
        role=Role.OPERATOR,
    )
)
