"""Which services run: those installed under the entry-point group pyedge.services."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from importlib.metadata import entry_points
from typing import Any

from edge_server.config import load_settings
from pyedge import ConfigError, EdgeService
from pyedge.config import LoadedConfig

ENTRY_POINT_GROUP = "pyedge.services"


def installed_services() -> dict[str, EdgeService]:
    """Every installed service, by slug; a broken plugin is an error naming it."""
    services: dict[str, EdgeService] = {}
    for entry in entry_points(group=ENTRY_POINT_GROUP):
        try:
            service = entry.load()
        except Exception as exc:
            raise ConfigError(ENTRY_POINT_GROUP, entry.value, f"cannot load: {exc}") from exc
        if not isinstance(service, EdgeService) or service.slug != entry.name:
            raise ConfigError(
                ENTRY_POINT_GROUP,
                entry.value,
                f"entry point {entry.name!r} must name an EdgeService with that slug",
            )
        services[entry.name] = service
    return services


def enabled_services(settings: LoadedConfig) -> list[EdgeService]:
    """The installed services that EDGE_SERVICES selects (all when it is unset)."""
    installed = installed_services()
    wanted = settings["EDGE_SERVICES"]
    if wanted is None:
        return [installed[slug] for slug in sorted(installed)]
    missing = [slug for slug in wanted if slug not in installed]
    if missing:
        raise settings.error(
            "EDGE_SERVICES",
            f"not installed: {', '.join(missing)} (installed: {', '.join(sorted(installed))})",
        )
    return [installed[slug] for slug in wanted]


def configure(
    overrides: Mapping[str, Any] | None = None,
    services: Sequence[EdgeService] | None = None,
) -> tuple[LoadedConfig, list[EdgeService]]:
    """The node's settings, its services' included, and the services to run.

    `services` replaces the installed ones selected by EDGE_SERVICES.
    """
    settings = load_settings(overrides)
    chosen = list(services) if services is not None else enabled_services(settings)
    sections = [service.section for service in chosen]
    return load_settings(overrides, service_sections=sections), chosen
