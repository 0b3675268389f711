"""Container list and start through the container-manager's API vs the raw docker-py calls.

Both sides run against the same dockerd, started for the benchmark on its own socket (as the
tests do), in the same run. The API is served as on a device, by `pyedge run` (gunicorn) with
the container-manager, and reached over HTTP with keep-alive; the baseline is the one
docker-py call the API makes for the same job. The in-process row (Flask's test client)
shows the HTTP hop's share.
"""

from __future__ import annotations

import logging
import statistics
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import docker
import requests
from flask import Flask

from bench.broker import running_broker
from bench.processes import HOST, PYEDGE, answers, free_port, pyedge_environment, running, wait
from pyedge.accounts import AccountStore
from pyedge.security import Role
from tests.docker_engine import TEST_IMAGE, DockerEngine

logger = logging.getLogger(__name__)

API = "/api/container-manager"
CONTAINERS = 20
LIST_ITERATIONS = 200
START_ITERATIONS = 20
WARMUP = 5
# Targets from the issue: PyEdge's time at most this multiple of the raw call's.
LIST_TARGET = 1.5
START_TARGET = 1.2
SLEEPER = ["sleep", "3600"]


@contextmanager
def serving(engine: DockerEngine, data: Path, token: str, **settings: str) -> Iterator[str]:
    """`pyedge run` with the container-manager on `engine`, on free ports; yields its URL.

    `settings` are more EDGE_* settings for it."""
    port = free_port()
    args = [PYEDGE, "run", "--host", HOST, "--port", str(port)]
    args += ["--mqtt-port", str(free_port()), "--data-dir", str(data)]
    env = pyedge_environment(
        "bench-containers",
        EDGE_LOG_LEVEL="WARNING",
        EDGE_SERVICES="container-manager",
        EDGE_CONTAINER_MANAGER_DOCKER_HOST=engine.url,
        # No apps to converge: keep the reconciler's passes out of the timings.
        EDGE_CONTAINER_MANAGER_RECONCILE_AUTOSTART="0",
        **settings,
    )
    url = f"http://{HOST}:{port}"
    with running(args, env, data.parent / "pyedge-run.log"), requests.Session() as http:
        http.headers["Authorization"] = f"Bearer {token}"
        wait(lambda: answers(http, f"{url}{API}/containers"), 60, "pyedge run")
        yield url


def timed(func: Callable[[], object]) -> float:
    """Seconds `func()` took."""
    started = time.perf_counter()
    func()
    return time.perf_counter() - started


def median_ms(samples: list[float]) -> float:
    """The median of `samples` (seconds), in milliseconds."""
    return 1000.0 * statistics.median(samples)


def populate(client: docker.DockerClient, count: int) -> None:
    """`count` containers of the busybox image: half running, half only created."""
    for i in range(count):
        container = client.api.create_container(
            TEST_IMAGE, command=SLEEPER, name=f"bench-{i:02d}", labels={"bench": "true"}
        )
        if i % 2 == 0:
            client.api.start(container["Id"])


def bench_list(
    http: requests.Session,
    url: str,
    app: Flask,
    client: docker.DockerClient,
    iterations: int,
) -> tuple[list[float], list[float], list[float]]:
    """Times of GET /containers?all=true over HTTP, of the same GET in-process (Flask's test
    client) and of client.api.containers(all=True), interleaved."""
    path = f"{API}/containers?all=true"
    test_client = app.test_client()
    # The in-process app keeps accounts of its own.
    app_token = app.extensions["pyedge.auth"].accounts.create_token("bench", Role.ADMIN)
    test_client.environ_base["HTTP_AUTHORIZATION"] = f"Bearer {app_token}"

    def through_api() -> None:
        response = http.get(f"{url}{path}")
        response.raise_for_status()
        assert len(response.json()) >= CONTAINERS

    def in_process() -> None:
        response = test_client.get(path)
        body = response.get_json()
        assert response.status_code == 200 and len(body) >= CONTAINERS

    def raw() -> None:
        assert len(client.api.containers(all=True)) >= CONTAINERS

    for _ in range(WARMUP):
        through_api()
        in_process()
        raw()
    api_times, in_process_times, raw_times = [], [], []
    for _ in range(iterations):
        # Interleaved, so that drift in the engine's speed weighs on every side alike.
        raw_times.append(timed(raw))
        api_times.append(timed(through_api))
        in_process_times.append(timed(in_process))
    return api_times, in_process_times, raw_times


def bench_start(
    http: requests.Session, url: str, client: docker.DockerClient, iterations: int
) -> tuple[list[float], list[float]]:
    """Times of POST /containers/<id>/start and of client.api.start(id), interleaved; the
    container is killed, untimed, before each start."""
    cid = client.api.create_container(TEST_IMAGE, command=SLEEPER, name="bench-start")["Id"]
    start_url = f"{url}{API}/containers/{cid}/start"

    def through_api() -> None:
        response = http.post(start_url)
        response.raise_for_status()
        assert response.json()["state"] == "running"

    def raw() -> None:
        client.api.start(cid)

    def stopped() -> None:
        client.api.kill(cid)
        client.api.wait(cid)

    api_times, raw_times = [], []
    for i in range(WARMUP + iterations):
        raw_time = timed(raw)
        stopped()
        api_time = timed(through_api)
        stopped()
        if i >= WARMUP:
            raw_times.append(raw_time)
            api_times.append(api_time)
    return api_times, raw_times


def result(
    name: str, api_times: list[float], raw_times: list[float], target: float | None, what: str
) -> dict[str, Any]:
    """One row of the report: medians in ms, ratio baseline/pyedge (>= 1: as fast)."""
    pyedge = median_ms(api_times)
    baseline = median_ms(raw_times)
    if target is None:
        verdict = "no target"
    else:
        met = "met" if pyedge <= target * baseline else "NOT met"
        verdict = f"target pyedge <= {target:g}x baseline (ratio >= {1 / target:.2f}): {met}"
    return {
        "name": name,
        "unit": "ms",
        "pyedge": pyedge,
        "baseline": baseline,
        "ratio": baseline / pyedge,
        "target": None if target is None else 1 / target,
        "what": f"{what}; median of {len(api_times)}; ratio = baseline/pyedge; {verdict}",
    }


@contextmanager
def running_engine() -> Iterator[DockerEngine | None]:
    """A dockerd of the benchmark's own with the busybox image; None if it cannot run here."""
    engine = DockerEngine()
    try:
        try:
            engine.start()
            engine.build_busybox()
        except RuntimeError as exc:
            logger.warning("containers benchmark skipped: %s", exc)
            yield None
            return
        yield engine
    finally:
        engine.remove()


def run(scale: float) -> list[dict[str, Any]]:
    """Container list and start through the API vs raw docker-py; [] when no dockerd runs."""
    from edge_server import create_app

    list_iterations = max(20, int(LIST_ITERATIONS * scale))
    start_iterations = max(5, int(START_ITERATIONS * scale))
    with running_engine() as engine:
        if engine is None:
            return []
        client = engine.client()
        with running_broker() as port, tempfile.TemporaryDirectory() as tmp:
            data = Path(tmp) / "data"
            token = AccountStore(data / "accounts.db").create_token("bench", Role.ADMIN)
            # In-process, beside `pyedge run`: its own data dir (each locks its own).
            app = create_app(
                {
                    "EDGE_MQTT_PORT": port,
                    "EDGE_NODE_ID": "bench",
                    "EDGE_DATA_DIR": Path(tmp) / "in-process",
                    "EDGE_SERVICES": "container-manager",
                    "EDGE_CONTAINER_MANAGER_DOCKER_HOST": engine.url,
                    "EDGE_CONTAINER_MANAGER_RECONCILE_AUTOSTART": False,
                }
            )
            try:
                populate(client, CONTAINERS)
                with serving(engine, data, token) as url, requests.Session() as http:
                    http.headers["Authorization"] = f"Bearer {token}"
                    listed = bench_list(http, url, app, client, list_iterations)
                    started = bench_start(http, url, client, start_iterations)
            finally:
                app.extensions["pyedge"].close()
                client.close()
    over_http = "over HTTP to `pyedge run` (gunicorn, keep-alive; client requests)"
    listed_http, listed_in_process, listed_raw = listed
    return [
        result(
            "containers: list",
            listed_http,
            listed_raw,
            LIST_TARGET,
            f"GET /containers?all=true {over_http}, {CONTAINERS} containers; "
            "baseline client.api.containers(all=True)",
        ),
        result(
            "containers: list in-process",
            listed_in_process,
            listed_raw,
            None,
            "the same GET through Flask's test client, to show the HTTP hop's share",
        ),
        result(
            "containers: start",
            *started,
            START_TARGET,
            f"POST /containers/<id>/start {over_http}, killed untimed in between; "
            "baseline client.api.start(id)",
        ),
    ]
