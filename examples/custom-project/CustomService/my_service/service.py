"""my-service: the service declaration and its operation."""

from __future__ import annotations

from typing import Any

from my_service.config import SETTINGS
from my_service.schemas import CountParams
from pyedge import EdgeService, Session

service = EdgeService(
    "my-service",
    title="My service",
    version="1.0.0",
    description="A user's own service: a Task and a REST resource.",
    settings=SETTINGS,
    import_name=__name__,
)


def count(session: Session, params: dict[str, Any]) -> str:
    """Count to `to`, a tenth of a second a step; abort ends it early."""
    for number in range(1, params["to"] + 1):
        if not session.sleep(0.1):
            return f"aborted at {number}"
        session.update(number=number, progress=number / params["to"])
    return f"counted to {params['to']}"


service.task("count", count, params=CountParams)
