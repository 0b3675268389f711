"""The `pull` Task: pull an image, reporting per-layer progress and a total percent; abortable.

The pull is one streamed engine call with no read timeout, on a connection of its own. To
abort it, that connection's socket is shut down from the aborting thread, whether the engine
has answered yet or not; this wakes the read blocked on it, and the engine, seeing its
client gone, cancels the pull. A pull succeeds only once the stream reached the engine's
closing status line.
"""

from __future__ import annotations

import contextlib
import http.client
import re
import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import docker.auth
import docker.errors
import marshmallow as ma
import requests
import urllib3.exceptions

from container_manager.engine import Engine, engine_of
from container_manager.errors import ContainerManagerError, translated
from pyedge import OperationFailed, ServiceRuntime, Session, fields

# The reference grammar of github.com/distribution/reference (IPv6 hosts left out).
_DOMAIN_PART = r"(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])"
_DOMAIN = rf"{_DOMAIN_PART}(?:\.{_DOMAIN_PART})*(?::[0-9]+)?"
_PATH_PART = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
# ASCII only, as the engine's Go \w is (Python's \w takes any letter).
_TAG = r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}"
_DIGEST = r"[A-Za-z][A-Za-z0-9]*(?:[-_+.][A-Za-z][A-Za-z0-9]*)*:[0-9a-fA-F]{32,}"
REF_RE = re.compile(
    rf"^(?P<name>(?:{_DOMAIN}/)?{_PATH_PART}(?:/{_PATH_PART})*)"
    rf"(?::(?P<tag>{_TAG}))?(?:@(?P<digest>{_DIGEST}))?$"
)
MAX_NAME_CHARS = 255
# The same grammar as a JSON Schema pattern, the name's length bound included: what
# follows a name of at most 255 characters is an optional tag and digest.
REF_PATTERN = (
    rf"^(?=.{{1,{MAX_NAME_CHARS}}}(?::{_TAG})?(?:@{_DIGEST})?$)"
    rf"(?:{_DOMAIN}/)?{_PATH_PART}(?:/{_PATH_PART})*(?::{_TAG})?(?:@{_DIGEST})?$"
)
PLATFORM_RE = re.compile(r"^[a-z0-9]+(?:/[a-z0-9_]+(?:/[a-z0-9]+)?)?$")
DEFAULT_TAG = "latest"

# Layer statuses after which the layer's download is complete.
_DOWNLOADED = frozenset({"Verifying Checksum", "Download complete", "Extracting", "Pull complete"})
# The engine's last line of a successful pull starts with this.
_FINAL_PREFIX = "Status: "
_DIGEST_PREFIX = "Digest: "

# What a pull that stopped short of the engine's closing status fails with.
_ENDED_EARLY = "the engine's pull stream ended early"

# Where abort_pull finds a running pull's connection: runtime.extras[PULL_STREAMS][id(session)].
PULL_STREAMS = "pull_streams"
# Guards the PULL_STREAMS dicts: a socket is cut only while its pull holds it open.
_streams_lock = threading.Lock()


class Reference(NamedTuple):
    """An image reference split the way the engine's pull endpoint takes it."""

    repository: str
    tag: str | None
    digest: str | None

    @property
    def version(self) -> str:
        """What the engine's `tag` parameter gets: the digest if any, else the tag."""
        return self.digest or self.tag or DEFAULT_TAG

    @property
    def local(self) -> str:
        """The reference under which the pulled image is found locally."""
        if self.digest:
            return f"{self.repository}@{self.digest}"
        return f"{self.repository}:{self.tag or DEFAULT_TAG}"


def parse_ref(ref: str) -> Reference:
    """Split `[host[:port]/]path[:tag][@digest]`; raises ValueError on a malformed ref."""
    match = REF_RE.fullmatch(ref)
    if match is None:
        raise ValueError(
            f"{ref!r} is not an image reference: [host[:port]/]name[:tag][@algorithm:hex], "
            "the name in lowercase"
        )
    name = match["name"]
    if len(name) > MAX_NAME_CHARS:
        raise ValueError(f"the repository name is longer than {MAX_NAME_CHARS} characters")
    return Reference(name, match["tag"], match["digest"])


def _validate_ref(ref: str) -> None:
    try:
        parse_ref(ref)
    except ValueError as exc:
        raise ma.ValidationError(str(exc)) from exc


class PullParams(ma.Schema):
    """Parameters of the pull Task."""

    ref = ma.fields.String(
        required=True,
        validate=_validate_ref,
        metadata={
            "description": "image reference: [host[:port]/]name[:tag][@sha256:...]; "
            "the tag defaults to latest; with a digest, the digest is pulled",
            "pattern": REF_PATTERN,
            "example": "127.0.0.1:5000/pyedge/app:1.2",
        },
    )
    platform = ma.fields.String(
        load_default=None,
        validate=fields.FullMatch(PLATFORM_RE, error="not a platform: os[/arch[/variant]]"),
        metadata={"description": "os[/arch[/variant]], e.g. linux/arm64 (default: the engine's)"},
    )


@dataclass
class Progress:
    """The engine's JSON progress lines folded into per-layer state and a total percent."""

    # Layer id -> {status, current, total}; current and total are the layer's download bytes.
    layers: dict[str, dict[str, Any]] = field(default_factory=dict)
    status: str = "starting"
    digest: str | None = None
    # The engine's closing "Status: ..." line arrived.
    finished: bool = False

    def feed(self, line: dict[str, Any]) -> str | None:
        """Take one line; returns the line's text when it is about the whole pull."""
        status = str(line.get("status") or "")
        layer_id = line.get("id")
        # "Pulling from <repo>" carries the tag as its id: it is not a layer.
        if not layer_id or status.startswith("Pulling from"):
            self.status = status
            if status.startswith(_DIGEST_PREFIX):
                self.digest = status.removeprefix(_DIGEST_PREFIX).strip()
            elif status.startswith(_FINAL_PREFIX):
                self.finished = True
            return status
        layer = self.layers.setdefault(layer_id, {"status": "", "current": None, "total": None})
        layer["status"] = status
        detail = line.get("progressDetail") or {}
        if status == "Downloading":
            layer["current"] = detail.get("current")
            layer["total"] = detail.get("total") or layer["total"]
        elif status in _DOWNLOADED and layer["total"] is not None:
            layer["current"] = layer["total"]
        return None

    @property
    def percent(self) -> float:
        """Downloaded bytes over the total of every layer whose size is known; 100 when done."""
        if self.finished:
            return 100.0
        sized = [layer for layer in self.layers.values() if layer["total"]]
        total: int = sum(layer["total"] for layer in sized)
        if not total:
            return 0.0
        current: int = sum(min(layer["current"] or 0, layer["total"]) for layer in sized)
        return round(100.0 * current / total, 1)

    def report(self) -> dict[str, Any]:
        """The session data: copies, since the publisher reads them from another thread."""
        return {
            "layers": {key: dict(layer) for key, layer in self.layers.items()},
            "percent": self.percent,
            "status": self.status,
        }


class _PullStream:
    """The pull's own connection to the engine, outside the stream client's pool.

    Being the pull's alone, its socket can be shut down from the aborting thread at any
    point: while the engine has not answered yet (a registry that accepts and never
    answers keeps it silent for as long as it likes) as well as mid-stream. A pooled
    connection could not be cut before the response came, nor safely after it went back.
    """

    def __init__(self) -> None:
        self.conn: http.client.HTTPConnection | None = None
        self.sock: socket.socket | None = None
        self.response: requests.Response | None = None

    def open(
        self,
        api: docker.APIClient,
        ref: Reference,
        platform: str | None,
        stop: threading.Event,
        connect_timeout: float | None,
    ) -> Iterator[dict[str, Any]] | None:
        """POST /images/create as APIClient.pull(stream=True) does; None once aborted."""
        registry, _ = docker.auth.resolve_repository_name(ref.repository)
        headers = {}
        auth_header = docker.auth.get_config_header(api, registry)
        if auth_header:
            headers["X-Registry-Auth"] = auth_header
        params = {"fromImage": ref.repository, "tag": ref.version}
        if platform:
            params["platform"] = platform
        request = api.prepare_request(
            requests.Request("POST", api._url("/images/create"), params=params, headers=headers)
        )
        # The connection the client's transport (unix socket, TCP, TLS, SSH) would make.
        adapter = api.get_adapter(request.url)
        pool = adapter.get_connection_with_tls_context(request, api.verify, cert=api.cert)
        adapter.cert_verify(pool, request.url, api.verify, api.cert)
        self.conn = conn = pool._new_conn()
        conn.timeout = connect_timeout
        try:
            conn.connect()
            # No read timeout from here on: a registry may be slow, abort cuts instead.
            conn.timeout = None
            self.sock = conn.sock
            # Checked after self.sock is set, as abort sets the flag before it cuts: an
            # abort either finds the socket or is seen here.
            if stop.is_set():
                return None
            conn.request(
                request.method or "POST",
                request.path_url,
                body=request.body,
                headers=request.headers,
                preload_content=False,
                decode_content=False,
            )
            self.response = adapter.build_response(request, conn.getresponse())
        except (OSError, http.client.HTTPException) as exc:
            if stop.is_set():
                return None  # abort's cut, not a failure of the engine
            # As requests reports a failed exchange, so that it translates the same way.
            raise requests.ConnectionError(exc, request=request) from exc
        api._raise_for_status(self.response)
        lines: Iterator[dict[str, Any]] = api._stream_helper(self.response, decode=True)
        return lines

    def cut(self) -> None:
        """Shut the socket down: a read blocked on it returns, which close() alone does not
        guarantee from another thread; the engine then sees its client gone."""
        if self.sock is not None:
            with contextlib.suppress(OSError):  # already shut down or disconnected
                self.sock.shutdown(socket.SHUT_RDWR)

    def close(self) -> None:
        """Close the response and the connection: it goes back to no pool."""
        if self.response is not None:
            self.response.close()
        if self.conn is not None:
            self.conn.close()


def _translated_lines(lines: Iterator[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    """The stream's lines, its errors translated as the engine's calls are."""
    with translated():
        yield from lines


def _streams(runtime: ServiceRuntime) -> dict[int, _PullStream]:
    streams: dict[int, _PullStream] = runtime.extras.setdefault(PULL_STREAMS, {})
    return streams


# Errors of a broken stream, as the engine's socket and docker-py's decoder raise them.
_STREAM_ERRORS = (
    ContainerManagerError,
    urllib3.exceptions.HTTPError,
    http.client.HTTPException,
    OSError,
    docker.errors.StreamParseError,
)


def _follow(
    session: Session,
    engine: Engine,
    stream: _PullStream,
    ref: Reference,
    progress: Progress,
) -> str | None:
    """Open the pull's stream and fold its lines into `progress`; the failure, if any."""
    platform: str | None = session.params["platform"]
    try:
        lines = engine.stream(
            lambda c: stream.open(
                c.api, ref, platform, session.stop_requested, engine.timeouts["call"]
            )
        )
    except ContainerManagerError as exc:
        return str(exc)
    if lines is None:
        return None  # aborted
    try:
        for line in _translated_lines(lines):
            if session.stop_requested.is_set():
                return None  # the cut did not take (a transport without a socket)
            if "error" in line:
                return str((line.get("errorDetail") or {}).get("message") or line["error"])
            overall = progress.feed(line)
            if overall:
                session.log(overall)
            session.update(**progress.report())
    except _STREAM_ERRORS as exc:
        return f"{_ENDED_EARLY}: {exc}"
    if not progress.finished:
        # The stream ended cleanly, but before the engine said how the pull went: whatever
        # the tag names locally may be an older image, not the one asked for.
        return (
            f"{_ENDED_EARLY}: it closed after {progress.status!r} at {progress.percent:g}%, "
            "without the engine's closing status"
        )
    return None


def pull(session: Session, params: dict[str, Any]) -> str:
    """Pull an image, reporting per-layer progress and a total percent; abort stops it."""
    ref_text: str = params["ref"]
    ref = parse_ref(ref_text)
    engine = engine_of(session.context)
    progress = Progress()
    session.update(ref=ref_text, platform=params["platform"], **progress.report())
    if session.stop_requested.is_set():
        return f"aborted pulling {ref_text} before it started"

    stream = _PullStream()
    streams = _streams(session.context)
    # Registered before the request is sent, so that abort can cut it at any point.
    with _streams_lock:
        streams[id(session)] = stream
    try:
        failure = _follow(session, engine, stream, ref, progress)
    finally:
        # Forgotten before closing: a socket is cut only while its pull holds it open.
        with _streams_lock:
            streams.pop(id(session), None)
        stream.close()

    if session.stop_requested.is_set():
        if stream.response is None:
            return f"aborted pulling {ref_text} before the engine answered"
        return f"aborted pulling {ref_text} at {progress.percent:g}%"
    if failure is not None:
        raise OperationFailed(f"pull {ref_text}: {failure}")
    try:
        image = engine.call(lambda c: c.api.inspect_image(ref.local))
    except ContainerManagerError as exc:
        raise OperationFailed(f"pull {ref_text}: pulled, but inspecting it failed: {exc}") from exc
    image_id: str = image["Id"]
    session.update(
        image_id=image_id,
        digest=progress.digest or ref.digest,
        **progress.report(),
    )
    return f"pulled {ref_text} ({image_id.removeprefix('sha256:')[:12]})"


def abort_pull(session: Session) -> None:
    """Cut the pull's connection: it has no read timeout, so a blocked read must be woken."""
    with _streams_lock:
        stream = _streams(session.context).get(id(session))
        if stream is not None:
            stream.cut()
