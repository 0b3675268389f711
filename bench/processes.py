"""What the benchmarks that start real processes share: free ports, waiting for them."""

from __future__ import annotations

import os
import signal
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import requests

HOST = "127.0.0.1"
ROOT = Path(__file__).resolve().parent.parent
# The `pyedge` command of this environment.
PYEDGE = str(Path(sys.executable).parent / "pyedge")


def free_port() -> int:
    """A TCP port free on the loopback now."""
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        port: int = sock.getsockname()[1]
        return port


def wait(check: Callable[[], bool], timeout: float, what: str, every: float = 0.05) -> None:
    """Poll `check` until it is true; RuntimeError naming `what` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise RuntimeError(f"bench: {what} not within {timeout:.0f} s")
        time.sleep(every)


def pyedge_environment(node_id: str, **settings: str) -> dict[str, str]:
    """This environment without any EDGE_* setting, plus the node id and `settings`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("EDGE_")}
    env.update(EDGE_NODE_ID=node_id, **settings)
    # The bench package itself (the bare baseline app) must import in the children.
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    return env


def answers(session: requests.Session, url: str) -> bool:
    """Whether `url` answers 200 now."""
    try:
        return session.get(url, timeout=2).status_code == 200
    except requests.RequestException:
        return False


@contextmanager
def running(args: list[str], env: dict[str, str], log: Path) -> Iterator[subprocess.Popen[bytes]]:
    """A process writing to `log` while the block runs; SIGTERM (then SIGKILL) after it."""
    with log.open("wb") as out:
        process = subprocess.Popen(args, env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        yield process
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def paired(pyedge: list[float], baseline: list[float]) -> dict[str, float]:
    """Rates of alternating rounds: the means' ratio, and the median of each round's.

    Each round's pair ran back to back: their ratio is the least swayed by other load.
    """
    per_round = [p / b for p, b in zip(pyedge, baseline, strict=True)]
    mean_pyedge, mean_baseline = statistics.mean(pyedge), statistics.mean(baseline)
    return {
        "pyedge": mean_pyedge,
        "baseline": mean_baseline,
        "ratio": mean_pyedge / mean_baseline,
        "ratio_median": statistics.median(per_round),
    }
