"""Server-Sent Events: the event format and the response every service streams with."""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

from flask import Response

MIMETYPE = "text/event-stream"
# No caching, and no buffering by a reverse proxy (nginx, the hub's proxy): events must
# arrive as they happen.
HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


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


def event_response(events: Iterable[str]) -> Response:
    """A streaming response of formatted events."""
    return Response(events, mimetype=MIMETYPE, headers=HEADERS)


def doc(description: str) -> dict[str, Any]:
    """The OpenAPI `responses` of an SSE endpoint (for `@blp.doc(**doc(...))`)."""
    content = {MIMETYPE: {"schema": {"type": "string"}}}
    return {"responses": {"200": {"description": description, "content": content}}}
