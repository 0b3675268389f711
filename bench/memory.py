"""Solo mode's memory: `pyedge run` vs a bare Flask app under the same gunicorn.

Both run as real processes: `pyedge run` (its gunicorn arbiter, its one worker and its
Mosquitto) with every installed service, the container-manager on a dockerd of the
benchmark's own when one can run here; the baseline is a Flask app with the same /hello
route under the same gunicorn worker model (one gthread worker, 16 threads). Both get
the same warm-up (sequential and concurrent GET /hello, so that the worker's threads
run; PyEdge's with a viewer token, plus its OpenAPI document and health), then the memory
of every process in each tree is read.

The figure is each tree's PSS counted as if it ran alone: a page shared inside the tree
(the arbiter's and the worker's copy-on-write pages, libraries) is split between its
processes, a page it shares with processes outside it (another Python's libpython) counts
whole. smaps_rollup's PSS would split those with whatever else runs on the machine, and
vary with it. It needs the pages' frame numbers (/proc/PID/pagemap, root only); elsewhere
it falls back to smaps_rollup's PSS and says so.
"""

from __future__ import annotations

import compileall
import os
import struct
import sys
import tempfile
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import requests

from bench.containers import running_engine
from bench.processes import (
    HOST,
    PYEDGE,
    ROOT,
    answers,
    free_port,
    pyedge_environment,
    running,
    wait,
)
from pyedge.accounts import AccountStore
from pyedge.security import Role

PATH = "/api/custom-service/hello?name=bench"
TARGET_MIB = 70.0
THREADS = 16
# Warm-up: requests one after another, then THREADS clients at once, each this many.
SEQUENTIAL = 50
CONCURRENT = 25
# PyEdge's packages, whose bytecode is cached before the run as an install caches it.
PACKAGES = ("pyedge", "edge_server", "custom_service", "device_service", "container_manager")
PAGE = 4096
PRESENT = 1 << 63
PFN_MASK = (1 << 55) - 1
# The baseline's module, written where its gunicorn finds it: it imports Flask alone.
BARE_APP = """
from flask import Flask, request

app = Flask("bare")


@app.get("/api/custom-service/hello")
def hello():
    return {"message": f"Hello, {request.args.get('name', 'world')}!", "node": "bench"}
"""


def process_tree(pid: int) -> list[int]:
    """`pid` and its descendants, parents first."""
    try:
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    except OSError:
        return [pid]
    return [pid, *(p for child in children for p in process_tree(int(child)))]


def _frames(pid: int) -> set[int]:
    """The physical frames of every present page `pid` maps (empty without root)."""
    found: set[int] = set()
    with open(f"/proc/{pid}/pagemap", "rb") as pagemap:
        for line in Path(f"/proc/{pid}/maps").read_text().splitlines():
            fields = line.split()
            if len(fields) > 5 and fields[5] == "[vsyscall]":
                continue
            start, end = (int(x, 16) for x in fields[0].split("-"))
            pagemap.seek(start // PAGE * 8)
            raw = pagemap.read((end - start) // PAGE * 8)
            for (entry,) in struct.iter_unpack("<Q", raw):
                if entry & PRESENT and entry & PFN_MASK:
                    found.add(entry & PFN_MASK)
    return found


def _smaps_pss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
        if line.startswith("Pss:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"bench memory: no Pss in /proc/{pid}/smaps_rollup")


def tree_pss_mib(pids: list[int]) -> tuple[dict[int, float], str]:
    """Each process's PSS in MiB within the tree `pids` alone, and how it was counted."""
    frames = {pid: _frames(pid) for pid in pids}
    if not any(frames.values()):  # not root: the kernel hides frame numbers
        return {pid: _smaps_pss_mib(pid) for pid in pids}, "smaps_rollup PSS"
    users: Counter[int] = Counter()
    for mapped in frames.values():
        users.update(mapped)
    pss = {pid: sum(1 / users[f] for f in mapped) * PAGE / 2**20 for pid, mapped in frames.items()}
    return pss, "PSS within the tree"


def _part(pid: int, root: int) -> str:
    """A process's part: the arbiter (the tree's root), Mosquitto or the worker."""
    if pid == root:
        return "arbiter"
    command = Path(f"/proc/{pid}/cmdline").read_bytes()
    return "mosquitto" if b"mosquitto" in command.split(b"\0")[0] else "worker"


def cache_bytecode() -> None:
    """Compile PyEdge's modules, as pip does for an install (and a second run would).

    Run from a checkout under PYTHONDONTWRITEBYTECODE, each start would compile them from
    source, whose leftovers cost the worker ~0.5 MiB; the libraries' are cached already.
    """
    for package in PACKAGES:
        compileall.compile_dir(ROOT / package, quiet=1)


def warm_up(url: str, token: str | None, extra: tuple[str, ...] = ()) -> None:
    """The same requests for both: sequential, THREADS clients at once, then `extra` once."""

    def client(count: int, paths: tuple[str, ...] = (PATH,)) -> None:
        with requests.Session() as session:
            if token:
                session.headers["Authorization"] = f"Bearer {token}"
            for _ in range(count):
                for path in paths:
                    answer = session.get(url + path, timeout=30)
                    # /api/health answers 503 when a service is degraded (no dockerd).
                    ok = (200, 503) if path == "/api/health" else (200,)
                    if answer.status_code not in ok:
                        raise RuntimeError(f"bench memory: {url}{path}: {answer.status_code}")

    client(SEQUENTIAL)
    with ThreadPoolExecutor(THREADS) as pool:
        list(pool.map(client, [CONCURRENT] * THREADS))
    client(1, extra)


def measure(pid: int) -> tuple[dict[str, float], str]:
    """MiB per part of the tree under `pid`: the arbiter, its worker(s), Mosquitto."""
    time.sleep(1)  # what the requests set going (a log line, a publish) settles
    pids = process_tree(pid)
    pss, method = tree_pss_mib(pids)
    parts: dict[str, float] = {}
    for each in pids:
        part = _part(each, pid)
        parts[part] = parts.get(part, 0.0) + pss[each]
    return parts, method


def run() -> dict[str, Any]:
    """Compare the footprints; the ratio is baseline / pyedge (higher is leaner)."""
    cache_bytecode()
    with tempfile.TemporaryDirectory() as tmp, running_engine() as engine:
        root = Path(tmp)
        data = root / "data"
        token = AccountStore(data / "accounts.db").create_token("bench", Role.VIEWER)
        (root / "bare_memory.py").write_text(BARE_APP)
        edge_port, bare_port = free_port(), free_port()
        edge_args = [PYEDGE, "run", "--host", HOST, "--port", str(edge_port)]
        edge_args += ["--mqtt-port", str(free_port()), "--data-dir", str(data)]
        settings = {"EDGE_LOG_LEVEL": "WARNING"}
        if engine is not None:
            settings["DOCKER_HOST"] = engine.url
        bare_args = [sys.executable, "-m", "gunicorn", "--worker-class", "gthread"]
        bare_args += ["--workers", "1", "--threads", str(THREADS), "--log-level", "warning"]
        bare_args += ["--bind", f"{HOST}:{bare_port}", "--pythonpath", tmp, "bare_memory:app"]
        edge_url, bare_url = f"http://{HOST}:{edge_port}", f"http://{HOST}:{bare_port}"
        session = requests.Session()
        session.headers["Authorization"] = f"Bearer {token}"
        with running(
            edge_args, pyedge_environment(f"bench-memory-{os.getpid()}", **settings), root / "e.log"
        ) as edge:
            wait(lambda: answers(session, edge_url + PATH), 60, "pyedge run")
            warm_up(edge_url, token, ("/api/openapi.json", "/api/health"))
            parts, method = measure(edge.pid)
        with running(bare_args, pyedge_environment("bench-bare"), root / "bare.log") as bare:
            wait(lambda: answers(session, bare_url + PATH), 30, "the bare gunicorn")
            warm_up(bare_url, None)
            bare_parts, _ = measure(bare.pid)
    pyedge, baseline = sum(parts.values()), sum(bare_parts.values())
    shown = " + ".join(f"{name} {mib:.1f}" for name, mib in parts.items())
    engine_note = "container-manager on a dockerd" if engine else "no dockerd here"
    return {
        "name": "memory: solo mode PSS",
        "unit": "MiB",
        "pyedge": pyedge,
        "baseline": baseline,
        "ratio": baseline / pyedge,
        # The ratio at which PyEdge is at its target: the verdict is pyedge <= TARGET_MIB.
        "target": baseline / TARGET_MIB,
        "parts": parts,
        "baseline_parts": bare_parts,
        "what": f"`pyedge run` ({shown}; {engine_note}) vs a bare Flask app, both gunicorn "
        f"gthread 1 worker, after the same requests; {method}; target <= {TARGET_MIB:.0f} MiB",
    }
