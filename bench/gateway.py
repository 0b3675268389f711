"""`docker ps` through the Docker API gateway vs on the engine's own socket, same run.

The gateway is served as on a device: by `pyedge run` (its listener in the gunicorn worker,
beside the container-manager), on the benchmark's own dockerd with 20 containers. Two rows:
the real docker CLI (Debian's docker.io: a process per command, as a user runs it), and the
API call alone (GET /containers/json?all=1 over keep-alive HTTP vs docker-py's same call on
the socket). The issue names no target: the rows report the overhead.
"""

from __future__ import annotations

import json
import os
import subprocess
import tempfile
from pathlib import Path
from typing import Any

import requests

from bench.containers import (
    CONTAINERS,
    WARMUP,
    populate,
    result,
    running_engine,
    serving,
    timed,
)
from bench.processes import HOST, free_port
from pyedge.accounts import AccountStore
from pyedge.security import Role
from tests.containers.gateway_helpers import docker_cli

CLI_ITERATIONS = 40
API_ITERATIONS = 300


def docker_ps(host: str, config: Path) -> None:
    """`docker ps -a -q` against `host` (its config sends the token), checked."""
    env = {"PATH": os.environ.get("PATH", ""), "DOCKER_HOST": host, "DOCKER_CONFIG": str(config)}
    done = subprocess.run(
        [docker_cli(), "ps", "-a", "-q"], env=env, capture_output=True, text=True, check=True
    )
    assert len(done.stdout.split()) >= CONTAINERS, done.stdout


def run(scale: float) -> list[dict[str, Any]]:
    """`docker ps` and its API call through the gateway vs the socket; [] without dockerd."""
    cli_iterations = max(10, int(CLI_ITERATIONS * scale))
    api_iterations = max(30, int(API_ITERATIONS * scale))
    with running_engine() as engine:
        if engine is None:
            return []
        client = engine.client()
        with tempfile.TemporaryDirectory() as tmp:
            data = Path(tmp) / "data"
            token = AccountStore(data / "accounts.db").create_token("bench", Role.ADMIN)
            config = Path(tmp) / "docker"
            config.mkdir()
            (config / "config.json").write_text(
                json.dumps({"HttpHeaders": {"Authorization": f"Bearer {token}"}})
            )
            bare = Path(tmp) / "docker-bare"
            bare.mkdir()
            (bare / "config.json").write_text("{}")
            port = free_port()
            gateway = f"tcp://{HOST}:{port}"
            populate(client, CONTAINERS)
            listen = f"{HOST}:{port}"
            with (
                serving(engine, data, token, EDGE_CONTAINER_MANAGER_GATEWAY_LISTEN=listen),
                requests.Session() as http,
            ):
                http.headers["Authorization"] = f"Bearer {token}"
                list_url = f"http://{listen}/v1.41/containers/json?all=1"
                cli_gateway, cli_socket = [], []
                for i in range(WARMUP + cli_iterations):
                    socket_time = timed(lambda: docker_ps(engine.url, bare))
                    gateway_time = timed(lambda: docker_ps(gateway, config))
                    if i >= WARMUP:
                        cli_socket.append(socket_time)
                        cli_gateway.append(gateway_time)
                api_gateway, api_socket = [], []
                for i in range(WARMUP + api_iterations):
                    socket_time = timed(lambda: client.api.containers(all=True))
                    gateway_time = timed(lambda: http.get(list_url).raise_for_status())
                    if i >= WARMUP:
                        api_socket.append(socket_time)
                        api_gateway.append(gateway_time)
            client.close()
    rows = [
        result(
            "gateway: docker ps -a",
            cli_gateway,
            cli_socket,
            None,
            f"the docker CLI through the gateway (token) vs on the engine's socket, "
            f"{CONTAINERS} containers, a process per command",
        ),
        result(
            "gateway: GET containers/json",
            api_gateway,
            api_socket,
            None,
            "the API call of docker ps over keep-alive HTTP to the gateway vs docker-py's "
            "client.api.containers(all=True) on the socket",
        ),
    ]
    for row in rows:
        row["overhead_ms"] = row["pyedge"] - row["baseline"]
        row["what"] += f"; overhead {row['overhead_ms']:.2f} ms (median)"
    return rows
