"""custom-service REST resources beyond the generated operation endpoints."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

from flask import Response
from flask.views import MethodView

from custom_service.schemas import HelloArgs, HelloSchema, TicksArgs
from custom_service.service import service
from pyedge import sse

blp = service.blueprint


@blp.route("/hello")
class Hello(MethodView):
    @blp.arguments(HelloArgs, location="query")
    @blp.response(200, HelloSchema)
    def get(self, args: dict[str, Any]) -> dict[str, str]:
        """Greet someone, with the configured greeting."""
        runtime = service.runtime()
        return {"message": f"{runtime.settings['greeting']}, {args['name']}!", "node": runtime.node}


@blp.route("/ticks")
class Ticks(MethodView):
    @blp.arguments(TicksArgs, location="query")
    @blp.doc(**sse.doc("Server-Sent Events: `id` and `seq` count from 1, `event: end` closes it"))
    def get(self, args: dict[str, Any]) -> Response:
        """Stream numbered ticks as Server-Sent Events (the streaming example)."""
        node = service.runtime().node

        def ticks() -> Iterator[str]:
            for seq in range(1, args["count"] + 1):
                if seq > 1:
                    time.sleep(args["interval"])
                yield sse.format_event({"seq": seq, "node": node}, event_id=str(seq))
            yield sse.format_event({}, event="end")

        return sse.event_response(ticks())
