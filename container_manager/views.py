"""container-manager REST resources: system, containers, images, volumes and networks."""

from __future__ import annotations

import shutil
import threading
from collections.abc import Callable
from http import HTTPStatus
from typing import Any

from docker import DockerClient
from flask import Response, current_app, jsonify, request
from flask.views import MethodView
from flask_smorest import abort
from werkzeug.exceptions import HTTPException
from werkzeug.routing import PathConverter

from container_manager import containers, images, streams
from container_manager.engine import ENGINE, Engine
from container_manager.errors import Conflict, ContainerManagerError, PolicyDenied
from container_manager.pull import REF_PATTERN, parse_ref
from container_manager.schemas import (
    ContainerDetailSchema,
    ContainerSchema,
    EventArgs,
    ForceArgs,
    ImageDetailSchema,
    ImageSchema,
    KillArgs,
    ListArgs,
    LogArgs,
    LogsSchema,
    NetworkCreateSchema,
    NetworkSchema,
    PruneArgs,
    PruneSchema,
    StatsSchema,
    StopArgs,
    StreamArgs,
    SystemSchema,
    VolumeCreateSchema,
    VolumeSchema,
)
from container_manager.service import STREAMS, policy_of, service
from container_manager.specs import MANAGED_LABEL, ContainerCreateSchema, create_kwargs
from pyedge import sse
from pyedge.security import Role, requires

blp = service.blueprint
# An image reference or id in a path; never `prune` itself, whose path is the prune.
IMAGE_PATH_PATTERN = "^(?!prune$)" + REF_PATTERN.removeprefix("^")
IMAGE_REF_PARAMETER = {
    "in": "path",
    "name": "ref",
    "required": True,
    "description": "an image reference ([host[:port]/]name[:tag][@digest]) or id",
    "schema": {"type": "string", "pattern": IMAGE_PATH_PATTERN},
}


class ImageRefConverter(PathConverter):
    """A path converter that never takes `prune`: GET or DELETE of /images/prune is 405
    (with Allow: POST), as the document says, where a concrete path wins over a template."""

    regex = r"(?!prune/?$)[^/].*?"


# Before the routes that use it are added (deferred functions run in order).
blp.record_once(
    lambda state: state.app.url_map.converters.setdefault("imageref", ImageRefConverter)
)


@blp.errorhandler(ContainerManagerError)
def container_manager_error(exc: ContainerManagerError) -> Any:
    """Answer the container-manager's errors in the API's one error envelope."""
    try:
        if exc.errors:
            abort(exc.status, message=str(exc), errors=exc.errors)
        abort(exc.status, message=str(exc))
    except HTTPException as http_exc:
        return current_app.handle_http_exception(http_exc)


def engine() -> Engine:
    """This app's engine, or 503 while the service is not started."""
    found: Engine | None = service.runtime().extras.get(ENGINE)
    if found is None:
        abort(HTTPStatus.SERVICE_UNAVAILABLE, message="container-manager is not running")
    return found


@blp.route("/system")
class System(MethodView):
    @blp.response(200, SystemSchema)
    def get(self) -> dict[str, Any]:
        """The engine: versions, OS and architecture, free disk, counts."""
        eng = engine()
        version = eng.call(lambda c: c.version())
        info = eng.call(lambda c: c.info())
        root = info.get("DockerRootDir", "")
        try:
            # Meaningful when the engine runs on this host, as it does on a device.
            free: int | None = shutil.disk_usage(root).free if root else None
        except OSError:
            free = None
        return {
            "engine_version": version.get("Version"),
            "api_version": version.get("ApiVersion"),
            "client_api_version": eng.client.api.api_version,
            "os": info.get("OperatingSystem"),
            "os_type": info.get("OSType"),
            "architecture": info.get("Architecture"),
            "kernel": info.get("KernelVersion"),
            "docker_root": root,
            "disk_free_bytes": free,
            "containers": info.get("Containers", 0),
            "containers_running": info.get("ContainersRunning", 0),
            "images": info.get("Images", 0),
        }


@blp.route("/containers")
class Containers(MethodView):
    @blp.arguments(ListArgs, location="query")
    @blp.response(200, ContainerSchema(many=True))
    def get(self, args: dict[str, Any]) -> Response:
        """List containers (running ones unless all=true), optionally by label."""
        listed = containers.list_containers(engine(), all=args["all"], labels=args["label"])
        # summary() builds each item to ContainerSchema's fields exactly (a test holds it to
        # that): dumping 20 through marshmallow again cost a fifth of the engine's own call.
        return jsonify(listed)

    @blp.arguments(ContainerCreateSchema)
    @blp.response(201, ContainerDetailSchema)
    @blp.alt_response(403, description="Denied by the security policy; errors.violations")
    @blp.alt_response(409, description="More CPUs than the engine has, or the name is taken")
    def post(self, spec: dict[str, Any]) -> dict[str, Any]:
        """Create a container from a spec (compose's field names) and start it."""
        eng = engine()  # 503 before anything while the service is not running
        violations = policy_of(service.runtime()).check(spec)
        if violations:
            raise PolicyDenied(violations)
        if spec["cpus"]:
            # A valid spec this engine cannot run: a conflict with the device, not a bad
            # request (the engine's own answer would be 400).
            ncpu = eng.call(lambda c: c.info()).get("NCPU") or 0
            if spec["cpus"] > ncpu:
                raise Conflict(f"cpus is {spec['cpus']:g}, and the engine has {ncpu} CPUs")
        kwargs = create_kwargs(spec)
        created = eng.call(lambda c: c.containers.create(name=spec["name"], **kwargs), slow=True)
        if spec["start"]:
            try:
                eng.call(lambda c: c.api.start(created.id), slow=True)
            except ContainerManagerError:
                # A container that cannot start (a port taken, say) is not left behind.
                eng.call(lambda c: c.api.remove_container(created.id, force=True), slow=True)
                raise
        return containers.describe(containers.inspect(eng, created.id))


@blp.route("/containers/<ident>")
class ContainerResource(MethodView):
    @blp.response(200, ContainerDetailSchema)
    def get(self, ident: str) -> dict[str, Any]:
        """Inspect a container (environment values redacted)."""
        return containers.describe(containers.inspect(engine(), ident))

    @blp.arguments(ForceArgs, location="query")
    @blp.response(204)
    def delete(self, args: dict[str, Any], ident: str) -> None:
        """Remove a container (force=true: even while it runs)."""
        eng = engine()
        attrs = containers.guard(eng, ident, "removed")
        eng.call(lambda c: c.api.remove_container(attrs["Id"], force=args["force"]), slow=True)


def _act(ident: str, done: str, call: Callable[[DockerClient, str], object]) -> dict[str, Any]:
    """Run `call(client, id)` on a container PyEdge may change; the container afterwards."""
    eng = engine()
    cid = containers.guard(eng, ident, done)["Id"]
    # Starting and stopping wait for the container; on a busy device that takes a while.
    eng.call(lambda c: call(c, cid), slow=True)
    return containers.describe(containers.inspect(eng, cid))


@blp.route("/containers/<ident>/start")
class ContainerStart(MethodView):
    @requires(Role.OPERATOR)
    @blp.response(200, ContainerDetailSchema)
    def post(self, ident: str) -> dict[str, Any]:
        """Start a container."""
        return _act(ident, "started", lambda c, cid: c.api.start(cid))


@blp.route("/containers/<ident>/stop")
class ContainerStop(MethodView):
    @requires(Role.OPERATOR)
    @blp.arguments(StopArgs, location="query")
    @blp.response(200, ContainerDetailSchema)
    def post(self, args: dict[str, Any], ident: str) -> dict[str, Any]:
        """Stop a container: SIGTERM, then SIGKILL after `timeout` seconds."""
        return _act(ident, "stopped", lambda c, cid: c.api.stop(cid, timeout=args["timeout"]))


@blp.route("/containers/<ident>/restart")
class ContainerRestart(MethodView):
    @requires(Role.OPERATOR)
    @blp.arguments(StopArgs, location="query")
    @blp.response(200, ContainerDetailSchema)
    def post(self, args: dict[str, Any], ident: str) -> dict[str, Any]:
        """Restart a container (stopping it as stop does)."""
        return _act(ident, "restarted", lambda c, cid: c.api.restart(cid, timeout=args["timeout"]))


@blp.route("/containers/<ident>/kill")
class ContainerKill(MethodView):
    @requires(Role.OPERATOR)
    @blp.arguments(KillArgs, location="query")
    @blp.response(200, ContainerDetailSchema)
    def post(self, args: dict[str, Any], ident: str) -> dict[str, Any]:
        """Send a container a signal (SIGKILL unless `signal` says otherwise)."""
        return _act(ident, "killed", lambda c, cid: c.api.kill(cid, signal=args["signal"]))


@blp.route("/containers/<ident>/stats")
class ContainerStats(MethodView):
    @blp.response(200, StatsSchema)
    def get(self, ident: str) -> dict[str, Any]:
        """One sample of a container's CPU (from deltas), memory, network and disk use."""
        return containers.stats(engine(), ident)


@blp.route("/containers/<ident>/logs")
class ContainerLogs(MethodView):
    @blp.arguments(LogArgs, location="query")
    @blp.response(200, LogsSchema)
    def get(self, args: dict[str, Any], ident: str) -> dict[str, Any]:
        """The last lines of a container's stdout and stderr, in time order."""
        lines = containers.logs(engine(), ident, **args)
        return {"id": ident, "lines": lines}


def event_stream(
    sources: Callable[[Engine, list[str] | None], list[streams.Source]], count: int
) -> Response:
    """An SSE response of the `count` engine streams `sources` opens; 503 when too many are.

    `sources(engine, floors)` opens them from the positions of a Last-Event-ID, if any.
    """
    runtime = service.runtime()
    slots: threading.BoundedSemaphore = runtime.extras[STREAMS]
    if not slots.acquire(blocking=False):
        abort(HTTPStatus.SERVICE_UNAVAILABLE, message="too many streams open; try again later")
    try:
        floors = streams.resume_floors(request.headers.get("Last-Event-ID"), count)
        opened_at = streams.engine_now()
        stream = streams.EventStream(sources(engine(), floors), slots.release)
    except BaseException:
        slots.release()
        raise
    heartbeat = runtime.settings["stream_heartbeat"]
    response = sse.event_response(streams.serve(stream, heartbeat, floors, opened_at))
    # The server closes every response; a body that never ran (HEAD) cleans up here.
    response.call_on_close(stream.close)
    return response


SSE_DOC = sse.doc(
    "Server-Sent Events; `id` is the event's time (resume with Last-Event-ID), comments "
    "are heartbeats, `event: end` closes it"
)


@blp.route("/containers/<ident>/logs/stream")
class ContainerLogStream(MethodView):
    @blp.arguments(StreamArgs, location="query")
    @blp.doc(**SSE_DOC)
    def get(self, args: dict[str, Any], ident: str) -> Response:
        """Follow a container's output as Server-Sent Events (resumable)."""
        engine().call(lambda c: c.api.inspect_container(ident))  # 404 before the stream
        return event_stream(
            lambda eng, floors: streams.log_sources(eng, ident, args["tail"], floors), 2
        )


@blp.route("/events/stream")
class EventStream(MethodView):
    @blp.arguments(EventArgs, location="query")
    @blp.doc(**SSE_DOC)
    def get(self, args: dict[str, Any]) -> Response:
        """Docker events of the objects PyEdge manages (all=true: every object) as SSE."""
        return event_stream(
            lambda eng, floors: streams.event_sources(
                eng, managed_only=not args["all"], floors=floors
            ),
            1,
        )


@blp.route("/images")
class Images(MethodView):
    @blp.response(200, ImageSchema(many=True))
    def get(self) -> list[dict[str, Any]]:
        """List images, with how many containers use each."""
        return images.list_images(engine())


@blp.route("/images/prune")
class ImagePrune(MethodView):
    @blp.arguments(PruneArgs, location="query")
    @blp.response(200, PruneSchema)
    def post(self, args: dict[str, Any]) -> dict[str, Any]:
        """Remove dangling images (all=true: every image no container uses)."""
        return images.prune(engine(), all=args["all"])


def image_ref(ref: str) -> str:
    """`ref` if it is an image reference or id, else 400 (before asking the engine)."""
    try:
        parse_ref(ref)  # an id is a reference too, by its grammar
    except ValueError as exc:
        abort(HTTPStatus.BAD_REQUEST, message=str(exc))
    return ref


@blp.route("/images/<imageref:ref>", parameters=[IMAGE_REF_PARAMETER])
class ImageResource(MethodView):
    @blp.response(200, ImageDetailSchema)
    def get(self, ref: str) -> dict[str, Any]:
        """Inspect an image by id or reference."""
        return images.inspect(engine(), image_ref(ref))

    @blp.arguments(ForceArgs, location="query")
    @blp.response(204)
    @blp.alt_response(409, description="A container uses it")
    def delete(self, args: dict[str, Any], ref: str) -> None:
        """Remove an image (409 while a container uses it, unless force=true)."""
        ref = image_ref(ref)
        engine().call(lambda c: c.api.remove_image(ref, force=args["force"]), slow=True)


def owned_by_app(labels: dict[str, str] | None, what: str) -> None:
    """Conflict when an app owns the object: it is removed with the app, not on its own."""
    app = (labels or {}).get(containers.APP_LABEL)
    if app:
        raise Conflict(f"{what} belongs to app {app}: remove it with DELETE /apps/{app}")


def _volume(raw: dict[str, Any]) -> dict[str, Any]:
    return {
        "name": raw["Name"],
        "driver": raw.get("Driver"),
        "mountpoint": raw.get("Mountpoint"),
        "created": raw.get("CreatedAt"),
        "labels": raw.get("Labels"),
    }


@blp.route("/volumes")
class Volumes(MethodView):
    @blp.response(200, VolumeSchema(many=True))
    def get(self) -> list[dict[str, Any]]:
        """List volumes."""
        found = engine().call(lambda c: c.api.volumes())
        return [_volume(raw) for raw in found.get("Volumes") or []]

    @blp.arguments(VolumeCreateSchema)
    @blp.response(201, VolumeSchema)
    def post(self, body: dict[str, Any]) -> dict[str, Any]:
        """Create a named volume."""
        labels = {**body["labels"], MANAGED_LABEL: "true"}
        # Creating and removing volumes and networks are slow calls: on a busy device the
        # engine takes seconds, which is not an engine that hangs (503).
        raw = engine().call(
            lambda c: c.api.create_volume(body["name"], driver=body["driver"], labels=labels),
            slow=True,
        )
        return _volume(raw)


@blp.route("/volumes/<name>")
class VolumeResource(MethodView):
    @blp.arguments(ForceArgs, location="query")
    @blp.response(204)
    @blp.alt_response(409, description="A container uses it")
    def delete(self, args: dict[str, Any], name: str) -> None:
        """Remove a volume and its data (409 while a container uses it, or an app owns it)."""
        eng = engine()
        raw = eng.call(lambda c: c.api.inspect_volume(name))
        owned_by_app(raw.get("Labels"), f"volume {name}")
        eng.call(lambda c: c.api.remove_volume(name, force=args["force"]), slow=True)


def _network(raw: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": raw["Id"],
        "name": raw["Name"],
        "driver": raw.get("Driver"),
        "scope": raw.get("Scope"),
        "internal": raw.get("Internal", False),
        "created": raw.get("Created"),
        "labels": raw.get("Labels"),
    }


@blp.route("/networks")
class Networks(MethodView):
    @blp.response(200, NetworkSchema(many=True))
    def get(self) -> list[dict[str, Any]]:
        """List networks."""
        return [_network(raw) for raw in engine().call(lambda c: c.api.networks())]

    @blp.arguments(NetworkCreateSchema)
    @blp.response(201, NetworkSchema)
    def post(self, body: dict[str, Any]) -> dict[str, Any]:
        """Create a network."""
        eng = engine()
        labels = {**body["labels"], MANAGED_LABEL: "true"}
        created = eng.call(
            lambda c: c.api.create_network(
                body["name"],
                driver=body["driver"],
                internal=body["internal"],
                labels=labels,
                check_duplicate=True,
            ),
            slow=True,
        )
        return _network(eng.call(lambda c: c.api.inspect_network(created["Id"])))


@blp.route("/networks/<name>")
class NetworkResource(MethodView):
    @blp.response(204)
    @blp.alt_response(409, description="A container is attached to it")
    def delete(self, name: str) -> None:
        """Remove a network (409 while a container is attached, or an app owns it)."""
        eng = engine()
        raw = eng.call(lambda c: c.api.inspect_network(name))
        owned_by_app(raw.get("Labels"), f"network {name}")
        eng.call(lambda c: c.api.remove_network(name), slow=True)
