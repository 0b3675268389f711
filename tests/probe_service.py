"""A service made for tests: its health can be broken by a setting or a failing Process."""

from __future__ import annotations

from typing import Any

import marshmallow as ma

from pyedge import Degraded, EdgeService, OperationFailed, ServiceRuntime, Session
from pyedge import config as cfg

probe = EdgeService(
    "probe-service",
    title="Probe",
    version="0.0.1",
    settings=(cfg.Setting("broken", cfg.boolean, False),),
    import_name=__name__,
)


def fail(session: Session, params: dict[str, Any]) -> str:
    """Fail at once, as a Process whose hardware is gone would."""
    raise OperationFailed("sensor bus gone")


class HeartbeatLike(ma.Schema):
    """Params with a lower bound, to test autostart validation."""

    interval = ma.fields.Float(required=True, validate=ma.validate.Range(min=0.1))


probe.process("fail", fail)


@probe.health_check
def setting_says_fine(runtime: ServiceRuntime) -> str:
    """Degraded when the `broken` setting is on."""
    if runtime.settings["broken"]:
        raise Degraded("probe told to be broken")
    return "all good"
