"""media-player schemas: the play parameters, the player's state, media files, uploads."""

from __future__ import annotations

from typing import Any

import marshmallow as ma
from flask import has_request_context
from flask_smorest import abort

from media_player.library import NAME_PATTERN, MediaError, check_name

# A media file name as the API document states it: one file name with an allowed extension.
NAME_RULES = [ma.validate.Length(min=1, max=200), ma.validate.Regexp(NAME_PATTERN)]


def _check_media(name: str) -> None:
    """A media name that is valid and, in a request, an existing file (else 404 upfront)."""
    try:
        check_name(name)
    except MediaError as exc:
        raise ma.ValidationError(str(exc)) from exc
    if not has_request_context():
        return  # over MQTT: the run checks it, and fails with the reason
    # Deferred: schemas are imported by service.py, which declares the service.
    from media_player.service import library_of, service

    try:
        library_of(service.runtime()).path(name)
    except KeyError:  # the service is not started in this app: the run checks it
        return
    except MediaError as exc:
        # A well-formed name that is not a file here: 404, as for GET /media/<name>.
        abort(exc.status, message=str(exc))


def _check_library_not_empty() -> None:
    """404 upfront when "play everything" finds nothing to play."""
    from media_player.service import library_of, service

    try:
        if not library_of(service.runtime()).names():
            abort(404, message="the media directory holds no media to play")
    except KeyError:
        return


class PlayParams(ma.Schema):
    """Parameters of the play Process: a file, a playlist, or (neither) the whole library."""

    file = ma.fields.String(
        validate=NAME_RULES, metadata={"description": "a media file name, played first"}
    )
    playlist = ma.fields.List(
        ma.fields.String(validate=NAME_RULES),
        validate=ma.validate.Length(min=1, max=500),
        metadata={
            "description": "media file names played in order, after file "
            "(with neither file nor playlist: every file of the library)"
        },
    )
    loop = ma.fields.Boolean(load_default=False, metadata={"description": "repeat forever"})
    volume = ma.fields.Integer(
        validate=ma.validate.Range(min=0, max=100),
        metadata={"description": "0 to 100 (default: the volume setting)"},
    )
    start = ma.fields.Float(
        load_default=0.0,
        validate=ma.validate.Range(min=0, max=86400 * 7),
        metadata={"description": "start position in seconds"},
    )

    @ma.validates_schema
    def known_media(self, data: dict[str, Any], **_: Any) -> None:
        """Every name a media file: 422 when malformed, 404 (in a request) when missing."""
        names = [*([data["file"]] if "file" in data else []), *data.get("playlist", [])]
        for name in names:
            _check_media(name)
        if not names and has_request_context():
            _check_library_not_empty()


class PlayerSchema(ma.Schema):
    """The player's state, as published retained on pyedge/<node>/media-player/state."""

    state = ma.fields.String(required=True, metadata={"description": "idle, playing or paused"})
    file = ma.fields.String(required=True, allow_none=True)
    position = ma.fields.Float(required=True, allow_none=True, metadata={"description": "s"})
    duration = ma.fields.Float(required=True, allow_none=True, metadata={"description": "s"})
    volume = ma.fields.Float(required=True, allow_none=True)
    loop = ma.fields.Boolean(required=True)
    playlist = ma.fields.List(ma.fields.String(), required=True)
    playlist_index = ma.fields.Integer(required=True, allow_none=True)


class PlayerPatch(ma.Schema):
    """A change to the playing mpv: volume, pause/resume, seek."""

    volume = ma.fields.Integer(validate=ma.validate.Range(min=0, max=100))
    paused = ma.fields.Boolean()
    position = ma.fields.Float(
        validate=ma.validate.Range(min=0, max=86400 * 7),
        metadata={"description": "seek to this many seconds"},
    )


class MediaSchema(ma.Schema):
    """One media file."""

    name = ma.fields.String(required=True)
    size = ma.fields.Integer(required=True, metadata={"description": "bytes"})
    type = ma.fields.String(required=True, metadata={"description": "audio or video"})
    duration = ma.fields.Float(required=True, allow_none=True, metadata={"description": "s"})
    broken = ma.fields.Boolean(required=True)
    error = ma.fields.String(required=True, allow_none=True)


class UploadForm(ma.Schema):
    """The form fields of an upload besides the file."""

    overwrite = ma.fields.Boolean(load_default=False)
    name = ma.fields.String(
        validate=NAME_RULES,
        metadata={"description": "store under this name (default: the file's own)"},
    )


class UploadFile(ma.Schema):
    """The uploaded file."""

    file = ma.fields.Raw(required=True, metadata={"type": "string", "format": "binary"})
