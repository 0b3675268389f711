"""custom-service: the worked example of a PyEdge service; copy this folder to write yours."""

# Importing them registers the REST resources and the admin page's panel (admin.py).
from custom_service import admin, views  # noqa: F401
from custom_service.service import service

__all__ = ["service"]
