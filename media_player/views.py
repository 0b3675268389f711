"""media-player REST resources: the media library and the player."""

from __future__ import annotations

from http import HTTPStatus
from typing import Any, NoReturn

from flask import request
from flask.views import MethodView
from flask_smorest import abort
from werkzeug.exceptions import RequestEntityTooLarge

from media_player.library import MediaError
from media_player.schemas import MediaSchema, PlayerPatch, PlayerSchema, UploadFile, UploadForm
from media_player.service import control, library_of, player_state, service
from pyedge.security import Role, requires

blp = service.blueprint
# What a multipart form adds to the file itself: its boundaries, headers and `name`.
FORM_OVERHEAD = 64 * 1024


def upload_limit() -> int:
    """The largest upload in bytes (max_upload_mb)."""
    return int(service.runtime().settings["max_upload_mb"] * 1024 * 1024)


@blp.before_request
def limit_uploads() -> None:
    """Refuse an upload over the limit as it arrives, before werkzeug spools it (a 413)."""
    if request.method == "POST" and request.path == f"{blp.url_prefix}/media":
        request.max_content_length = upload_limit() + FORM_OVERHEAD


@blp.errorhandler(RequestEntityTooLarge)
def too_large(exc: RequestEntityTooLarge) -> tuple[dict[str, Any], int]:
    """werkzeug's 413 in the API's error envelope, saying what the limit is."""
    status = HTTPStatus.REQUEST_ENTITY_TOO_LARGE
    message = f"upload larger than {upload_limit()} bytes (max_upload_mb)"
    return {"code": status.value, "status": status.phrase, "message": message}, status.value


def refuse(exc: MediaError, named: bool = False) -> NoReturn:
    """Answer a refused media name or file with the API's error envelope.

    `named`: the name is in the path, where one that cannot be a media file is not found.
    """
    status = 404 if named and exc.status in (415, 422) else exc.status
    abort(status, message=str(exc))
    raise AssertionError("abort returned")


@blp.route("/media")
class MediaList(MethodView):
    @blp.response(200, MediaSchema(many=True))
    def get(self) -> list[dict[str, Any]]:
        """The media files: name, size, type, duration; a broken file says why."""
        return library_of(service.runtime()).listing()

    @requires(Role.OPERATOR)
    @blp.arguments(UploadForm, location="form")
    @blp.arguments(UploadFile, location="files")
    @blp.response(201, MediaSchema)
    @blp.alt_response(409, description="A file of that name exists (send overwrite=true)")
    @blp.alt_response(413, description="Larger than max_upload_mb")
    @blp.alt_response(415, description="Not an allowed extension, or not audio/video to mpv")
    def post(self, form: dict[str, Any], files: dict[str, Any]) -> dict[str, Any]:
        """Upload a media file (multipart `file`); it is kept only if mpv can play it."""
        runtime = service.runtime()
        upload = files["file"]
        name = form.get("name") or upload.filename or ""
        try:
            return library_of(runtime).store(name, upload.stream, upload_limit(), form["overwrite"])
        except MediaError as exc:
            refuse(exc)


@blp.route("/media/<string:name>")
class MediaFile(MethodView):
    @blp.response(200, MediaSchema)
    @blp.alt_response(404, description="No such media file")
    def get(self, name: str) -> dict[str, Any]:
        """One media file."""
        try:
            return library_of(service.runtime()).describe(name)
        except MediaError as exc:
            refuse(exc, named=True)

    @requires(Role.OPERATOR)
    @blp.response(204)
    @blp.alt_response(404, description="No such media file")
    @blp.alt_response(409, description="It is playing")
    def delete(self, name: str) -> None:
        """Delete a media file (not while it plays)."""
        runtime = service.runtime()
        try:
            library = library_of(runtime)
            library.path(name)
            if player_state(runtime)["state"] != "idle" and name in runtime.extras.get(
                "playlist", []
            ):
                abort(HTTPStatus.CONFLICT, message=f"{name!r} is playing: stop it first")
            library.delete(name)
        except MediaError as exc:
            refuse(exc, named=True)


@blp.route("/player")
class PlayerResource(MethodView):
    @blp.response(200, PlayerSchema)
    def get(self) -> dict[str, Any]:
        """The player: idle, or what plays, where, at what volume."""
        return player_state(service.runtime())

    @requires(Role.OPERATOR)
    @blp.arguments(PlayerPatch)
    @blp.response(200, PlayerSchema)
    @blp.alt_response(409, description="Nothing is playing")
    def patch(self, change: dict[str, Any]) -> dict[str, Any]:
        """Change the playing mpv: volume, paused, position (seek)."""
        try:
            return control(service.runtime(), change)
        except LookupError as exc:
            abort(HTTPStatus.CONFLICT, message=str(exc))
            raise AssertionError("abort returned") from exc
