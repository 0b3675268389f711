"""A request through the edge-server's proxy vs the same request straight to the service.

Both sides are the real commands, as on a device: `pyedge run` (EDGE_ROLE=node, its own
broker) fronts custom-service, which `pyedge serve custom-service` serves in a gunicorn of
its own and announces on the broker. The same GET, with the same token, goes once through
the edge-server's /api/custom-service/... (auth, the signed caller, one more HTTP hop) and
once straight to the service's port, in alternating rounds of the same run: /hello, the
lightest request (where the proxy's own cost weighs most), and /ops, a typical read.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Any

import requests

from bench.processes import PYEDGE, answers, free_port, paired, pyedge_environment, running, wait
from pyedge.accounts import AccountStore
from pyedge.security import Role

REQUESTS = 2000
# More, shorter rounds: a burst of other load on the machine spoils fewer of them.
ROUNDS = 10
WARMUP = 50
PATH = "/api/custom-service/hello?name=bench"
# The lightest request there is (the proxy's cost weighs most), and a typical read: the
# operations with their parameter schemas and sessions.
PATHS = {
    "proxy: GET /hello via node": PATH,
    "proxy: GET /ops via node": "/api/custom-service/ops",
}
TARGET = 0.7


def _per_second(session: requests.Session, url: str, count: int) -> float:
    started = time.perf_counter()
    for _ in range(count):
        response = session.get(url)
        response.raise_for_status()
    return count / (time.perf_counter() - started)


def _compare(session: requests.Session, direct: str, proxied: str, count: int) -> dict[str, Any]:
    """Alternating rounds of the same GET straight to the service and through the proxy."""
    for url in (direct, proxied):
        _per_second(session, url, WARMUP)
    straight, through = [], []
    # Alternating rounds, so that drift of the machine weighs on both sides.
    for _ in range(ROUNDS):
        straight.append(_per_second(session, direct, count // ROUNDS))
        through.append(_per_second(session, proxied, count // ROUNDS))
    return {
        "unit": "req/s",
        **paired(through, straight),
        "target": TARGET,
        "what": f"{count} requests each in {ROUNDS} alternating rounds, keep-alive, gunicorn "
        f"both; baseline straight to `pyedge serve`; target >= {TARGET}",
    }


def run(scale: float) -> list[dict[str, Any]]:
    """Requests per second through the proxy vs straight to the service, for two requests."""
    count = max(ROUNDS * 40, int(REQUESTS * scale))
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "data"
        token = AccountStore(data / "accounts.db").create_token("bench", Role.VIEWER)
        hub_port, service_port, mqtt_port = free_port(), free_port(), free_port()
        hub_env = pyedge_environment(
            "bench-proxy",
            EDGE_LOG_LEVEL="WARNING",
            EDGE_ROLE="node",
            EDGE_SERVICES="device-service",
        )
        hub_args = [PYEDGE, "run", "--host", "127.0.0.1", "--port", str(hub_port)]
        hub_args += ["--mqtt-port", str(mqtt_port), "--data-dir", str(data)]
        service_env = pyedge_environment(
            "bench-proxy",
            EDGE_LOG_LEVEL="WARNING",
            EDGE_MQTT_PORT=str(mqtt_port),
            EDGE_CUSTOM_SERVICE_HEARTBEAT_AUTOSTART="0",
        )
        service_args = [PYEDGE, "serve", "custom-service", "--host", "127.0.0.1"]
        service_args += ["--port", str(service_port), "--data-dir", str(data)]
        hub_url = f"http://127.0.0.1:{hub_port}"
        service_url = f"http://127.0.0.1:{service_port}"
        session = requests.Session()
        session.headers["Authorization"] = f"Bearer {token}"
        results = []
        with running(hub_args, hub_env, Path(tmp) / "hub.log"):
            wait(lambda: answers(session, f"{hub_url}/api/health"), 30, "the edge-server")
            # After the edge-server: its hub key must exist when the service loads it.
            with running(service_args, service_env, Path(tmp) / "service.log"):
                wait(lambda: answers(session, hub_url + PATH), 30, "the proxied service")
                for name, path in PATHS.items():
                    result = _compare(session, service_url + path, hub_url + path, count)
                    results.append({"name": name, **result})
    return results
