"""The reverse proxy to remote services: /api/<slug>/... and /api/nodes/<node>/<slug>/....

A service serving on its own (`pyedge serve`) is reached through the edge-server, which
holds the caller's credentials: the hub needs `viewer` for any proxied request, strips the
client's own credentials and sends the caller signed with its key instead
(edge_server.network.identity), and the service enforces its own roles on that caller. Bodies are
streamed both ways, never buffered, so that uploads stay bounded and events (SSE) arrive
as they are sent.

What comes back is the service's, not the hub's: it is sandboxed (CSP) and never sniffed,
so that a page of a service cannot script the hub's origin, and an off-site Location is
dropped. A request that another proxy forwarded is refused (508): announcing the hub's
own URL must not make a loop, and dot segments are refused (404) before urllib3 could
resolve them into another path of the service.
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Iterator
from http import HTTPStatus
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, NoReturn
from urllib.parse import quote, unquote, urlsplit

import urllib3
from flask import Blueprint, Flask, Response, current_app, g, redirect, request
from flask_smorest import abort
from requests.utils import DEFAULT_CA_BUNDLE_PATH, requote_uri
from urllib3.exceptions import ConnectTimeoutError, NewConnectionError, ReadTimeoutError
from werkzeug.exceptions import HTTPException
from werkzeug.wrappers import Response as BaseResponse

from edge_server.network.identity import hub_key, sign_caller
from edge_server.network.remote import EXTENSION as REMOTE_EXTENSION
from edge_server.network.remote import AmbiguousService, RemoteRegistry, RemoteService
from edge_server.network.remote_http import tls_options
from pyedge.accounts import Identity
from pyedge.auth import current_auth
from pyedge.host import EXTENSION as HOST_EXTENSION
from pyedge.identity import CALLER_HEADER, SIGNATURE_HEADER
from pyedge.metrics import current_metrics
from pyedge.security import READ_METHODS, Role, requires

if TYPE_CHECKING:  # cryptography is loaded with the hub's key (hub_key), not before
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

logger = logging.getLogger(__name__)

EXTENSION = "pyedge.proxy"
METHODS = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]
CHUNK = 64 * 1024
CONNECT_TIMEOUT_S = 3.0
# Headers that describe one connection, not the message (RFC 9110 7.6.1): never forwarded.
HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "proxy-connection",
        "te",
        "trailer",
        "trailers",
        "transfer-encoding",
        "upgrade",
    }
)
# The client's credentials are for the hub alone (the hub vouches for the caller instead);
# the length and framing are the proxy's own; Expect is answered by the hub's server.
REQUEST_DROP = HOP_BY_HOP | {
    "authorization",
    "cookie",
    "x-csrf-token",
    "host",
    "content-length",
    "expect",
    "x-forwarded-for",
    "x-forwarded-proto",
    "x-forwarded-host",
}
# A remote service's cookie would be set for the hub's origin: its sessions stay its own.
# Its CORS and framing policies would open the hub's origin (the hub sets its own), and
# the hub's server adds its own Server and Date (they came out twice).
RESPONSE_DROP = HOP_BY_HOP | {
    "set-cookie",
    "content-security-policy",
    "content-security-policy-report-only",
    "x-content-type-options",
    "x-frame-options",
    "server",
    "date",
    # Refresh could send a browser elsewhere from the hub's origin; Link could preload.
    "refresh",
    "link",
}
RESPONSE_DROP_PREFIXES = ("access-control-",)
# On every proxied answer: whatever a service sends (HTML, SVG, ...) runs, if at all, in a
# sandbox of its own origin, loads nothing, and is never framed nor read as another type.
RESPONSE_SET = {
    "Content-Security-Policy": "sandbox; default-src 'none'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
}
# What browsers ignore in a URL, or read as a slash, before they resolve it.
URL_IGNORED = re.compile(r"[\t\n\r]")
C0_AND_SPACE = "".join(map(chr, range(0x21)))
# Why a request was not forwarded, by the status the proxy answered it with.
OUTCOMES = {
    HTTPStatus.SERVICE_UNAVAILABLE: "offline",
    HTTPStatus.BAD_GATEWAY: "unreachable",
    HTTPStatus.GATEWAY_TIMEOUT: "timeout",
    HTTPStatus.REQUEST_ENTITY_TOO_LARGE: "too_large",
}
PROXY_ENDPOINTS = frozenset({"proxy.by_slug", "proxy.by_node", "proxy.by_node_root"})

bp = Blueprint("proxy", __name__)


class LoopDetected(HTTPException):
    """508: the request came from a proxy already (werkzeug has no exception for 508)."""

    code = HTTPStatus.LOOP_DETECTED.value
    description = "the request was forwarded by a proxy already"


class BodyTooLarge(Exception):
    """The client's body grew past EDGE_PROXY_MAX_BODY while it was being forwarded."""


class StreamedBody:
    """The client's body, read in chunks as the upstream request sends it, with a cap."""

    def __init__(self, stream: IO[bytes], limit: int) -> None:
        self.stream = stream
        self.limit = limit
        self.sent = 0

    def __iter__(self) -> Iterator[bytes]:
        while True:
            chunk = self.stream.read(CHUNK)
            if not chunk:
                return
            self.sent += len(chunk)
            if self.sent > self.limit:
                raise BodyTooLarge(f"request body over {self.limit} bytes")
            yield chunk


class SizedBody(StreamedBody):
    """A body of known length: sent with its Content-Length, unchunked."""

    def __init__(self, stream: IO[bytes], limit: int, length: int) -> None:
        super().__init__(stream, limit)
        self.length = length

    def __len__(self) -> int:
        return self.length


class UpstreamBody:
    """The remote service's body, passed on chunk by chunk as it arrives, still encoded.

    close() (the server calls it when the client goes away, or at the end) closes the
    upstream response, so that the service sees its client leave too.
    """

    def __init__(self, response: urllib3.BaseHTTPResponse, label: str) -> None:
        self.response = response
        self.label = label

    def __iter__(self) -> Iterator[bytes]:
        raw = self.response
        try:
            while True:
                # read1: what has arrived, up to CHUNK, without waiting for a full CHUNK.
                chunk = raw.read1(CHUNK, decode_content=False)
                if not chunk:
                    return
                yield chunk
        except (urllib3.exceptions.HTTPError, OSError) as exc:
            # The status is sent: all that is left is to end the stream early.
            logger.warning("%s broke off: %s", self.label, exc)
        finally:
            self.close()

    def close(self) -> None:
        """Close the upstream response (idempotent)."""
        close(self.response)


def close(response: urllib3.BaseHTTPResponse) -> None:
    """Close `response`: its connection goes back to the pool only if the body was read whole
    (urllib3 then released it already); one cut off mid-body is closed with it."""
    response.close()
    response.release_conn()


class Proxy:
    """The forwarding of one app: its hub key and its pool of upstream connections.

    urllib3 itself, not a requests.Session: the proxy needs none of what a session adds
    (cookies, environment proxies and .netrc, redirects, retries: all of which it must
    turn off), and that machinery cost more per request than the forwarding itself.
    """

    def __init__(self) -> None:
        self.key: Ed25519PrivateKey | None = None
        self.pools: urllib3.PoolManager | None = None

    def init_app(self, app: Flask) -> None:
        """Load (or make) the hub key and route the proxied paths of `app`."""
        self.key = hub_key(Path(app.config["EDGE_DATA_DIR"]), app.config.get("EDGE_HUB_PUBLIC_KEY"))
        # One pooled connection per request thread; never retried (POSTs are not idempotent)
        # nor redirected; no environment proxies, no cookie jar, no default headers
        # (Accept-Encoding is the client's to choose). HTTPS is checked against the CAs
        # requests used (certifi's).
        threads = int(app.config.get("EDGE_HTTP_THREADS", 16))
        self.pools = urllib3.PoolManager(
            num_pools=8,
            maxsize=threads,
            retries=False,
            cert_reqs="CERT_REQUIRED",
            ca_certs=DEFAULT_CA_BUNDLE_PATH,
        )
        app.register_blueprint(bp)
        # First of all hooks: before Auth's, which would answer the loop 401 otherwise.
        app.before_request_funcs.setdefault(None, []).insert(0, refuse_forwarded)
        app.extensions[EXTENSION] = self

    def close(self) -> None:
        """Close the pooled connections."""
        if self.pools is not None:
            self.pools.clear()

    # --- routing -------------------------------------------------------------------------

    def by_slug(self, slug: str) -> RemoteService:
        """The remote service `/api/<slug>/...` means; aborts with why there is none."""
        node = current_app.extensions[HOST_EXTENSION].node
        if slug in current_app.extensions[HOST_EXTENSION].runtimes:
            # Served in this process: its own routes did not match this path.
            not_routed()
        try:
            service = registry().find(slug, prefer_node=node)
        except AmbiguousService as exc:
            rest = request.path.removeprefix(f"/api/{slug}")
            example = f"/api/nodes/{exc.nodes[0]}/{slug}{rest}"
            abort(
                HTTPStatus.CONFLICT,
                message=f"{slug} runs on several nodes ({', '.join(exc.nodes)}): name one, "
                f"as in {example}",
                errors={"nodes": exc.nodes},
            )
            raise AssertionError("abort returned") from exc
        if service is None:
            not_routed(f"no service {slug} here or on any node")
        return service

    def by_node(self, node: str, slug: str, rest: str) -> RemoteService | BaseResponse:
        """The remote service `/api/nodes/<node>/<slug>/...` means (or a redirect here)."""
        service = registry().get(node, slug)
        if service is not None:
            return service
        host = current_app.extensions[HOST_EXTENSION]
        if node == host.node and slug in host.runtimes:
            # This node's own in-process service: its routes are the unqualified ones.
            target = quote(f"/api/{slug}/{rest}" if rest else f"/api/{slug}", safe=SAFE_URL)
            if request.query_string:
                target += "?" + request.query_string.decode("latin-1")
            return redirect(target, HTTPStatus.TEMPORARY_REDIRECT)
        not_routed(f"no service {slug} on node {node}")

    # --- forwarding ----------------------------------------------------------------------

    def forward(self, service: RemoteService, path: str, qualified: bool) -> Response:
        """Send the current request to `service` at `path` (/api/<slug>/...); pass on its answer.

        Counted by outcome (pyedge_proxy_requests_total): answered, whatever the status the
        service gave, or why it was not.
        """
        metrics = current_metrics(current_app)
        try:
            response = self._forward(service, path, qualified)
        except HTTPException as exc:
            outcome = OUTCOMES.get(exc.code or 0, "refused")
            metrics.proxied(service.node, service.slug, outcome)
            raise
        metrics.proxied(service.node, service.slug, "answered")
        return response

    def _forward(self, service: RemoteService, path: str, qualified: bool) -> Response:
        if not service.online:
            interval = float(current_app.config.get("EDGE_REMOTE_HEALTH_INTERVAL", 10.0))
            fail(
                HTTPStatus.SERVICE_UNAVAILABLE,
                f"{service.slug} on node {service.node} is offline: "
                f"{service.reason or 'no reason given'}",
                headers={"Retry-After": str(max(1, math.ceil(interval)))},
            )
        identity: Identity | None = g.get("identity")
        assert identity is not None and self.key is not None, "Auth lets no stranger through"
        assert self.pools is not None, "init_app first"
        method = request.method
        url = service.url.rstrip("/") + quote(path, safe=SAFE_URL)
        if request.query_string:
            # Quoted as requests quoted it: what is not allowed in a URL is escaped.
            url += "?" + requote_uri(request.query_string.decode("latin-1"))
        headers = self.request_headers()
        body = self.request_body()
        if isinstance(body, SizedBody):
            headers["Content-Length"] = str(body.length)
        elif body is None and method not in ("GET", "HEAD"):
            headers["Content-Length"] = "0"  # as requests sent it: an empty body, said so
        # (A StreamedBody has no length: urllib3 sends it chunked.)
        headers.update(
            sign_caller(self.key, identity, method, path, audience=f"{service.node}/{service.slug}")
        )
        label = f"{method} {url}"
        try:
            # A service with a pinned certificate gets pools of its own (the pool key
            # includes the TLS settings); the others are checked against the CAs.
            pool = self.pools.connection_from_url(
                url, pool_kwargs=tls_options(service.tls_fingerprint)
            )
            upstream = pool.urlopen(
                method,
                urllib3.util.parse_url(url).request_uri,
                body=body,
                headers=headers,
                preload_content=False,
                decode_content=False,
                redirect=False,
                retries=False,
                timeout=urllib3.Timeout(
                    connect=CONNECT_TIMEOUT_S,
                    read=float(current_app.config["EDGE_PROXY_TIMEOUT"]),
                ),
            )
        except BodyTooLarge as exc:
            fail(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, str(exc))
        except (ConnectTimeoutError, ReadTimeoutError) as exc:
            if isinstance(exc, NewConnectionError):  # refused: a ConnectTimeoutError too
                self.unreachable(service, label, exc)
            logger.warning("%s: timed out: %s", label, exc)
            fail(
                HTTPStatus.GATEWAY_TIMEOUT,
                f"{service.slug} on node {service.node} did not answer in time",
            )
        except (urllib3.exceptions.HTTPError, OSError) as exc:
            self.unreachable(service, label, exc)
        if method not in READ_METHODS:
            # The service audits it too, but only the hub knows the client's address.
            current_auth().record(
                identity.actor,
                method,
                request.path,
                upstream.status,
                f"proxied to {service.slug} on node {service.node}",
            )
        return self.response(upstream, service, qualified, label)

    @staticmethod
    def unreachable(service: RemoteService, label: str, exc: Exception) -> NoReturn:
        """502: the service could not be reached, or broke off before its answer."""
        logger.warning("%s: %s", label, exc)
        fail(
            HTTPStatus.BAD_GATEWAY,
            f"{service.slug} on node {service.node} cannot be reached at {service.url}",
        )

    def request_headers(self) -> dict[str, str]:
        """The client's headers minus its credentials and hop-by-hop ones, plus X-Forwarded-*."""
        named = connection_tokens(request.headers.get("Connection", ""))
        headers = {
            name: value
            for name, value in request.headers.items()
            if not dropped(name, REQUEST_DROP, named) and not name.lower().startswith("x-pyedge-")
        }
        prior = request.headers.get("X-Forwarded-For", "")
        client = request.remote_addr or ""
        headers["X-Forwarded-For"] = f"{prior}, {client}" if prior else client
        headers["X-Forwarded-Proto"] = request.scheme
        headers["X-Forwarded-Host"] = request.host
        return headers

    def request_body(self) -> StreamedBody | None:
        """The client's body as a stream to send upstream; 413 when its length is over the cap."""
        limit = int(current_app.config["EDGE_PROXY_MAX_BODY"])
        length = request.content_length
        if length is not None and length > limit:
            fail(
                HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
                f"request body of {length} bytes: the proxy forwards at most {limit}",
            )
        if length:
            return SizedBody(request.stream, limit, length)
        if "chunked" in request.headers.get("Transfer-Encoding", "").lower():
            return StreamedBody(request.stream, limit)
        return None

    def response(
        self,
        upstream: urllib3.BaseHTTPResponse,
        service: RemoteService,
        qualified: bool,
        label: str,
    ) -> Response:
        """The client's response: the service's status and headers, its body streamed."""
        raw_headers = upstream.headers
        named = connection_tokens(raw_headers.get("Connection", ""))
        headers = []
        for name, value in raw_headers.items():
            lower = name.lower()
            if dropped(name, RESPONSE_DROP, named) or lower.startswith(RESPONSE_DROP_PREFIXES):
                continue
            if lower == "location":
                moved = relocated(value, service, qualified)
                if moved is None:
                    logger.warning("%s: off-site Location %r dropped", label, value)
                    continue
                value = moved
            headers.append((name, value))
        headers.extend(RESPONSE_SET.items())
        status = upstream.status
        if request.method == "HEAD" or status in (204, 304) or 100 <= status < 200:
            # No body to pass on (the server would never iterate, and so never close it).
            close(upstream)
            body: Any = []
        elif small(raw_headers.get("Content-Length")):
            # A short answer of known length (most API answers) is read whole and sent in
            # one piece: chunk by chunk cost the hub more than the answer's bytes.
            try:
                body = [upstream.read(decode_content=False)]
            except (urllib3.exceptions.HTTPError, OSError) as exc:
                self.unreachable(service, label, exc)
            finally:
                close(upstream)
        else:
            body = UpstreamBody(upstream, label)
        response = Response(body, status=status, direct_passthrough=True)
        # Set after construction: Response() would add its own Content-Type.
        response.headers.clear()
        for name, value in headers:
            response.headers.add(name, value)
        return response


# Characters kept as they are when a path is quoted for the upstream URL (RFC 3986 pchar).
SAFE_URL = "/:@!$&'()*+,;=~"


def small(length: str | None) -> bool:
    """True for a Content-Length of at most one chunk."""
    return length is not None and length.isdigit() and int(length) <= CHUNK


def connection_tokens(value: str) -> frozenset[str]:
    """The header names a Connection header lists (hop-by-hop as well)."""
    return frozenset(token.strip().lower() for token in value.split(",") if token.strip())


def dropped(name: str, drop: frozenset[str], named: frozenset[str]) -> bool:
    """True for a header that must not cross the proxy."""
    lower = name.lower()
    return lower in drop or lower in named


def relocated(location: str, service: RemoteService, qualified: bool) -> str | None:
    """A service's Location as the client reaches it, through this proxy; None when it
    leads off-site (an absolute URL elsewhere: the hub's origin is no open redirect)."""
    base = service.url.rstrip("/")
    if location.startswith(base + "/"):
        location = location[len(base) :]
    # As a browser reads it: leading controls and spaces stripped, tabs and newlines
    # ignored, backslashes as slashes ("/\\evil.example" is "//evil.example").
    seen = URL_IGNORED.sub("", location).lstrip(C0_AND_SPACE)
    seen = seen.replace("\\", "/")
    parts = urlsplit(seen)
    if parts.scheme or parts.netloc or seen.startswith("//"):
        return None
    prefix = f"/api/{service.slug}"
    if qualified and (location == prefix or location.startswith(prefix + "/")):
        location = f"/api/nodes/{service.node}/{service.slug}" + location[len(prefix) :]
    return location


def registry() -> RemoteRegistry:
    """The app's remote services (empty when the app keeps none)."""
    found: RemoteRegistry | None = current_app.extensions.get(REMOTE_EXTENSION)
    return found if found is not None else RemoteRegistry()


def current_proxy() -> Proxy:
    """The current app's Proxy."""
    proxy: Proxy = current_app.extensions[EXTENSION]
    return proxy


def fail(status: HTTPStatus, message: str, **kwargs: Any) -> NoReturn:
    """Answer with the API's error envelope (flask-smorest's abort always raises)."""
    abort(status, message=message, **kwargs)
    raise AssertionError("abort returned")


def refuse_forwarded() -> None:
    """508 for a proxied path whose request another proxy sent: a hub or node announced as a
    service (its own URL, or two that point at each other) would forward it on and on.

    A proxy strips the client's credentials and sends X-PyEdge-Caller instead: a request
    with that header and no credentials of its own came from one. (A client that sends the
    header with its own token or session is served, the header stripped as any X-PyEdge-*.)
    """
    if request.endpoint not in PROXY_ENDPOINTS:
        return
    if CALLER_HEADER not in request.headers and SIGNATURE_HEADER not in request.headers:
        return
    if "Authorization" in request.headers:
        return
    if current_app.config["SESSION_COOKIE_NAME"] in request.cookies:
        return
    error = LoopDetected()
    # Read by flask-smorest's handler, as its abort() leaves it: the API's envelope.
    error.data = {  # type: ignore[attr-defined]
        "message": f"{request.path} came from a proxy ({CALLER_HEADER}): a proxied "
        "service must not be a proxy itself"
    }
    raise error


def check_segments(rest: str) -> None:
    """404 for a path with `.` or `..` segments, percent-encoded or not, which urllib3 (or
    the service) would resolve to another path than the one the client named."""
    decoded, previous = rest, None
    while decoded != previous:  # %252e is %2e is .
        previous, decoded = decoded, unquote(decoded)
    segments = decoded.replace("\\", "/").split("/")
    if any(segment in (".", "..") for segment in segments):
        fail(HTTPStatus.NOT_FOUND, "'.' and '..' path segments are not forwarded")


def not_routed(message: str | None = None) -> NoReturn:
    """404, or 405 when another route takes this path with other methods, as Flask would."""
    adapter = current_app.create_url_adapter(request)
    allowed = set()
    if adapter is not None:
        for method in METHODS:
            try:
                rule, _args = adapter.match(request.path, method=method, return_rule=True)
            except HTTPException:
                continue
            if rule.endpoint not in PROXY_ENDPOINTS:
                allowed.add(method)
    if allowed:
        abort(HTTPStatus.METHOD_NOT_ALLOWED, headers={"Allow": ", ".join(sorted(allowed))})
    if message is None:
        abort(HTTPStatus.NOT_FOUND)  # the plain 404, as for any unknown path
        raise AssertionError("abort returned")
    fail(HTTPStatus.NOT_FOUND, message)


# --- routes: viewer to pass the hub, whatever the method; the service judges the rest ------


@bp.route("/api/<slug>/<path:rest>", methods=METHODS)
@requires(Role.VIEWER)
def by_slug(slug: str, rest: str) -> Response:
    """A remote service by its slug, on whichever node serves it."""
    check_segments(rest)
    proxy = current_proxy()
    return proxy.forward(proxy.by_slug(slug), request.path, qualified=False)


@bp.route("/api/nodes/<node>/<slug>/<path:rest>", methods=METHODS)
@requires(Role.VIEWER)
def by_node(node: str, slug: str, rest: str) -> BaseResponse:
    """A remote service on a named node."""
    check_segments(rest)
    proxy = current_proxy()
    found = proxy.by_node(node, slug, rest)
    if isinstance(found, BaseResponse):
        return found
    return proxy.forward(found, f"/api/{slug}/{rest}", qualified=True)


@bp.route("/api/nodes/<node>/<slug>", methods=METHODS)
@requires(Role.VIEWER)
def by_node_root(node: str, slug: str) -> BaseResponse:
    """The root of a remote service on a named node."""
    proxy = current_proxy()
    found = proxy.by_node(node, slug, "")
    if isinstance(found, BaseResponse):
        return found
    return proxy.forward(found, f"/api/{slug}", qualified=True)
