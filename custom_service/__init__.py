"""custom-service: the worked example of a PyEdge service; copy this folder to write yours."""

from custom_service import views  # noqa: F401  (registers the REST resources)
from custom_service.service import service

__all__ = ["service"]
