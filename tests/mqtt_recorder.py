"""A separate paho subscriber that records what the broker delivers: the SDK's own helper."""

from pyedge.testing import MqttRecorder, Received

__all__ = ["MqttRecorder", "Received"]
