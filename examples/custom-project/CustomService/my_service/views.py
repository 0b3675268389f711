"""my-service REST resources beyond the generated operation endpoints."""

from __future__ import annotations

from flask.views import MethodView

from my_service.schemas import HelloSchema
from my_service.service import service

blp = service.blueprint


@blp.route("/hello")
class Hello(MethodView):
    @blp.response(200, HelloSchema)
    def get(self) -> dict[str, str]:
        """Greet, with the configured greeting and the node's name."""
        runtime = service.runtime()
        return {"message": f"{runtime.settings['greeting']} from my-service", "node": runtime.node}
