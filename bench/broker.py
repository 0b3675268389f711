"""A Mosquitto on a free port for the benchmarks, with the project's configuration."""

from __future__ import annotations

import os
import socket
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from edge_server.broker.accounts import AccountSpec, ensure_accounts
from edge_server.broker.embedded import Mosquitto
from edge_server.config import REPO_MQTT_CONFIG

# One account for every benchmark client: they publish under bench/ as well as pyedge/.
BENCH_ACCOUNT = AccountSpec("bench", "the benchmarks' clients", read=("#",), write=("#",))
LOGIN_ENV = ("EDGE_MQTT_USERNAME", "EDGE_MQTT_PASSWORD")


@contextmanager
def running_broker() -> Iterator[int]:
    """Start Mosquitto on a free port; yields the port. Its login is in the environment."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    with tempfile.TemporaryDirectory() as data:
        accounts = ensure_accounts(Path(data), [BENCH_ACCOUNT], "pyedge")
        broker = Mosquitto(REPO_MQTT_CONFIG, Path(data), "127.0.0.1", port, accounts)
        broker.start()
        login = accounts.login(BENCH_ACCOUNT.name)
        # As a device's environment gives it: the apps the benchmarks create, and their
        # child processes, read it from there.
        previous = {key: os.environ.get(key) for key in LOGIN_ENV}
        os.environ.update(zip(LOGIN_ENV, (login["username"], login["password"]), strict=True))
        try:
            yield port
        finally:
            for key, value in previous.items():
                if value is None:
                    os.environ.pop(key, None)
                else:
                    os.environ[key] = value
            broker.stop()


def bench_login() -> dict[str, str]:
    """The running broker's `username` and `password` (BusSettings' keyword arguments)."""
    return {"username": os.environ[LOGIN_ENV[0]], "password": os.environ[LOGIN_ENV[1]]}
