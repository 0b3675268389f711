"""The Docker engine behind the container-manager: two docker-py clients, made on first use.

Every call goes through `Engine.call` or `Engine.stream`, which translate docker-py's
exceptions into the container-manager's (errors.py).
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable
from typing import TypeVar

import docker

from container_manager.errors import EngineTimeout, EngineUnavailable, translated
from pyedge import ServiceRuntime
from pyedge.metrics import Metrics

logger = logging.getLogger(__name__)

# docker-py's default when DOCKER_HOST is unset, on Linux.
DEFAULT_SOCKET_URL = "unix:///var/run/docker.sock"
# Where a runtime keeps its Engine (runtime.extras[ENGINE]), set by the service's start hook.
ENGINE = "engine"

T = TypeVar("T")

# The engine answers a ping this fast or counts as unreachable (health checks use it).
PING_TIMEOUT_S = 2.0


class Engine:
    """docker-py clients on one engine: ordinary calls, slow calls, and streams.

    Ordinary calls (lists, inspects, start, stop) are bounded by `timeout`, so an engine
    that hangs is answered for within it; slow calls (create, remove, prune, stats, logs)
    by `slow_timeout`; streams (logs, events, pulls) have no read timeout. The clients are
    made on first use, with the version negotiated within `timeout`, so the service starts
    while the engine is away and works as soon as it answers.
    """

    def __init__(
        self,
        base_url: str | None,
        timeout: float,
        slow_timeout: float,
        metrics: Metrics | None = None,
    ) -> None:
        self.base_url = base_url
        # Counts every call and its errors (pyedge_engine_calls_total, ..._errors_total).
        self.metrics = metrics if metrics is not None else Metrics()
        self.timeouts: dict[str, float | None] = {
            "call": timeout,
            "slow": slow_timeout,
            "stream": None,
        }
        self._lock = threading.Lock()
        self._clients: dict[str, docker.DockerClient] = {}

    def _make(self, timeout: float | None) -> docker.DockerClient:
        # Negotiated within the ordinary timeout even for the stream client: an engine that
        # accepts and never answers must not hold a stream's first call forever.
        negotiate = self.timeouts["call"]
        with translated():
            if self.base_url:
                client = docker.DockerClient(
                    base_url=self.base_url, version="auto", timeout=negotiate
                )
            else:
                # docker-py's from_env reads DOCKER_HOST, DOCKER_TLS_VERIFY, DOCKER_CERT_PATH.
                client = docker.from_env(version="auto", timeout=negotiate)
        # docker-py's APIClient passes its timeout to every request as it is (None: none).
        client.api.timeout = timeout
        return client

    def _get(self, kind: str) -> docker.DockerClient:
        with self._lock:
            found = self._clients.get(kind)
        if found is not None:
            return found
        # Made outside the lock: negotiating with a slow engine must not block the other
        # kinds' calls (or the health check) behind it.
        made = self._make(self.timeouts[kind])
        with self._lock:
            found = self._clients.setdefault(kind, made)
        if found is not made:
            made.close()  # another thread made one first
        return found

    @property
    def client(self) -> docker.DockerClient:
        """The client for ordinary calls (bounded by `timeout`)."""
        return self._get("call")

    def call(self, func: Callable[[docker.DockerClient], T], slow: bool = False) -> T:
        """Run `func(client)` with errors translated; `slow` allows `slow_timeout`."""
        return self._run("slow" if slow else "call", func)

    def stream(self, func: Callable[[docker.DockerClient], T]) -> T:
        """Run `func(stream_client)` with errors translated (to open a stream)."""
        return self._run("stream", func)

    def _run(self, kind: str, func: Callable[[docker.DockerClient], T]) -> T:
        try:
            with translated():
                result = func(self._get(kind))
        except EngineTimeout as exc:
            self.metrics.engine_call(kind, exc)
            raise  # the engine is there, only slow: its connections stay good
        except EngineUnavailable as exc:
            self.metrics.engine_call(kind, exc)
            # The pooled connections lead to the old engine process: closing them keeps no
            # dead sockets, and the next call negotiates afresh with whatever engine answers.
            self.close()
            raise
        except Exception as exc:
            self.metrics.engine_call(kind, exc)
            raise
        self.metrics.engine_call(kind)
        return result

    def ping(self) -> None:
        """Raise EngineUnavailable unless the engine answers within PING_TIMEOUT_S."""

        def ping(client: docker.DockerClient) -> None:
            response = client.api._get(client.api._url("/_ping"), timeout=PING_TIMEOUT_S)
            client.api._raise_for_status(response)

        self.call(ping)

    def close(self) -> None:
        """Close every client's connection pool."""
        with self._lock:
            clients, self._clients = list(self._clients.values()), {}
        for client in clients:
            client.close()


def engine_of(runtime: ServiceRuntime) -> Engine:
    """The Engine the container-manager's start hook made for `runtime`."""
    engine: Engine = runtime.extras[ENGINE]
    return engine


def socket_path(base_url: str | None) -> str | None:
    """The engine's unix socket path for an address (None: DOCKER_HOST, else the default)."""
    url = base_url or os.environ.get("DOCKER_HOST") or DEFAULT_SOCKET_URL
    return url.removeprefix("unix://") if url.startswith("unix://") else None
