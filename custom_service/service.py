"""custom-service: the service declaration and its operations."""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Any

from custom_service.config import SETTINGS
from custom_service.schemas import HeartbeatParams, SleepParams
from pyedge import Degraded, EdgeService, ServiceRuntime, Session
from pyedge.operations import utc_now

service = EdgeService(
    "custom-service",
    title="Custom service",
    version="1.0.0",
    description="The worked example: a Task, a Process and a REST resource.",
    settings=SETTINGS,
    import_name=__name__,
)

# Progress is reported this often while sleeping.
SLEEP_STEP_S = 0.1


def sleep(session: Session, params: dict[str, Any]) -> str:
    """Sleep for `seconds`, reporting progress; abort ends it early."""
    total = params["seconds"]
    started = time.monotonic()
    elapsed = 0.0
    while elapsed < total:
        if not session.sleep(min(SLEEP_STEP_S, total - elapsed)):
            return f"aborted after {elapsed:.1f} s"
        elapsed = time.monotonic() - started
        session.update(
            elapsed=round(min(elapsed, total), 3), progress=round(min(elapsed / total, 1.0), 4)
        )
    return f"slept {total:g} s"


def heartbeat(session: Session, params: dict[str, Any]) -> str:
    """Publish {"seq", "ts"} to pyedge/<node>/custom-service/heartbeat until stopped."""
    runtime: ServiceRuntime = session.context
    topic = runtime.topic("heartbeat")
    seq = 0
    while True:
        seq += 1
        ts = utc_now()
        # QoS 0: a beat is worth nothing later, so none pile up while the broker is away.
        runtime.bus.publish_json(topic, {"seq": seq, "ts": ts}, qos=0)
        session.update(seq=seq, last_beat=ts, interval=params["interval"])
        if not session.sleep(params["interval"]):
            return f"stopped after {seq} beats"


def heartbeat_autostart(runtime: ServiceRuntime) -> dict[str, Any] | None:
    """Autostart the heartbeat when the settings ask for it."""
    if not runtime.settings["heartbeat_autostart"]:
        return None
    return {"interval": runtime.settings["heartbeat_interval"]}


service.task("sleep", sleep, params=SleepParams)
service.process("heartbeat", heartbeat, params=HeartbeatParams, autostart=heartbeat_autostart)


@service.health_check
def heartbeat_is_beating(runtime: ServiceRuntime) -> str:
    """Degraded when a running heartbeat has missed three beats."""
    session = runtime.runner.sessions["heartbeat"]
    if not session.active:
        return "heartbeat not running"
    last_beat = session.data.get("last_beat")
    if last_beat is None:
        return "heartbeat starting"
    age = (datetime.now(UTC) - datetime.fromisoformat(last_beat)).total_seconds()
    # Three missed beats, with slack for a busy machine at short intervals.
    if age > 3 * session.params["interval"] + 2:
        raise Degraded(f"heartbeat stalled: no beat for {age:.1f} s")
    return f"heartbeat seq {session.data.get('seq', 0)}"
