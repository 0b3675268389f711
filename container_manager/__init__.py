"""container-manager: containers, images and apps on the device through the Docker SDK."""

from container_manager import app_views, views  # noqa: F401  (registers the REST resources)
from container_manager.service import service

__all__ = ["service"]
