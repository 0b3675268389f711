"""custom-service REST resources beyond the generated operation endpoints."""

from __future__ import annotations

from typing import Any

from flask.views import MethodView

from custom_service.schemas import HelloArgs, HelloSchema
from custom_service.service import service

blp = service.blueprint


@blp.route("/hello")
class Hello(MethodView):
    @blp.arguments(HelloArgs, location="query")
    @blp.response(200, HelloSchema)
    def get(self, args: dict[str, Any]) -> dict[str, str]:
        """Greet someone, with the configured greeting."""
        runtime = service.runtime()
        return {"message": f"{runtime.settings['greeting']}, {args['name']}!", "node": runtime.node}
