"""container-manager: containers, images and apps on the device through the Docker SDK."""

# Importing them registers the REST resources (and the admin page's panel).
from container_manager import admin, app_views, views  # noqa: F401
from container_manager.gateway import views as gateway_views  # noqa: F401
from container_manager.service import service

__all__ = ["service"]
