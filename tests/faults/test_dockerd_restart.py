"""dockerd stopped and started again, again and again, under a running container-manager."""

from __future__ import annotations

import gc
import os
import threading
import time

import docker
from flask.testing import FlaskClient

from tests.containers.conftest import API, LiveServer, wait_for
from tests.docker_engine import DockerEngine
from tests.faults.report import FaultReport, record

CYCLES = 8
CALLS = ("/containers", "/images", "/system")
# Sockets the engine clients hold at a given moment (keep-alive connections in their
# pools, the last failed connect kept by its exception): this many, more or less, per
# cycle; 10 cycles showed no growth. A leak is one more per cycle, 8 and more here.
SLACK = 4


def open_fds() -> int:
    """File descriptors this process holds, once the garbage it could close is collected.

    Earlier tests of the session leave sockets in reference cycles (closed apps, clients),
    which close whenever the collector runs: counted as held, they looked like a leak.
    """
    gc.collect()
    return len(os.listdir("/proc/self/fd"))


def tasks() -> int:
    """Threads of this process as the kernel counts them (Python's and native ones)."""
    return len(os.listdir("/proc/self/task"))


class Cycles:
    """Stop the engine, call the API, start it again, wait for recovery; counts it all."""

    def __init__(self, client: FlaskClient, engine: DockerEngine) -> None:
        self.client = client
        self.engine = engine
        self.calls = self.answered = 0
        self.slowest = self.recovery = 0.0

    def run(self) -> None:
        """One stop, the calls (each must be a 503 with the reason), one start."""
        self.engine.stop()
        for path in CALLS:
            self.calls += 1
            started = time.monotonic()
            response = self.client.get(f"{API}{path}")
            self.slowest = max(self.slowest, time.monotonic() - started)
            message = (response.json or {}).get("message", "")
            if response.status_code == 503 and message.startswith("Docker engine unreachable"):
                self.answered += 1
        self.engine.start()
        started = time.monotonic()
        wait_for(lambda: self.client.get(f"{API}/containers").status_code == 200, 30, "back")
        wait_for(lambda: self.client.get("/api/health").status_code == 200, 30, "healthy")
        self.recovery = max(self.recovery, time.monotonic() - started)


def test_dockerd_restarts_answer_503_then_recover_without_leaks(
    cm_client: FlaskClient,
    cm_server: LiveServer,
    docker_engine: DockerEngine,
    docker_client: docker.DockerClient,
) -> None:
    assert cm_server.session.get(cm_server.api("/containers"), timeout=10).status_code == 200
    cycles = Cycles(cm_client, docker_engine)
    cycles.run()  # the first one fills the pools; a leak is what grows after it
    before = (threading.active_count(), tasks(), open_fds())
    for _ in range(CYCLES):
        cycles.run()
    # Threads that serve a call end with it; give the last ones a moment to go.
    wait_for(lambda: threading.active_count() <= before[0], 10, "no extra threads")
    after = (threading.active_count(), tasks(), open_fds())
    report = record(
        FaultReport(
            f"dockerd stopped/started x{CYCLES + 1}",
            expected=cycles.calls,
            received=cycles.answered,
            lost=cycles.calls - cycles.answered,
            duplicates=0,
            out_of_order=0,
            recovery_s=round(cycles.recovery, 2),
            notes={
                "slowest_503_s": round(cycles.slowest, 2),
                "threads": f"{before[0]}->{after[0]}",
                "tasks": f"{before[1]}->{after[1]}",
                "fds": f"{before[2]}->{after[2]}",
            },
        )
    )
    assert report.lost == 0, report  # every call answered 503 with the reason
    assert cycles.slowest < 5, report
    assert cycles.recovery < 30, report
    assert after[1] <= before[1], report
    assert after[2] <= before[2] + SLACK, report
