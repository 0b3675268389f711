"""alerts: the service declaration and its operations."""

from __future__ import annotations

from typing import Any

from alerts.config import SETTINGS
from alerts.engine import Engine
from alerts.schemas import TestParams
from pyedge import Degraded, EdgeService, OperationFailed, ServiceRuntime, Session

service = EdgeService(
    "alerts",
    title="Alerts",
    version="1.0.0",
    description="Rules on sensor readings: thresholds, bands and stale sensors, with actions.",
    settings=SETTINGS,
    import_name=__name__,
    # Actuator actions: its broker account may switch this node's actuators, nothing more.
    mqtt_writes=("device-service/actuators/+/set",),
)

ENGINE = "engine"
WATCH = "watch"


def engine_of(runtime: ServiceRuntime) -> Engine:
    """The Engine the start hook built for this runtime."""
    engine: Engine = runtime.extras[ENGINE]
    return engine


@service.on_start
def open_engine(runtime: ServiceRuntime) -> None:
    """Load the rules and open the store; the watch Process evaluates them."""
    runtime.extras[ENGINE] = Engine(runtime)


@service.on_stop
def close_engine(runtime: ServiceRuntime) -> None:
    """Stop the webhook worker and close the store."""
    engine = runtime.extras.pop(ENGINE, None)
    if engine is not None:
        engine.close()


def watch(session: Session, params: dict[str, Any]) -> str:
    """Watch the sensors the rules name: fire and clear them, with their actions."""
    runtime: ServiceRuntime = session.context
    engine = engine_of(runtime)
    interval = runtime.settings["tick"]
    engine.start_watching()
    ticks = 0
    try:
        while session.sleep(interval):
            engine.tick()
            ticks += 1
            if ticks % 10 == 0:  # progress, cheaply: the session publishes at most 1/s
                session.update(summary=engine.summary())
    finally:
        engine.stop_watching()
    return f"stopped ({engine.summary()})"


def test(session: Session, params: dict[str, Any]) -> str:
    """Send a rule's event once, marked test, and run its fire actions; its state stays."""
    engine = engine_of(session.context)
    if params["rule"] not in engine.rules():
        raise OperationFailed(f"no rule {params['rule']!r}")
    done = engine.test(params["rule"], params["value"])
    session.update(event=done["event"], actions=done["actions"])
    actions = "; ".join(done["actions"]) or "no fire actions"
    return f"sent a test event of {params['rule']}: {actions}"


service.process(WATCH, watch, autostart={})
service.task("test", test, params=TestParams)


@service.health_check
def rules_and_watch(runtime: ServiceRuntime) -> str:
    """Degraded when the rules file failed or the watch Process is not running."""
    engine = runtime.extras.get(ENGINE)
    if engine is None:
        return "not started"
    if engine.file_error:
        raise Degraded(f"rules file not loaded: {engine.file_error}")
    if not runtime.runner.sessions[WATCH].active:
        raise Degraded("watch not running: no rule is evaluated")
    summary: str = engine.summary()
    return summary
