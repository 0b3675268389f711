"""edge-server: gathers every service's blueprint into one REST API and front page."""

from edge_server.app import create_app

__all__ = ["create_app"]
