"""alerts: rules on sensor readings that fire and clear events and actions."""

# Importing them registers the REST resources and the admin page's panels.
from alerts import admin, views  # noqa: F401
from alerts.service import service

__all__ = ["service"]
