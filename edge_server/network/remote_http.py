"""The one way the edge-server fetches from a remote service: health, OpenAPI, metrics.

A remote service's URL comes from its announcement, so what answers there is not trusted:
every fetch has a total wall-clock deadline (connect, TLS, headers and body together, not
per read: a server dripping a byte at a time is cut off), a cap on the body's bytes, no
redirects, no environment proxies or .netrc, no retries, and no content decoding (a
compressed body is refused rather than inflated). Everything that goes wrong raises
FetchError, whose message says why and names the URL.
"""

from __future__ import annotations

import contextlib
import json
import socket
import threading
from collections.abc import Collection, Mapping
from typing import Any
from urllib.parse import urlsplit

from requests.utils import DEFAULT_CA_BUNDLE_PATH
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.exceptions import ConnectTimeoutError, NewConnectionError

# Never more than this to connect, whatever the deadline (as the proxy).
CONNECT_TIMEOUT_S = 3.0
READ_CHUNK = 64 * 1024


def tls_options(fingerprint: str | None) -> dict[str, Any]:
    """urllib3's HTTPS settings for a remote service: its pinned certificate, else the CAs."""
    if fingerprint is not None:
        # The certificate is checked by its digest: a self-signed one, as announced.
        return {"cert_reqs": "CERT_NONE", "assert_fingerprint": fingerprint}
    return {"cert_reqs": "CERT_REQUIRED", "ca_certs": DEFAULT_CA_BUNDLE_PATH}


class FetchError(Exception):
    """A fetch that gave no usable JSON; its message says why."""


def fetch_json(
    url: str,
    *,
    headers: Mapping[str, str],
    deadline_s: float,
    max_bytes: int,
    accept: Collection[int] = (200,),
    fingerprint: str | None = None,
) -> Any:
    """GET `url` and parse its JSON body, within `deadline_s` in all and `max_bytes` of body.

    `accept`: the statuses whose body is wanted (e.g. 503 for a degraded health report).
    `fingerprint`: the SHA-256 (hex) an https server's certificate must have (pinned, as
    announced), instead of a check against the system's CAs. Raises FetchError.
    """
    body, status = fetch_body(
        url,
        headers=headers,
        deadline_s=deadline_s,
        max_bytes=max_bytes,
        accept=accept,
        fingerprint=fingerprint,
    )
    try:
        return json.loads(body)
    except (ValueError, RecursionError):
        raise FetchError(f"{url} did not answer JSON (HTTP {status})") from None


def fetch_body(
    url: str,
    *,
    headers: Mapping[str, str],
    deadline_s: float,
    max_bytes: int,
    accept: Collection[int] = (200,),
    fingerprint: str | None = None,
) -> tuple[bytes, int]:
    """GET `url`: its body and status, under fetch_json's rules. Raises FetchError."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise FetchError(f"{url} is not an http(s) URL")
    try:
        port = parts.port
    except ValueError as exc:
        raise FetchError(f"{url}: {exc}") from None
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    timeout = min(CONNECT_TIMEOUT_S, deadline_s)
    conn: HTTPConnection
    if parts.scheme == "https":
        conn = HTTPSConnection(parts.hostname, port, timeout=timeout, **tls_options(fingerprint))
    else:
        conn = HTTPConnection(parts.hostname, port, timeout=timeout)
    expired = threading.Event()
    done = threading.Event()
    # The connection's socket, kept: http.client lets go of it once a response that
    # closes the connection has begun (the response's file holds it then).
    sockets: list[socket.socket] = []

    def watch() -> None:
        # At the deadline, shut the socket (again and again, should the connection only
        # now have one): whatever recv or send blocks the fetch, TLS handshake included,
        # returns at once.
        if done.wait(deadline_s):
            return
        expired.set()
        while True:
            for sock in (*sockets, conn.sock):
                if sock is not None:
                    with contextlib.suppress(OSError):
                        socket.socket.shutdown(sock, socket.SHUT_RDWR)
            if done.wait(0.1):
                return

    watchdog = threading.Thread(target=watch, name="remote-fetch-deadline", daemon=True)
    watchdog.start()
    try:
        conn.connect()
        if conn.sock is not None:
            sockets.append(conn.sock)
        body, status = _get(conn, url, target, headers, max_bytes, accept, expired)
    except FetchError:
        raise
    except Exception as exc:
        if expired.is_set():
            raise FetchError(f"no answer from {url} within {deadline_s:g} s") from None
        if isinstance(exc, NewConnectionError) or (
            not sockets and not isinstance(exc, ConnectTimeoutError)
        ):
            raise FetchError(f"cannot connect to {url} ({_root_cause(exc)})") from None
        if isinstance(exc, ConnectTimeoutError | TimeoutError):
            raise FetchError(f"no answer from {url} within {timeout:g} s") from None
        raise FetchError(f"{url}: {_root_cause(exc)}") from None
    finally:
        done.set()
        conn.close()
    if expired.is_set():
        raise FetchError(f"no answer from {url} within {deadline_s:g} s")
    return body, status


def _get(
    conn: HTTPConnection,
    url: str,
    target: str,
    headers: Mapping[str, str],
    max_bytes: int,
    accept: Collection[int],
    expired: threading.Event,
) -> tuple[bytes, int]:
    """The body and status of GET `target` on `conn`, read up to `max_bytes`."""
    conn.request(
        "GET",
        target,
        headers={**headers, "Accept-Encoding": "identity", "Connection": "close"},
        preload_content=False,
        decode_content=False,
    )
    response = conn.getresponse()
    if response.status not in accept:
        # Redirects included: never followed.
        raise FetchError(f"{url} answered HTTP {response.status}")
    encoding = response.headers.get("Content-Encoding", "identity").strip().lower()
    if encoding not in ("", "identity"):
        raise FetchError(f"{url} answered with Content-Encoding {encoding}")
    length = response.headers.get("Content-Length")
    if length is not None and length.isdigit() and int(length) > max_bytes:
        raise FetchError(f"{url} answered {length} bytes: more than {max_bytes}")
    chunks: list[bytes] = []
    size = 0
    while True:
        chunk = response.read1(READ_CHUNK, decode_content=False)
        if not chunk:
            break
        size += len(chunk)
        if size > max_bytes:
            raise FetchError(f"{url} answered more than {max_bytes} bytes")
        chunks.append(chunk)
        if expired.is_set():
            break
    return b"".join(chunks), response.status


def _root_cause(exc: BaseException) -> str:
    """The innermost reason of an error (e.g. `[Errno 111] Connection refused`)."""
    while exc.__context__ is not None:
        exc = exc.__context__
    return str(exc) or type(exc).__name__


__all__ = ["FetchError", "fetch_body", "fetch_json"]
