"""`pyedge image|container|app`: the container-manager's commands, through its HTTP API.

Installed under the entry-point group `pyedge.commands`; the root group keeps the
edge-server's address in `ctx.obj["url"]`. Nothing here touches the engine directly.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from collections.abc import Iterable, Iterator, Sequence
from http import HTTPStatus
from pathlib import Path
from typing import IO, Any, NamedTuple
from urllib.parse import quote

import click
import requests
import yaml

API = "/api/container-manager"
DEFAULT_URL = "http://127.0.0.1:8000"
CONNECT_TIMEOUT_S = 5.0
# Removing an image or stopping a container may take a while; a pull is polled instead.
READ_TIMEOUT_S = 120.0
# The log stream sends heartbeats; this long without a byte means the connection is dead.
STREAM_READ_TIMEOUT_S = 60.0
RECONNECT_BACKOFF_S = (0.5, 1.0, 2.0, 5.0)
# Answers after which a dropped log stream is tried again: the server is busy or restarting.
RETRY_STATUSES = frozenset({502, 503, 504})
PULL_POLL_S = 1
EXIT_INTERRUPTED = 130
_CLIENT = "container-manager.client"


class Failed(click.ClickException):
    """A command's failure: `error: <message>` and detail lines on stderr, exit code 1."""

    def __init__(
        self, message: str, details: Sequence[str] = (), status: int | None = None
    ) -> None:
        super().__init__(message)
        self.details = list(details)
        self.status = status  # the HTTP answer's, when there was one

    def show(self, file: IO[Any] | None = None) -> None:
        """Print the message and its details (click's default says 'Error:' only)."""
        click.echo(f"error: {self.message}", file=file, err=file is None)
        for line in self.details:
            click.echo(f"  {line}", file=file, err=file is None)


class Unreachable(Failed):
    """The edge-server did not answer: refused, unresolvable, or too slow."""


def _reason(exc: BaseException) -> str:
    """The innermost OS error's text: requests nests it in urllib3's errors."""
    pending: list[Any] = [exc]
    seen: set[int] = set()
    while pending:
        item = pending.pop()
        if not isinstance(item, BaseException) or id(item) in seen:
            continue
        seen.add(id(item))
        if isinstance(item, OSError) and item.strerror:
            return item.strerror
        pending.extend(
            [*item.args, item.__cause__, item.__context__, getattr(item, "reason", None)]
        )
    return str(exc)


def violation_line(violation: dict[str, Any]) -> str:
    """One policy violation: field, the value asked for, and why it is denied."""
    return f"{violation.get('field')} = {violation.get('value')}: {violation.get('reason')}"


def _error_lines(errors: Any, path: str = "") -> Iterator[str]:
    """The `errors` of a validation answer, one 'where: what' line per problem."""
    if isinstance(errors, dict):
        # marshmallow files a mapping's errors under "key" (the name) and "value" (its spec).
        entry = set(errors) <= {"key", "value"}
        for key, value in errors.items():
            if entry:
                where = f"{path} (name)" if key == "key" else path
            elif not path:
                # The request location (json, query) is the API's business, not the user's.
                where = "" if key in ("json", "query", "path") else str(key)
            else:
                where = f"{path}.{key}"
            yield from _error_lines(value, where)
    elif isinstance(errors, list) and all(isinstance(item, str) for item in errors):
        yield f"{path}: {' '.join(errors)}" if path else " ".join(errors)
    else:
        yield f"{path}: {errors}" if path else str(errors)


def api_failure(response: requests.Response) -> Failed:
    """The API's error envelope {code, status, message, errors} as a Failed."""
    try:
        body = response.json()
    except ValueError:
        body = None
    status = response.status_code
    if not isinstance(body, dict):
        return Failed(f"HTTP {status} {response.reason} from {response.url}", status=status)
    message = (
        body.get("message") or f"{body.get('code', response.status_code)} {body.get('status')}"
    )
    errors = dict(body.get("errors") or {})
    details = [violation_line(v) for v in errors.pop("violations", None) or []]
    details += [conflict_line(c) for c in errors.pop("conflicts", None) or []]
    details += list(_error_lines(errors)) if errors else []
    return Failed(str(message), details, status)


class Api:
    """The container-manager's API at one edge-server, over one requests Session."""

    def __init__(self, url: str, token: str | None = None) -> None:
        self.url = url.rstrip("/")
        self.session = requests.Session()
        if token:
            self.session.headers["Authorization"] = f"Bearer {token}"

    def close(self) -> None:
        """Close the session's connections."""
        self.session.close()

    def send(
        self,
        method: str,
        path: str,
        *,
        stream: bool = False,
        read_timeout: float = READ_TIMEOUT_S,
        **kwargs: Any,
    ) -> requests.Response:
        """A request to the API; Failed on an error answer or when the server is not reached."""
        if "params" in kwargs:
            # The API's booleans are 'true'/'false'; None means: leave the parameter out.
            kwargs["params"] = {
                key: str(value).lower() if isinstance(value, bool) else value
                for key, value in kwargs["params"].items()
                if value is not None
            }
        try:
            response = self.session.request(
                method,
                f"{self.url}{API}{path}",
                stream=stream,
                timeout=(CONNECT_TIMEOUT_S, read_timeout),
                **kwargs,
            )
        except requests.ConnectionError as exc:
            raise Unreachable(
                f"cannot reach the edge-server at {self.url}: {_reason(exc)}"
            ) from exc
        except requests.Timeout as exc:
            raise Unreachable(
                f"the edge-server at {self.url} did not answer within {read_timeout:g} s"
            ) from exc
        if response.status_code >= 400:
            failure = api_failure(response)
            response.close()
            raise failure
        return response

    def call(self, method: str, path: str, **kwargs: Any) -> Any:
        """A request answered with JSON (None for 204 No Content)."""
        response = self.send(method, path, **kwargs)
        if response.status_code == HTTPStatus.NO_CONTENT or not response.content:
            return None
        return response.json()


def client(ctx: click.Context) -> Api:
    """The Api of this invocation, made once and closed when the command ends."""
    top = ctx.find_root()
    obj = top.ensure_object(dict)
    if _CLIENT not in obj:
        url = obj.get("url") or os.environ.get("PYEDGE_URL") or DEFAULT_URL
        token = obj.get("token") or os.environ.get("PYEDGE_TOKEN")
        obj[_CLIENT] = Api(url, token)
        top.call_on_close(obj[_CLIENT].close)
    api: Api = obj[_CLIENT]
    return api


def table(headers: Sequence[str], rows: Iterable[Sequence[Any]]) -> None:
    """Print rows in aligned columns under a header."""
    text = [[str(cell) for cell in headers]]
    text += [["" if cell is None else str(cell) for cell in row] for row in rows]
    widths = [max(len(row[i]) for row in text) for i in range(len(headers))]
    for row in text:
        click.echo(
            "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        )


def short_id(ident: str | None) -> str:
    """An engine id as docker prints it: 12 hex digits without the algorithm."""
    return (ident or "").rpartition(":")[2][:12]


def when(iso: str | None) -> str:
    """An ISO 8601 time to the second, readable in a table."""
    return (iso or "")[:19].replace("T", " ")


def path_of(name: str) -> str:
    """A name or id as one URL path segment."""
    return quote(name, safe="")


# ---- images ---------------------------------------------------------------------------


@click.group()
def image() -> None:
    """Images on the device: list, pull, remove."""


@image.command("ls")
@click.pass_context
def image_ls(ctx: click.Context) -> None:
    """List images, with how many containers use each."""
    found = client(ctx).call("GET", "/images")
    table(
        ["TAGS", "ID", "SIZE (MB)", "CREATED", "CONTAINERS"],
        [
            [
                ",".join(item.get("tags") or []) or "<none>",
                short_id(item["id"]),
                f"{(item.get('size') or 0) / 1e6:.1f}",
                when(item.get("created")),
                item.get("containers", 0),
            ]
            for item in found
        ],
    )


@image.command("rm")
@click.argument("name")
@click.option("--force", is_flag=True, help="even while a container uses it")
@click.pass_context
def image_rm(ctx: click.Context, name: str, force: bool) -> None:
    """Remove an image by reference or id."""
    # A reference holds '/' and ':' and the route takes the rest of the path as it is.
    client(ctx).call("DELETE", f"/images/{quote(name, safe='/:@')}", params={"force": force})
    click.echo(f"removed image {name}")


def _pull_percent(session: dict[str, Any]) -> int:
    """The pull's progress, 0-100, from its session's data."""
    try:
        return max(0, min(100, int((session.get("data") or {}).get("percent") or 0)))
    except (TypeError, ValueError):
        return 0


def _last_message(session: dict[str, Any]) -> str:
    """The last line the operation logged (its result once done)."""
    messages = session.get("messages") or []
    return str(messages[-1]["text"]) if messages else ""


@image.command("pull")
@click.argument("ref")
@click.option("--platform", help="e.g. linux/arm64 (default: the engine's own)")
@click.pass_context
def image_pull(ctx: click.Context, ref: str, platform: str | None) -> None:
    """Pull an image from its registry, with a progress bar."""
    api = client(ctx)
    body = {"ref": ref, **({"platform": platform} if platform else {})}
    session = api.call("POST", "/ops/pull/start", json=body)
    try:
        with click.progressbar(length=100, label=f"pulling {ref}") as bar:
            shown = 0
            while session["state"] != "done":
                session = api.call("POST", "/ops/pull/wait", params={"timeout": PULL_POLL_S})
                percent = _pull_percent(session)
                if percent > shown:
                    bar.update(percent - shown)
                    shown = percent
            if session["success"]:
                bar.update(100 - shown)
    except KeyboardInterrupt:
        with contextlib.suppress(Failed):  # it ended on its own meanwhile
            api.call("POST", "/ops/pull/abort")
        click.echo(f"pull of {ref} aborted", err=True)
        ctx.exit(EXIT_INTERRUPTED)
    message = _last_message(session) or f"pull of {ref} ended"
    click.echo(message, err=not session["success"])
    if not session["success"]:
        ctx.exit(1)


# ---- containers -----------------------------------------------------------------------


@click.group()
def container() -> None:
    """Containers on the device: list, start, stop, logs."""


@container.command("ls")
@click.option("-a", "--all", "show_all", is_flag=True, help="stopped ones too")
@click.pass_context
def container_ls(ctx: click.Context, show_all: bool) -> None:
    """List containers (running ones unless --all)."""
    found = client(ctx).call("GET", "/containers", params={"all": show_all})
    table(
        ["NAME", "IMAGE", "STATE", "STATUS", "ID"],
        [
            [item["name"], item["image"], item["state"], item["status"], short_id(item["id"])]
            for item in found
        ],
    )


@container.command("start")
@click.argument("name")
@click.pass_context
def container_start(ctx: click.Context, name: str) -> None:
    """Start a container."""
    found = client(ctx).call("POST", f"/containers/{path_of(name)}/start")
    click.echo(f"{found['name']}: {found.get('state')}")


@container.command("stop")
@click.argument("name")
@click.option(
    "-t",
    "--timeout",
    type=click.IntRange(0, 300),
    default=10,
    show_default=True,
    help="seconds to wait before killing it",
)
@click.pass_context
def container_stop(ctx: click.Context, name: str, timeout: int) -> None:
    """Stop a container: SIGTERM, then SIGKILL after the timeout."""
    found = client(ctx).call(
        "POST",
        f"/containers/{path_of(name)}/stop",
        params={"timeout": timeout},
        read_timeout=READ_TIMEOUT_S + timeout,
    )
    click.echo(f"{found['name']}: {found.get('state')}")


def echo_line(line: dict[str, Any], timestamps: bool) -> None:
    """One log line, stderr's to stderr, with its time when asked for."""
    text = str(line.get("text", ""))
    if timestamps and line.get("ts"):
        text = f"{line['ts']} {text}"
    click.echo(text, err=line.get("stream") == "stderr")


def split_lines(chunks: Iterable[bytes]) -> Iterator[bytes]:
    """Lines (without their CR LF or LF) from a stream's chunks, each as soon as it is whole."""
    pending = b""
    for chunk in chunks:
        *lines, pending = (pending + chunk).split(b"\n")
        for line in lines:
            yield line.removesuffix(b"\r")


class Event(NamedTuple):
    """One server-sent event."""

    id: str | None
    event: str
    data: str


def sse_events(lines: Iterable[bytes]) -> Iterator[Event]:
    """Server-sent events from a stream's lines; ':' lines are heartbeats."""
    event_id: str | None = None
    event = "message"
    data: list[str] = []
    for raw in lines:
        line = raw.decode("utf-8", "replace")
        if not line:
            if data:
                yield Event(event_id, event, "\n".join(data))
            event_id, event, data = None, "message", []
            continue
        if line.startswith(":"):
            continue
        name, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if name == "id":
            event_id = value
        elif name == "event":
            event = value
        elif name == "data":
            data.append(value)


def event_data(data: str) -> dict[str, Any]:
    """An event's JSON data; text that is not JSON is kept as the line's text."""
    try:
        found = json.loads(data)
    except ValueError:
        found = None
    return found if isinstance(found, dict) else {"text": data}


def follow_logs(api: Api, name: str, tail: int, timestamps: bool) -> None:
    """Print a container's log stream until Ctrl-C, or until it ends with the container.

    A dropped connection is resumed with Last-Event-ID, so no line is shown twice or lost.
    """
    path = f"/containers/{path_of(name)}/logs/stream"
    last_id: str | None = None
    opened = False
    retries = 0
    while True:
        # Resuming asks for what came after the last event, not for the history again.
        resume = {"Last-Event-ID": last_id} if last_id else {}
        try:
            with api.send(
                "GET",
                path,
                params={} if last_id else {"tail": tail},
                headers={"Accept": "text/event-stream", **resume},
                stream=True,
                read_timeout=STREAM_READ_TIMEOUT_S,
            ) as response:
                opened = True
                # chunk_size=None: each chunk as it arrives, not once 512 bytes have.
                lines = split_lines(response.iter_content(chunk_size=None))
                for event in sse_events(lines):
                    retries = 0
                    last_id = event.id or last_id
                    if event.event == "end":
                        return  # the container's output ended: it stopped
                    data = event_data(event.data)
                    if event.event == "error":
                        click.echo(f"error: {data.get('error', event.data)}", err=True)
                    else:
                        echo_line(data, timestamps)
            # Closed without its `end` event: the connection was cut, so resume.
            lost = "the stream closed"
        except (requests.RequestException, Failed) as exc:
            refused = isinstance(exc, Failed) and exc.status not in (None, *RETRY_STATUSES)
            if not opened or refused:
                raise  # the first connection's failure, or a refusal (404), is the answer
            lost = exc.message if isinstance(exc, Failed) else _reason(exc)
        if retries == 0:
            click.echo(f"(connection lost: {lost}; reconnecting)", err=True)
        time.sleep(RECONNECT_BACKOFF_S[min(retries, len(RECONNECT_BACKOFF_S) - 1)])
        retries += 1


@container.command("logs")
@click.argument("name")
@click.option(
    "--tail",
    type=click.IntRange(0, 10_000),
    default=100,
    show_default=True,
    help="last lines of history",
)
@click.option("-f", "--follow", is_flag=True, help="keep printing new lines until Ctrl-C")
@click.option("--timestamps", is_flag=True, help="prefix each line with its time")
@click.pass_context
def container_logs(
    ctx: click.Context, name: str, tail: int, follow: bool, timestamps: bool
) -> None:
    """Print a container's stdout and stderr."""
    api = client(ctx)
    if follow:
        with contextlib.suppress(KeyboardInterrupt):  # Ctrl-C is how following ends
            follow_logs(api, name, tail, timestamps)
        return
    if tail == 0:
        return
    found = api.call(
        "GET", f"/containers/{path_of(name)}/logs", params={"tail": tail, "timestamps": timestamps}
    )
    for line in found.get("lines") or []:
        echo_line(line, timestamps)


# ---- apps -----------------------------------------------------------------------------


def load_app_file(path: Path) -> dict[str, Any]:
    """A compose-like app file (YAML, or JSON by its suffix); Failed naming file and line."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise Failed(f"cannot read {path}: {exc}") from exc
    try:
        doc = json.loads(text) if path.suffix.lower() == ".json" else yaml.safe_load(text)
    except json.JSONDecodeError as exc:
        raise Failed(f"{path}: line {exc.lineno}, column {exc.colno}: {exc.msg}") from exc
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        raise Failed(f"{path}: {where}{exc.problem or exc.context}") from exc
    except yaml.YAMLError as exc:
        raise Failed(f"{path}: {exc}") from exc
    if not isinstance(doc, dict) or not isinstance(doc.get("services"), dict):
        raise Failed(f"{path}: expected a mapping with a 'services:' mapping of containers")
    return doc


def app_request(path: Path, name: str | None) -> tuple[str, dict[str, Any]]:
    """The app's name (--name, the file's name:, its stem) and the request body."""
    doc = load_app_file(path)
    ignored = sorted(set(doc) - {"services", "name", "version"})
    if ignored:
        click.echo(f"note: {path}: ignoring {', '.join(ignored)}", err=True)
    return str(name or doc.get("name") or path.stem), {"services": doc["services"]}


def step_subject(step: dict[str, Any]) -> str:
    """What a plan step acts on: a service, or the app's network or a volume."""
    if step.get("service"):
        return str(step["service"])
    for kind in ("network", "volume", "container"):
        if step.get(kind):
            return f"{kind} {step[kind]}"
    return ""


def conflict_line(conflict: Any) -> str:
    """A container in an app's way, and whether --force may replace it."""
    if not isinstance(conflict, dict):
        return str(conflict)
    parts = [str(conflict["service"])] if conflict.get("service") else []
    if conflict.get("container"):
        parts.append(f"container {conflict['container']}")
    where = ": ".join(parts)
    reason = conflict.get("reason") or conflict.get("message") or ""
    # --force removes a container in the way, but adopts a network or volume as it is.
    verb = "replaces" if conflict.get("container") else "adopts"
    hint = f" (apply --force {verb} it)" if conflict.get("forceable") else ""
    return f"{where}: {reason}{hint}" if where else f"{reason}{hint}"


APP_FILE = click.Path(exists=True, dir_okay=False, path_type=Path)


@click.group()
def app() -> None:
    """Apps: sets of containers declared in a compose-like file."""


@app.command("apply")
@click.argument("file", type=APP_FILE)
@click.option("--name", help="the app's name (else the file's name:, else its stem)")
@click.option(
    "--force", is_flag=True, help="replace containers in the way that PyEdge did not create"
)
@click.pass_context
def app_apply(ctx: click.Context, file: Path, name: str | None, force: bool) -> None:
    """Create or update an app from FILE and converge to it."""
    app_name, body = app_request(file, name)
    view = client(ctx).call("PUT", f"/apps/{path_of(app_name)}", params={"force": force}, json=body)
    click.echo(f"app {view.get('name', app_name)}: {view.get('status')}")
    services = view.get("services") or {}
    table(
        ["SERVICE", "STATE", "STATUS", "ERROR"],
        [
            [svc, info.get("state") or "", info.get("status") or "", info.get("last_error") or ""]
            for svc, info in services.items()
        ],
    )


@app.command("plan")
@click.argument("file", type=APP_FILE)
@click.option("--name", help="the app's name (else the file's name:, else its stem)")
@click.option("--force", is_flag=True, help="plan as apply --force would do")
@click.pass_context
def app_plan(ctx: click.Context, file: Path, name: str | None, force: bool) -> None:
    """Show what applying FILE would do; exit 1 when the security policy denies it."""
    app_name, body = app_request(file, name)
    plan = client(ctx).call(
        "POST", f"/apps/{path_of(app_name)}/plan", params={"force": force}, json=body
    )
    steps = plan.get("steps") or []
    click.echo(f"plan for app {plan.get('app', app_name)}:")
    if steps:
        table(
            ["  ACTION", "SERVICE", "REASON"],
            [[f"  {s.get('action')}", step_subject(s), s.get("reason") or ""] for s in steps],
        )
    else:
        click.echo("  nothing to do")
    violations = plan.get("violations") or []
    if violations:
        click.echo("denied by the security policy:")
        for violation in violations:
            click.echo(f"  {violation_line(violation)}")
    conflicts = plan.get("conflicts") or []
    if conflicts:
        click.echo("conflicts:")
        for conflict in conflicts:
            click.echo(f"  {conflict_line(conflict)}")
    if violations:
        ctx.exit(1)


@app.command("ls")
@click.pass_context
def app_ls(ctx: click.Context) -> None:
    """List the apps."""
    found = client(ctx).call("GET", "/apps")
    table(
        ["NAME", "STATUS", "SERVICES"],
        [
            [item["name"], item.get("status") or "", len(item.get("services") or {})]
            for item in found
        ],
    )


@app.command("rm")
@click.argument("name")
@click.option("--volumes", is_flag=True, help="remove the app's named volumes and their data too")
@click.pass_context
def app_rm(ctx: click.Context, name: str, volumes: bool) -> None:
    """Remove an app and its containers."""
    client(ctx).call("DELETE", f"/apps/{path_of(name)}", params={"volumes": volumes})
    click.echo(f"removed app {name}")


# ---- the Docker API gateway's client certificates --------------------------------------

# The names the docker CLI reads in DOCKER_CERT_PATH (and Portainer's TLS form asks for).
CERT_FILES = {"ca": "ca.pem", "cert": "cert.pem", "key": "key.pem"}


@click.group()
def gateway() -> None:
    """The Docker API gateway's client certificates (for the docker CLI and Portainer)."""


@gateway.command("issue")
@click.argument("name")
@click.option("--role", type=click.Choice(["viewer", "operator", "admin"]), default="viewer")
@click.option("--user", help="the PyEdge user it acts as (default: you)")
@click.option("--days", type=int, default=365, show_default=True, help="valid for")
@click.option(
    "--out",
    type=click.Path(file_okay=False, path_type=Path),
    required=True,
    help="directory for ca.pem, cert.pem and key.pem (DOCKER_CERT_PATH)",
)
@click.pass_context
def gateway_issue(
    ctx: click.Context, name: str, role: str, user: str | None, days: int, out: Path
) -> None:
    """Issue a client certificate and write it where DOCKER_CERT_PATH can point."""
    issued = client(ctx).call(
        "POST",
        "/gateway/certificates",
        json={"name": name, "role": role, "days": days, **({"user": user} if user else {})},
    )
    out.mkdir(parents=True, exist_ok=True, mode=0o700)
    for field, file_name in CERT_FILES.items():
        if issued.get(field) is None:
            continue  # no ca.pem: the gateway serves plain HTTP
        path = out / file_name
        # The key is owner-only from its first byte.
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as file:
            file.write(issued[field])
    click.echo(
        f"certificate {issued['name']} for {issued['user']} ({issued['role']}), serial "
        f"{issued['serial']}, valid until {when(issued['not_after'])}, in {out}"
    )


@gateway.command("revoke")
@click.argument("name")
@click.pass_context
def gateway_revoke(ctx: click.Context, name: str) -> None:
    """Revoke a client certificate (refused at once)."""
    revoked = client(ctx).call("DELETE", f"/gateway/certificates/{path_of(name)}")
    click.echo(f"certificate {revoked['name']} revoked at {when(revoked['revoked_at'])}")


@gateway.command("ls")
@click.pass_context
def gateway_ls(ctx: click.Context) -> None:
    """List the client certificates issued."""
    found = client(ctx).call("GET", "/gateway/certificates")
    table(
        ["NAME", "USER", "ROLE", "VALID UNTIL", "REVOKED", "SERIAL"],
        [
            [
                c["name"],
                c["user"],
                c["role"],
                when(c["not_after"]),
                when(c["revoked_at"]),
                c["serial"],
            ]
            for c in found
        ],
    )


commands = [image, container, app, gateway]
