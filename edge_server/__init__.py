"""edge-server: gathers every service's blueprint into one REST API and front page."""

from __future__ import annotations

from typing import Any

__all__ = ["create_app"]


def __getattr__(name: str) -> Any:
    # Lazy: a container's health check (python -m edge_server.healthcheck) runs every few
    # seconds and must not pay for importing Flask and every service.
    if name == "create_app":
        from edge_server.app import create_app

        return create_app
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
