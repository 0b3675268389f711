"""A Mosquitto on a free port for the benchmarks, with the project's configuration."""

from __future__ import annotations

import socket
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from edge_server.broker import Mosquitto
from edge_server.config import REPO_MQTT_CONFIG


@contextmanager
def running_broker() -> Iterator[int]:
    """Start Mosquitto on a free port; yields the port."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    with tempfile.TemporaryDirectory() as data:
        broker = Mosquitto(REPO_MQTT_CONFIG, Path(data), "127.0.0.1", port)
        broker.start()
        try:
            yield port
        finally:
            broker.stop()
