"""The Docker engine behind the container-manager: two docker-py clients, made on first use.

Every call goes through `Engine.call` or `Engine.stream`, which translate docker-py's
exceptions into the container-manager's (errors.py).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import TypeVar

import docker

from container_manager.errors import EngineUnavailable, translated
from pyedge import ServiceRuntime

logger = logging.getLogger(__name__)

# Where a runtime keeps its Engine (runtime.extras[ENGINE]), set by the service's start hook.
ENGINE = "engine"

T = TypeVar("T")

# The engine answers a ping this fast or counts as unreachable (health checks use it).
PING_TIMEOUT_S = 2.0


class Engine:
    """Two docker-py clients on one engine: ordinary calls with a timeout, streams without.

    The clients are made on first use (version negotiation needs the engine), so the
    service starts while the engine is away and works as soon as it answers.
    """

    def __init__(self, base_url: str | None, timeout: float) -> None:
        self.base_url = base_url
        self.timeout = timeout
        self._lock = threading.Lock()
        self._client: docker.DockerClient | None = None
        self._stream_client: docker.DockerClient | None = None

    def _make(self, timeout: float | None) -> docker.DockerClient:
        with translated():
            if self.base_url:
                client = docker.DockerClient(
                    base_url=self.base_url, version="auto", timeout=timeout
                )
            else:
                # docker-py's from_env reads DOCKER_HOST, DOCKER_TLS_VERIFY, DOCKER_CERT_PATH.
                client = docker.from_env(version="auto", timeout=timeout)
        if timeout is None:
            # docker-py has no "no timeout" of its own: its APIClient uses the value as is.
            client.api.timeout = None
        return client

    @property
    def client(self) -> docker.DockerClient:
        """The client for ordinary calls (bounded by the timeout)."""
        with self._lock:
            if self._client is None:
                self._client = self._make(self.timeout)
            return self._client

    @property
    def stream_client(self) -> docker.DockerClient:
        """The client for logs, events and pulls: no read timeout."""
        with self._lock:
            if self._stream_client is None:
                self._stream_client = self._make(None)
            return self._stream_client

    def call(self, func: Callable[[docker.DockerClient], T]) -> T:
        """Run `func(client)` with errors translated."""
        try:
            with translated():
                return func(self.client)
        except EngineUnavailable:
            self.reset()
            raise

    def stream(self, func: Callable[[docker.DockerClient], T]) -> T:
        """Run `func(stream_client)` with errors translated (to open a stream)."""
        try:
            with translated():
                return func(self.stream_client)
        except EngineUnavailable:
            self.reset()
            raise

    def reset(self) -> None:
        """Drop both clients after the engine went away.

        Their pooled connections lead to the old engine process: closing them now keeps
        no dead sockets, and the next call negotiates afresh with whatever engine answers.
        """
        self.close()

    def ping(self) -> None:
        """Raise EngineUnavailable unless the engine answers within PING_TIMEOUT_S."""

        def ping(client: docker.DockerClient) -> None:
            response = client.api._get(client.api._url("/_ping"), timeout=PING_TIMEOUT_S)
            client.api._raise_for_status(response)

        self.call(ping)

    def close(self) -> None:
        """Close both clients' connection pools."""
        with self._lock:
            for client in (self._client, self._stream_client):
                if client is not None:
                    client.close()
            self._client = self._stream_client = None


def engine_of(runtime: ServiceRuntime) -> Engine:
    """The Engine the container-manager's start hook made for `runtime`."""
    engine: Engine = runtime.extras[ENGINE]
    return engine
