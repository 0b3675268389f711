"""`GET /hello` served for real: `pyedge run` vs a bare Flask route, both under gunicorn.

Both sides are real processes on the loopback with the same gunicorn worker model (one
gthread worker); wrk (Debian's package) drives each with the same connections, in
alternating rounds so that drift of the machine weighs on both. PyEdge's request carries a
viewer token, as an API client's does: its check is part of the cost.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import requests

from bench.processes import (
    HOST,
    PYEDGE,
    answers,
    free_port,
    paired,
    pyedge_environment,
    running,
    wait,
)
from pyedge.accounts import AccountStore
from pyedge.security import Role

PATH = "/api/custom-service/hello?name=bench"
TARGET = 0.8
# The method: one wrk thread, 8 connections, 8 s a round.
CONNECTIONS = 8
SECONDS = 8
ROUNDS = 3
THREADS = 16


def wrk_rate(url: str, seconds: int, token: str | None = None) -> float:
    """Requests per second wrk reaches on `url`; RuntimeError if any answer was not 2xx."""
    args = ["wrk", "-t1", f"-c{CONNECTIONS}", f"-d{seconds}s", url]
    if token:
        args[1:1] = ["-H", f"Authorization: Bearer {token}"]
    out = subprocess.run(args, capture_output=True, text=True, check=True).stdout
    if "Non-2xx or 3xx responses" in out or "Socket errors" in out:
        raise RuntimeError(f"bench served: wrk saw failed requests:\n{out}")
    match = re.search(r"Requests/sec:\s+([\d.]+)", out)
    if match is None:
        raise RuntimeError(f"bench served: no rate in wrk's output:\n{out}")
    return float(match.group(1))


def run(scale: float) -> dict[str, Any]:
    """Compare `pyedge run`'s /hello with a bare Flask app's under the same gunicorn."""
    if shutil.which("wrk") is None:
        raise RuntimeError("bench served needs wrk (apt-get install wrk; make bench does)")
    seconds = max(2, round(SECONDS * scale))
    rounds = ROUNDS if scale >= 1 else 1
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "data"
        token = AccountStore(data / "accounts.db").create_token("bench", Role.VIEWER)
        edge_port, bare_port, mqtt_port = free_port(), free_port(), free_port()
        edge_args = ["run", "--host", HOST, "--port", str(edge_port)]
        edge_args += ["--mqtt-port", str(mqtt_port), "--data-dir", str(data)]
        edge_env = pyedge_environment(
            "bench-served", EDGE_CUSTOM_SERVICE_HEARTBEAT_AUTOSTART="0", EDGE_LOG_LEVEL="WARNING"
        )
        bare_args = [sys.executable, "-m", "gunicorn", "--worker-class", "gthread"]
        bare_args += ["--workers", "1", "--threads", str(THREADS), "--log-level", "warning"]
        bare_args += ["--bind", f"{HOST}:{bare_port}", "bench.api:bare_app()"]
        edge_url, bare_url = f"http://{HOST}:{edge_port}", f"http://{HOST}:{bare_port}"
        session = requests.Session()
        session.headers["Authorization"] = f"Bearer {token}"
        with (
            running([PYEDGE, *edge_args], edge_env, data.parent / "edge.log"),
            running(bare_args, pyedge_environment("bench-bare"), data.parent / "bare.log"),
        ):
            wait(lambda: answers(session, edge_url + PATH), 60, "pyedge run")
            wait(lambda: answers(session, bare_url + PATH), 30, "the bare gunicorn")
            # Warm both (imports on first use, connection set-up).
            wrk_rate(edge_url + PATH, 1, token)
            wrk_rate(bare_url + PATH, 1)
            bare, edge = [], []
            for _ in range(rounds):
                bare.append(wrk_rate(bare_url + PATH, seconds))
                edge.append(wrk_rate(edge_url + PATH, seconds, token))
    rates = paired(edge, bare)
    per_round = [e / b for e, b in zip(edge, bare, strict=True)]
    return {
        "name": "api: GET /hello served",
        "unit": "req/s",
        **rates,
        "target": TARGET,
        "what": f"wrk -t1 -c{CONNECTIONS} -d{seconds}s x {rounds} alternating rounds; "
        f"`pyedge run` (token) vs a bare Flask route, both gunicorn gthread, 1 worker; "
        f"per-round ratios {', '.join(f'{r:.2f}' for r in per_round)}",
    }
