"""device-service: reads sensors and publishes every reading to MQTT, none lost."""

from device_service import views  # noqa: F401  (registers the REST resources)
from device_service.service import service

__all__ = ["service"]
