"""container-manager: containers, images and apps on this device, behind a security policy."""

from __future__ import annotations

from container_manager.config import SETTINGS
from container_manager.engine import Engine
from container_manager.policy import Policy
from pyedge import EdgeService, ServiceRuntime

service = EdgeService(
    "container-manager",
    title="Container manager",
    version="1.0.0",
    description="Containers, images, volumes, networks and apps on this device, through the "
    "Docker engine, behind a deny-by-default security policy.",
    settings=SETTINGS,
    import_name=__name__,
)

ENGINE = "engine"
POLICY = "policy"


def engine_of(runtime: ServiceRuntime) -> Engine:
    """The Engine the start hook made for this runtime."""
    engine: Engine = runtime.extras[ENGINE]
    return engine


def policy_of(runtime: ServiceRuntime) -> Policy:
    """The security policy of this runtime's settings."""
    policy: Policy = runtime.extras[POLICY]
    return policy


@service.on_start
def open_engine(runtime: ServiceRuntime) -> None:
    """Set up the engine clients (they connect on first use) and the policy."""
    runtime.extras[ENGINE] = Engine(runtime.settings["docker_host"], runtime.settings["timeout"])
    runtime.extras[POLICY] = Policy.from_settings(runtime.settings)


@service.on_stop
def close_engine(runtime: ServiceRuntime) -> None:
    """Close the engine clients' connections."""
    engine = runtime.extras.pop(ENGINE, None)
    if engine is not None:
        engine.close()


@service.health_check
def engine_reachable(runtime: ServiceRuntime) -> str:
    """Degraded while the Docker engine does not answer."""
    engine = runtime.extras.get(ENGINE)
    if engine is None:
        return "not started"
    engine.ping()
    return "engine reachable"
