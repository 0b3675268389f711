"""Server-Sent Events: the event format and the response every service streams with."""

from __future__ import annotations

import json
import socket
import struct
from collections.abc import Iterable, Mapping
from typing import Any

from flask import Response, request

MIMETYPE = "text/event-stream"
# No caching, and no buffering by a reverse proxy (nginx, the hub's proxy): events must
# arrive as they happen.
HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
# A stream whose client stops reading blocks its thread in a write once the socket's
# buffer is full; after this long the write fails and the thread is free again.
SEND_TIMEOUT_S = 10
# A stream's send buffer. Left to the kernel it grows to megabytes per connection, so a
# client that stopped reading would be noticed only after seconds of buffering (and the
# kernel would hold that memory); events are small, 64 KiB is plenty.
SEND_BUFFER = 64 * 1024
# Where the WSGI servers PyEdge runs under put the connection's socket.
SOCKET_KEYS = ("gunicorn.socket", "werkzeug.socket")
# A JSON Schema for each event of a text/event-stream response (as SSE parsers give them).
SSE_EVENT_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["data", "event"],
    "properties": {
        "data": {"type": "string", "description": "the event's data lines, joined"},
        "event": {"type": "string", "description": "its type; message when not named"},
        "id": {"type": "string"},
        "retry": {"type": "integer"},
    },
}


def format_event(
    data: dict[str, Any], event_id: str | None = None, event: str | None = None
) -> str:
    """One SSE event: optional id and event name, JSON data, blank line."""
    lines = []
    if event_id is not None:
        lines.append(f"id: {event_id}")
    if event is not None:
        lines.append(f"event: {event}")
    lines.append(f"data: {json.dumps(data, separators=(',', ':'))}")
    return "\n".join(lines) + "\n\n"


def hold_stream_socket(
    environ: Mapping[str, object], timeout: int = SEND_TIMEOUT_S
) -> socket.socket | None:
    """Bound how long and how much a stream's writes may block; the socket, if the server
    exposes it (gunicorn and werkzeug do)."""
    for key in SOCKET_KEYS:
        sock = environ.get(key)
        if isinstance(sock, socket.socket):
            # The socket stays blocking for the server: only a stalled write times out.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, struct.pack("ll", timeout, 0))
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SEND_BUFFER)
            return sock
    return None


def event_response(events: Iterable[str]) -> Response:
    """A streaming response of formatted events, whose stalled client cannot hold a thread."""
    hold_stream_socket(request.environ)
    return Response(events, mimetype=MIMETYPE, headers=HEADERS)


def doc(description: str) -> dict[str, Any]:
    """The OpenAPI `responses` of an SSE endpoint (for `@blp.doc(**doc(...))`)."""
    # The schema of each event, as an SSE client parses it (schemathesis checks each one).
    content = {MIMETYPE: {"schema": SSE_EVENT_SCHEMA}}
    return {"responses": {"200": {"description": description, "content": content}}}
