"""The gateway's WSGI app: authenticate, allow, check, relay to the engine, audit.

Each request is judged before anything reaches the engine: its caller (a client
certificate, else a PyEdge token), the endpoint (routes.py) and the caller's role, the
protection of PyEdge's own and apps' objects, and the policy on a create's whole body
(create.py). What passes is relayed as the client sent it (path, version and query), and
the engine's answer comes back as it is: a stream chunk by chunk, never buffered.
Refusals are in Docker's error shape, `{"message": ...}`, which Docker tools print.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any
from urllib.parse import parse_qsl, urlencode

import docker
import requests

from container_manager.containers import APP_LABEL, is_true
from container_manager.engine import Engine
from container_manager.errors import ContainerManagerError, NotFound
from container_manager.gateway.certs import IDENTITY_KIND, ClientCertificates
from container_manager.gateway.create import check_create, volume_options_refusal
from container_manager.gateway.routes import Refused, Route, match, unversioned
from container_manager.policy import RESERVED_LABEL_PREFIX, SYSTEM_LABEL, Policy
from pyedge.accounts import AccountError, AccountStore, Identity

logger = logging.getLogger(__name__)

# Where the listener puts a verified client certificate's serial (server.py).
PEER_SERIAL = "pyedge.gateway.peer_serial"
# A create or any other body larger than this is refused (they are a few KiB).
MAX_BODY = 1 << 20
# What the engine gets of the client's headers (never its credentials), by WSGI key.
FORWARDED_HEADERS = {
    "Content-Type": "CONTENT_TYPE",
    "X-Registry-Auth": "HTTP_X_REGISTRY_AUTH",
    "User-Agent": "HTTP_USER_AGENT",
}
HOP_HEADERS = frozenset({
    "connection", "keep-alive", "transfer-encoding", "te", "trailer", "upgrade",
    "proxy-authenticate", "proxy-authorization",
})  # fmt: skip
STREAM_CHUNK = 1 << 16
AUDIT_DETAIL = "Docker API gateway"
DENIED = "denied by PyEdge's security policy"
StartResponse = Callable[..., Any]


class GatewayError(Exception):
    """A refusal, answered in Docker's error shape with `status`."""

    def __init__(self, status: HTTPStatus, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass
class Answer:
    """An answer to send: status, headers, and the body's chunks."""

    status: int
    reason: str
    headers: list[tuple[str, str]]
    body: Iterable[bytes]


class GatewayApp:
    """The Docker Engine API of one container-manager, behind PyEdge's auth and policy."""

    def __init__(
        self,
        engine: Engine,
        policy: Policy,
        accounts: AccountStore | None,
        certificates: ClientCertificates | None,
    ) -> None:
        self.engine = engine
        self.policy = policy
        self.accounts = accounts
        self.certificates = certificates

    def __call__(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        """Answer one request (WSGI)."""
        # A client that asks to take the connection over (attach, exec) reads the answer's
        # body as the container's multiplexed stream, whatever the status.
        stream = "HTTP_UPGRADE" in environ
        try:
            answer = self.handle(environ)
        except GatewayError as exc:
            answer = error_answer(exc.status, exc.message, stream)
        except ContainerManagerError as exc:
            answer = error_answer(HTTPStatus(exc.status), str(exc), stream)
        start_response(f"{answer.status} {answer.reason}", answer.headers)
        return answer.body

    def handle(self, environ: dict[str, Any]) -> Answer:
        """Judge the request, then relay it; audit it when it changes something."""
        method = environ["REQUEST_METHOD"]
        path = environ.get("PATH_INFO") or "/"
        identity = None
        route: Route | None = None
        status: int | None = None
        try:
            identity = self.authenticate(environ)
            try:
                route, args = match(method, unversioned(path))
            except Refused as exc:
                raise GatewayError(HTTPStatus.FORBIDDEN, exc.reason) from None
            if identity.role < route.role:
                raise GatewayError(
                    HTTPStatus.FORBIDDEN,
                    f"needs the {route.role.label} role; {identity.actor} is {identity.role.label}",
                )
            body = read_body(environ)
            query = environ.get("QUERY_STRING", "")
            body, query = self.check(route, args, body, query)
            answer = self.relay(route, method, path, query, environ, body)
            status = answer.status
            return answer
        except GatewayError as exc:
            status = exc.status
            raise
        except ContainerManagerError as exc:
            status = exc.status
            raise
        finally:
            if method not in ("GET", "HEAD") and (route is None or route.changes):
                self.audit(environ, identity, method, path, status)

    # --- who ------------------------------------------------------------------------------

    def authenticate(self, environ: dict[str, Any]) -> Identity:
        """The caller: a verified client certificate, else a token; 401 without either."""
        serial = environ.get(PEER_SERIAL)
        if serial and self.certificates is not None:
            identity = self.certificates.identity(serial)
            if identity is None:
                raise GatewayError(
                    HTTPStatus.UNAUTHORIZED, "this client certificate is revoked or unknown"
                )
            return identity
        header = environ.get("HTTP_AUTHORIZATION", "")
        scheme, _, token = header.partition(" ")
        if scheme.lower() == "bearer" and token.strip() and self.accounts is not None:
            try:
                identity = self.accounts.verify_token(token.strip())
            except AccountError as exc:
                logger.error("gateway: accounts unreadable: %s", exc)
                raise GatewayError(
                    HTTPStatus.SERVICE_UNAVAILABLE, "PyEdge's accounts cannot be read"
                ) from exc
            if identity is not None:
                return identity
            raise GatewayError(HTTPStatus.UNAUTHORIZED, "this PyEdge token is unknown or expired")
        raise GatewayError(
            HTTPStatus.UNAUTHORIZED,
            "authentication required by PyEdge: a client certificate that PyEdge issued, "
            'or a token in the docker config\'s HttpHeaders ("Authorization": "Bearer pye_...")',
        )

    def audit(
        self,
        environ: dict[str, Any],
        identity: Identity | None,
        method: str,
        path: str,
        status: int | None,
    ) -> None:
        """Write the change to the audit log; never fails the request."""
        if self.accounts is None:
            return
        actor, detail = identity.actor if identity else "anonymous", AUDIT_DETAIL
        if identity is not None and identity.kind == IDENTITY_KIND and self.certificates:
            # A certificate acts as its user: the log names the user, and the certificate.
            serial = environ.get(PEER_SERIAL) or ""
            actor = f"user:{identity.name}"
            detail += f", certificate {self.certificates.name_of(serial) or serial}"
        try:
            self.accounts.audit(
                actor,
                method,
                path,
                status,
                environ.get("REMOTE_ADDR"),
                detail,
            )
        except Exception:
            logger.exception("audit entry lost: %s %s", method, path)

    # --- what -----------------------------------------------------------------------------

    def check(
        self, route: Route, args: dict[str, str], body: bytes, query: str
    ) -> tuple[bytes, str]:
        """Refuse what the policy or the protection forbids; the body and query to relay."""
        if route.target is not None:
            self.protect(route, args["ident"])
        if route.check == "create":
            body = self.check_create(body)
        elif route.check in ("volume", "network"):
            check_labels(body, route.check)
        elif route.check == "prune":
            query = protected_prune(query)
        elif route.check == "pull" and dict(parse_qsl(query)).get("fromSrc"):
            raise GatewayError(
                HTTPStatus.FORBIDDEN,
                "docker import is not allowed through PyEdge: images come from a pull",
            )
        return body, query

    def protect(self, route: Route, ident: str) -> None:
        """Refuse a change of a PyEdge system object, or removing or renaming an app's."""
        inspect: dict[str, Callable[[docker.DockerClient], dict[str, Any]]] = {
            "container": lambda c: c.api.inspect_container(ident),
            "volume": lambda c: c.api.inspect_volume(ident),
            "network": lambda c: c.api.inspect_network(ident),
        }
        try:
            attrs = self.engine.call(inspect[route.target or ""])
        except NotFound:
            return  # the engine answers the relayed request with its own 404
        labels = (attrs.get("Config") or {}).get("Labels") or attrs.get("Labels") or {}
        name = str(attrs.get("Name") or ident).lstrip("/")
        if is_true(labels, SYSTEM_LABEL):
            raise GatewayError(
                HTTPStatus.FORBIDDEN,
                f"{name} is a PyEdge system {route.target}: it cannot be {route.action} "
                "through PyEdge",
            )
        app = labels.get(APP_LABEL)
        if app and route.action in ("removed", "renamed"):
            raise GatewayError(
                HTTPStatus.CONFLICT,
                f"{route.target} {name} belongs to PyEdge app {app}: it cannot be "
                f"{route.action} on its own (pyedge app rm {app})",
            )

    def check_create(self, body: bytes) -> bytes:
        """The create body the policy allows, as relayed; 403 listing every violation."""
        spec = json_object(body)
        passed, violations = check_create(spec, self.policy)
        if violations:
            reasons = "; ".join(f"{v['field']}={v['value']}: {v['reason']}" for v in violations)
            raise GatewayError(HTTPStatus.FORBIDDEN, f"{DENIED}: {reasons}")
        return json.dumps(passed).encode()

    # --- relay ----------------------------------------------------------------------------

    def relay(
        self,
        route: Route,
        method: str,
        path: str,
        query: str,
        environ: dict[str, Any],
        body: bytes,
    ) -> Answer:
        """Send the request to the engine; its answer, a stream relayed as it comes."""
        headers = {name: environ[key] for name, key in FORWARDED_HEADERS.items() if key in environ}
        url_path = path + (f"?{query}" if query else "")

        def send(client: docker.DockerClient) -> requests.Response:
            api = client.api
            return api.request(
                method,
                api.base_url + url_path,
                data=body or None,
                headers=headers,
                stream=True,
                allow_redirects=False,
                timeout=api.timeout,
            )

        upstream = self.engine.stream(send) if route.stream else self.engine.call(send, slow=True)
        relayed = [
            (name, value)
            for name, value in upstream.headers.items()
            if name.lower() not in HOP_HEADERS
        ]
        if method == "HEAD" or upstream.headers.get("Content-Length") is not None:
            content = b"" if method == "HEAD" else upstream.content
            upstream.close()
            return Answer(upstream.status_code, upstream.reason or "", relayed, [content])
        # A stream: sent on as each chunk arrives (the server chunks it again).
        return Answer(upstream.status_code, upstream.reason or "", relayed, chunks(upstream))


def chunks(upstream: requests.Response) -> Iterator[bytes]:
    """The engine's chunks as they arrive; the engine's connection closed when done."""
    try:
        # Nothing yet: the server sends the status and headers now. A client may wait for
        # them before its next request (`docker run` opens its wait, then starts).
        yield b""
        yield from upstream.raw.stream(STREAM_CHUNK, decode_content=False)
    except (requests.RequestException, OSError) as exc:
        # urllib3's errors on a dropped engine: the client sees its stream end.
        logger.info("gateway: engine stream ended: %s", exc)
    except Exception as exc:  # urllib3.exceptions.ProtocolError is not an OSError
        logger.info("gateway: engine stream ended: %s", exc)
    finally:
        upstream.close()


def read_body(environ: dict[str, Any]) -> bytes:
    """The request's body (at most MAX_BODY); 413 beyond it."""
    stream = environ["wsgi.input"]
    length = environ.get("CONTENT_LENGTH")
    if length:
        try:
            size = int(length)
        except ValueError:
            raise GatewayError(HTTPStatus.BAD_REQUEST, "bad Content-Length") from None
        if size > MAX_BODY:
            raise GatewayError(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, "the body is too large")
        return bytes(stream.read(size))
    if "chunked" in environ.get("HTTP_TRANSFER_ENCODING", "").lower():
        data = stream.read(MAX_BODY + 1)
        if len(data) > MAX_BODY:
            raise GatewayError(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, "the body is too large")
        return bytes(data)
    return b""


def json_object(body: bytes) -> dict[str, Any]:
    """A request body as a JSON object (empty: {}); 400 for anything else."""
    try:
        spec = json.loads(body or b"{}")
    except ValueError as exc:
        raise GatewayError(HTTPStatus.BAD_REQUEST, f"the body is not JSON: {exc}") from None
    if not isinstance(spec, dict):
        raise GatewayError(HTTPStatus.BAD_REQUEST, "the body is not a JSON object")
    return spec


def check_labels(body: bytes, kind: str) -> None:
    """Refuse a volume or network create with reserved labels, a volume's with host-path
    options or a plugin driver."""
    spec = json_object(body)
    reserved = [key for key in spec.get("Labels") or {} if key.startswith(RESERVED_LABEL_PREFIX)]
    if reserved:
        raise GatewayError(
            HTTPStatus.FORBIDDEN,
            f"labels starting with {RESERVED_LABEL_PREFIX} are PyEdge's own: "
            + ", ".join(reserved),
        )
    if kind == "volume":
        reason = volume_options_refusal(spec.get("Driver"), spec.get("DriverOpts"))
        if reason:
            raise GatewayError(HTTPStatus.FORBIDDEN, f"{DENIED}: {reason}")


def protected_prune(query: str) -> str:
    """A prune's query with apps' objects excluded (`label!=pyedge.app`)."""
    pairs = parse_qsl(query, keep_blank_values=True)
    filters: dict[str, Any] = {}
    for key, value in pairs:
        if key == "filters" and value:
            try:
                filters = json.loads(value)
            except ValueError:
                raise GatewayError(HTTPStatus.BAD_REQUEST, "filters is not JSON") from None
    if not isinstance(filters, dict):
        raise GatewayError(HTTPStatus.BAD_REQUEST, "filters is not a JSON object")
    if "label!" in filters:
        # The engine ANDs label! values: one of the client's own would let apps' through.
        raise GatewayError(
            HTTPStatus.FORBIDDEN,
            "label! filters are not allowed in a prune through PyEdge (it keeps apps' "
            "objects out of every prune with its own)",
        )
    # The engine reads either form, not a mix: {"k": ["v"]} or the older {"k": {"v": true}}.
    old_form = any(isinstance(value, dict) for value in filters.values())
    filters["label!"] = {APP_LABEL: True} if old_form else [APP_LABEL]
    others = [(key, value) for key, value in pairs if key != "filters"]
    return urlencode([*others, ("filters", json.dumps(filters))])


def error_answer(status: HTTPStatus, message: str, stream: bool = False) -> Answer:
    """An answer in the engine's error shape; for a stream, the engine's error frame."""
    if stream:
        # The multiplexed stream's frame for the daemon's own errors (stream 3, systemerr),
        # which the docker CLI prints as "error from daemon in stream: ...".
        text = message.encode()
        body = bytes([3, 0, 0, 0]) + len(text).to_bytes(4, "big") + text
        content_type = "application/vnd.docker.raw-stream"
    else:
        body = json.dumps({"message": message}).encode()
        content_type = "application/json"
    headers = [("Content-Type", content_type), ("Content-Length", str(len(body)))]
    return Answer(status.value, status.phrase, headers, [body])
