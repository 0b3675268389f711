"""PyEdge SDK: declare a service once, run it in the edge-server or on its own."""

from pyedge.admin import AdminPanel
from pyedge.bus import Bus, BusSettings
from pyedge.config import ConfigError, Setting
from pyedge.errors import OperationConflict, OperationFailed, PyEdgeError, UnknownOperation
from pyedge.host import ServiceHost
from pyedge.operations import NoParams, Operation, OpKind, OpState, Session
from pyedge.service import Degraded, EdgeService, Health, ServiceRuntime
from pyedge.version import __version__

__all__ = [
    "AdminPanel",
    "Bus",
    "BusSettings",
    "ConfigError",
    "Degraded",
    "EdgeService",
    "Health",
    "NoParams",
    "OpKind",
    "OpState",
    "Operation",
    "OperationConflict",
    "OperationFailed",
    "PyEdgeError",
    "ServiceHost",
    "ServiceRuntime",
    "Session",
    "Setting",
    "UnknownOperation",
    "__version__",
]
