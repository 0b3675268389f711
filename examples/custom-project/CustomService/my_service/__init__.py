"""my-service: a user's own service in the compose bundle (see the README)."""

from my_service import views  # noqa: F401  (registers the REST resources)
from my_service.service import service

__all__ = ["service"]
