"""container-manager: containers, images and apps on this device, behind a security policy."""

from __future__ import annotations

import threading

from container_manager.apps import AppStore
from container_manager.config import SETTINGS
from container_manager.engine import ENGINE, Engine, engine_of, socket_path
from container_manager.gateway.runtime import close_gateway, open_gateway
from container_manager.policy import Policy
from container_manager.pull import PullParams, abort_pull, pull
from container_manager.reconciler import (
    APPS,
    RECONCILER,
    Reconciler,
    reconcile_autostart,
    run_reconcile,
    stop_reconcile,
)
from pyedge import Degraded, EdgeService, ServiceRuntime
from pyedge.security import Role

service = EdgeService(
    "container-manager",
    title="Container manager",
    version="1.0.0",
    description="Containers, images, volumes, networks and apps on this device, through the "
    "Docker engine, behind a deny-by-default security policy.",
    settings=SETTINGS,
    import_name=__name__,
)

POLICY = "policy"
STREAMS = "streams"


def policy_of(runtime: ServiceRuntime) -> Policy:
    """The security policy of this runtime's settings."""
    policy: Policy = runtime.extras[POLICY]
    return policy


@service.on_start
def open_engine(runtime: ServiceRuntime) -> None:
    """Set up the engine clients (they connect on first use) and the policy."""
    settings = runtime.settings
    runtime.extras[ENGINE] = Engine(
        settings["docker_host"],
        settings["timeout"],
        settings["slow_timeout"],
        metrics=runtime.metrics,
    )
    runtime.extras[POLICY] = Policy.from_settings(
        runtime.settings, socket_path(runtime.settings["docker_host"])
    )
    # Each SSE stream holds a server thread: bound them so the API stays answerable.
    runtime.extras[STREAMS] = threading.BoundedSemaphore(runtime.settings["max_streams"])


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


# Images are the admin's: what runs on the device comes from them.
service.task("pull", pull, params=PullParams, abort=abort_pull, role=Role.ADMIN)


@service.on_start
def open_apps(runtime: ServiceRuntime) -> None:
    """Open the app store and set up the reconciler (the engine hook has run)."""
    store = AppStore(runtime.data_dir / "apps.db")
    runtime.extras[APPS] = store
    runtime.extras[RECONCILER] = Reconciler(
        engine_of(runtime),
        store,
        policy_of(runtime),
        backoff_max=runtime.settings["crash_backoff_max"],
    )


@service.on_stop
def close_apps(runtime: ServiceRuntime) -> None:
    """Close the app store (the reconcile Process has stopped by now)."""
    runtime.extras.pop(RECONCILER, None)
    store = runtime.extras.pop(APPS, None)
    if store is not None:
        store.close()


service.process("reconcile", run_reconcile, stop=stop_reconcile, autostart=reconcile_autostart)


@service.on_start
def open_docker_gateway(runtime: ServiceRuntime) -> None:
    """Open the Docker API gateway's listener when it is configured (off by default)."""
    open_gateway(runtime)


@service.on_stop
def close_docker_gateway(runtime: ServiceRuntime) -> None:
    """Close the Docker API gateway's listener (first: the engine clients close after)."""
    close_gateway(runtime)


@service.health_check
def apps_converging(runtime: ServiceRuntime) -> str | None:
    """Degraded while an app's service crash-loops, is denied or has a container in its way."""
    reconciler: Reconciler | None = runtime.extras.get(RECONCILER)
    if reconciler is None:
        return None
    degraded = reconciler.degraded()
    if degraded:
        raise Degraded("degraded app services: " + ", ".join(degraded))
    return f"{len(reconciler.summary)} apps" if reconciler.summary else None
