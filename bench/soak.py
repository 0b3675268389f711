"""Soak: the solo bundle at 50 readings/s with a dashboard stream open, for as long as asked.

A real `pyedge run` (its Mosquitto, gunicorn's arbiter and one gthread worker, every
installed service) with ten simulated sensors sampled every 0.2 s, and one viewer stream
(`GET /api/events` on the sensors' topics) read continuously. Every `--every` seconds the
RSS, PSS (smaps_rollup), open file descriptors and CPU time of each process of the bundle
are sampled. At the end, after the warm-up: a least-squares slope of RSS and PSS per process
and in total, in MiB and in % per hour (of the mean after the warm-up), the file
descriptors at the start and the end, and the readings the stream received against what
the sensors produced (their `seq`) and against the nominal rate.

    python -m bench soak --duration 3600 --out build/soak/soak.json    (or `make soak`)

writes the samples to soak.jsonl as they come, and soak.json and soak.csv at the end.
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import os
import selectors
import socket
import statistics
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import requests

from bench.processes import HOST, PYEDGE, free_port, pyedge_environment, running, wait
from bench.sse import Node, abort, open_stream
from pyedge.accounts import AccountStore
from pyedge.security import Role

logger = logging.getLogger(__name__)

SENSORS = 10
INTERVAL_S = 0.2
RATE = SENSORS / INTERVAL_S
TOPIC = "pyedge/+/device-service/sensors/#"
DEFAULT_DURATION_S = 600.0
DEFAULT_EVERY_S = 10.0
# The warm-up left out of the slopes: 10 % of the run, at least 5 min when the run allows.
WARMUP_FRACTION = 0.1
WARMUP_FLOOR_S = 300.0
TARGET_PCT_PER_H = 5.0
PAGE = os.sysconf("SC_PAGE_SIZE")
TICKS = os.sysconf("SC_CLK_TCK")
MIB = 1024 * 1024
TIMEOUT_S = 60.0
PROCESSES = ("arbiter", "worker", "mosquitto")


def sensors_toml() -> str:
    """The sensors file: SENSORS simulated sensors whose readings add up to RATE per second."""
    tables = []
    for i in range(SENSORS):
        tables.append(
            f'[sensors.soak{i}]\ndriver = "simulated"\ninterval = {INTERVAL_S}\nunit = "°C"\n'
            f'device_class = "temperature"\noptions = {{ seed = {i}, minimum = 15.0, '
            "maximum = 25.0 }\n"
        )
    return "\n".join(tables)


def bundle(arbiter: int) -> dict[str, int]:
    """The bundle's pids by role: the arbiter, its worker and its Mosquitto (its children)."""
    pids = {"arbiter": arbiter}
    try:
        children = Path(f"/proc/{arbiter}/task/{arbiter}/children").read_text().split()
    except OSError:
        return pids
    for child in children:
        try:
            cmdline = Path(f"/proc/{child}/cmdline").read_bytes()
        except OSError:
            continue
        pids["mosquitto" if b"mosquitto" in cmdline else "worker"] = int(child)
    return pids


def measure(pid: int) -> dict[str, float] | None:
    """RSS, PSS, USS (MiB), fds, CPU seconds and threads of one process; None once gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
        rollup = Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines()
        fds = len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return None
    # After the ")": state is field 3 of stat(5), so utime (14) is index 11 here.
    kib = {line.split(":")[0]: int(line.split()[1]) for line in rollup[1:] if "kB" in line}
    return {
        "rss_mib": int(fields[21]) * PAGE / MIB,
        "pss_mib": kib["Pss"] / 1024,
        # Private pages only (USS): unlike PSS, it does not move when other processes that
        # share a library with this one start or exit.
        "uss_mib": (kib["Private_Clean"] + kib["Private_Dirty"]) / 1024,
        "fds": fds,
        "cpu_s": (int(fields[11]) + int(fields[12])) / TICKS,
        "threads": int(fields[17]),
    }


@dataclass
class SensorCount:
    """What the stream received of one sensor: count, first and last seq, gaps."""

    received: int = 0
    first: int | None = None
    last: int | None = None
    gaps: int = 0
    missing: int = 0
    repeated: int = 0

    def add(self, seq: int) -> None:
        """Count one reading; a seq past the next one is a gap of the ones between."""
        if self.last is not None and seq <= self.last:
            self.repeated += 1
            return
        if self.last is not None and seq > self.last + 1:
            self.gaps += 1
            self.missing += seq - self.last - 1
        if self.first is None:
            self.first = seq
        self.last = seq
        self.received += 1


@dataclass
class StreamReader:
    """The dashboard's stream, read by one thread; reopened (and counted) if it ends."""

    node: Node
    sensors: dict[str, SensorCount] = field(default_factory=dict)
    reopened: int = 0
    opened_at: float = 0.0
    closed_at: float = 0.0
    _stop: threading.Event = field(default_factory=threading.Event)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def run(self) -> None:
        """Read until stopped (the thread's body)."""
        self.opened_at = time.monotonic()
        first = True
        while not self._stop.is_set():
            if not first:
                self.reopened += 1
                logger.warning("soak: the event stream ended; reopening it")
            first = False
            try:
                sock, rest = open_stream(self.node, TOPIC)
            except (OSError, RuntimeError) as exc:
                logger.warning("soak: cannot open the event stream: %s", exc)
                self._stop.wait(1)
                continue
            try:
                self._read(sock, rest)
            finally:
                abort(sock)
        self.closed_at = time.monotonic()

    def _read(self, sock: socket.socket, rest: bytes) -> None:
        sock.setblocking(False)
        with selectors.DefaultSelector() as selector:
            selector.register(sock, selectors.EVENT_READ)
            while not self._stop.is_set():
                if not selector.select(0.5):
                    continue
                try:
                    chunk = sock.recv(65536)
                except BlockingIOError:
                    continue
                except OSError:
                    return
                if not chunk:
                    return
                lines = (rest + chunk).split(b"\n")
                rest = lines.pop()
                for line in lines:
                    if line.startswith(b"data: "):
                        self._count(json.loads(line[6:]))

    def _count(self, event: dict[str, Any]) -> None:
        payload = event.get("payload")
        # Readings are retained and relayed as published (retained: true): a (re)opened
        # stream first gets each sensor's last reading again, which add() counts once.
        if not isinstance(payload, dict) or "seq" not in payload:
            return
        name = str(event.get("topic", "")).rpartition("/")[2]
        with self._lock:
            self.sensors.setdefault(name, SensorCount()).add(int(payload["seq"]))

    def stop(self) -> None:
        """End the reading loop."""
        self._stop.set()

    def summary(self) -> dict[str, Any]:
        """Readings received vs produced (by seq) and vs the nominal rate."""
        with self._lock:
            counts = list(self.sensors.values())
        received = sum(c.received for c in counts)
        produced = sum(
            c.last - c.first + 1 for c in counts if c.first is not None and c.last is not None
        )
        seconds = (self.closed_at or time.monotonic()) - self.opened_at
        return {
            "sensors": len(counts),
            "received": received,
            "produced_by_seq": produced,
            "missing_by_seq": sum(c.missing for c in counts),
            "gaps": sum(c.gaps for c in counts),
            "repeated": sum(c.repeated for c in counts),
            "nominal": round(RATE * seconds),
            "stream_seconds": round(seconds, 1),
            "reopened": self.reopened,
        }


@contextmanager
def running_bundle(tmp: Path, services: str | None) -> Iterator[Node]:
    """`pyedge run` on free ports with the soak's sensors; a viewer token for its stream."""
    data_dir = tmp / "data"
    token = AccountStore(data_dir / "accounts.db").create_token("soak", Role.VIEWER)
    sensors = tmp / "sensors.toml"
    sensors.write_text(sensors_toml(), encoding="utf-8")
    http_port, mqtt_port = free_port(), free_port()
    node_id = f"soak-{uuid.uuid4().hex[:6]}"
    settings = {"EDGE_SENSORS": str(sensors), "EDGE_LOG_LEVEL": "WARNING"}
    if services:
        settings["EDGE_SERVICES"] = services
    env = pyedge_environment(node_id, **settings)
    args = [PYEDGE, "run", "--host", HOST, "--port", str(http_port)]
    args += ["--mqtt-port", str(mqtt_port), "--data-dir", str(data_dir)]
    log = tmp / "node.log"
    with running(args, env, log) as process:
        node = Node(process, http_port, mqtt_port, node_id, data_dir, log, token)
        session = requests.Session()
        wait(lambda: process.poll() is None and _ready(session, node.url), TIMEOUT_S, "pyedge")
        yield node


def _ready(session: requests.Session, url: str) -> bool:
    """Whether the device-service reports ok (the whole may be degraded: no Docker engine)."""
    try:
        health = session.get(f"{url}/api/health", timeout=2).json()
    except (requests.RequestException, ValueError):
        return False
    return bool(health.get("services", {}).get("device-service", {}).get("status") == "ok")


def slope(points: list[tuple[float, float]]) -> dict[str, float] | None:
    """Least-squares slope of (hours, MiB): MiB/h and % of the mean per hour; None if < 3."""
    if len(points) < 3 or len({t for t, _ in points}) < 2:
        return None
    hours, values = zip(*points, strict=True)
    fit = statistics.linear_regression(hours, values)
    mean = statistics.fmean(values)
    return {
        "mib_per_h": fit.slope,
        "pct_per_h": 100 * fit.slope / mean if mean else 0.0,
        "mean_mib": mean,
        "first_mib": values[0],
        "last_mib": values[-1],
    }


def analyse(samples: list[dict[str, Any]], warmup_s: float) -> dict[str, Any]:
    """Slopes after the warm-up per process and in total, fds start/end, worker restarts."""
    after = [s for s in samples if s["t"] >= warmup_s]
    result: dict[str, Any] = {"warmup_s": warmup_s, "samples_after_warmup": len(after)}
    for metric in ("rss_mib", "pss_mib", "uss_mib"):
        per: dict[str, Any] = {}
        for name in (*PROCESSES, "total"):
            points = [(s["t"] / 3600, s[name][metric]) for s in after if s.get(name)]
            per[name] = slope(points)
        result[metric] = per
    for count in ("fds", "threads"):
        result[count] = _start_end(samples, after, count)
    workers = {s["pids"].get("worker") for s in samples} - {None}
    result["worker_pids"] = sorted(workers)
    result["data_mib"] = {
        "start": samples[0].get("data_mib") if samples else None,
        "end": next((s["data_mib"] for s in reversed(samples) if "data_mib" in s), None),
    }
    result["cpu_s"] = {
        name: next((s[name]["cpu_s"] for s in reversed(samples) if s.get(name)), None)
        for name in PROCESSES
    }
    return result


def _start_end(
    samples: list[dict[str, Any]], after: list[dict[str, Any]], key: str
) -> dict[str, Any]:
    """Per process: `key` at the first sample, the first after the warm-up, and the last."""
    return {
        name: {
            "start": next((s[name][key] for s in samples if s.get(name)), None),
            "after_warmup": next((s[name][key] for s in after if s.get(name)), None),
            "end": next((s[name][key] for s in reversed(samples) if s.get(name)), None),
        }
        for name in PROCESSES
    }


def sample(arbiter: int, t: float) -> dict[str, Any]:
    """One sample of every process of the bundle, and their total."""
    pids = bundle(arbiter)
    row: dict[str, Any] = {"t": round(t, 1), "pids": pids}
    total = {"rss_mib": 0.0, "pss_mib": 0.0, "uss_mib": 0.0, "fds": 0, "cpu_s": 0.0, "threads": 0}
    for name in PROCESSES:
        measured = measure(pids[name]) if name in pids else None
        row[name] = measured
        for key, value in (measured or {}).items():
            total[key] += value
    row["total"] = total
    return row


def disk_mib(directory: Path) -> float:
    """What the files under `directory` take on disk (the outbox, history and broker data)."""
    size = 0
    for path in directory.rglob("*"):
        try:
            size += path.stat().st_blocks * 512 if path.is_file() else 0
        except OSError:
            continue  # removed meanwhile (SQLite's journal files come and go)
    return size / MIB


def soak(
    duration_s: float,
    every_s: float,
    warmup_s: float,
    services: str | None,
    progress: Path | None = None,
) -> dict[str, Any]:
    """Run the bundle for `duration_s`, sampling every `every_s`; the samples and the analysis.

    Each sample is also appended to `progress` (JSON lines), so a run cut short keeps them.
    """
    samples: list[dict[str, Any]] = []
    if progress is not None:
        progress.parent.mkdir(parents=True, exist_ok=True)
        progress.write_text("", encoding="utf-8")
    with (
        tempfile.TemporaryDirectory(prefix="pyedge-soak-") as tmp,
        running_bundle(Path(tmp), services) as node,
    ):
        reader = StreamReader(node)
        thread = threading.Thread(target=reader.run, name="soak-stream", daemon=True)
        thread.start()
        start = time.monotonic()
        next_log = 0.0
        while (now := time.monotonic() - start) < duration_s:
            if node.process.poll() is not None:
                raise RuntimeError(f"soak: pyedge run exited ({node.process.returncode})")
            row = sample(node.process.pid, now)
            row["data_mib"] = round(disk_mib(node.data_dir), 2)
            samples.append(row)
            if progress is not None:
                with progress.open("a", encoding="utf-8") as file:
                    file.write(json.dumps(row) + "\n")
            if now >= next_log:
                next_log += max(60.0, every_s)
                received = reader.summary()["received"]
                logger.info(
                    "soak: %5.0f s  total RSS %.1f MiB PSS %.1f MiB fds %d  readings %d",
                    now, row["total"]["rss_mib"], row["total"]["pss_mib"],
                    row["total"]["fds"], received,
                )  # fmt: skip
            time.sleep(max(0.0, every_s - (time.monotonic() - start - now)))
        samples.append(sample(node.process.pid, time.monotonic() - start))
        reader.stop()
        thread.join(5)
        errors = [
            line
            for line in node.log.read_text(errors="replace").splitlines()
            if " ERROR " in line or "Traceback" in line
        ]
    return {
        "duration_s": duration_s,
        "every_s": every_s,
        "rate": RATE,
        "analysis": analyse(samples, warmup_s),
        "stream": reader.summary(),
        "log_errors": errors[-20:],
        "samples": samples,
    }


def write(result: dict[str, Any], out: Path) -> None:
    """The whole result as JSON at `out`, and the samples as CSV beside it."""
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1), encoding="utf-8")
    with out.with_suffix(".csv").open("w", newline="", encoding="utf-8") as file:
        writer = csv.writer(file)
        columns = [
            (n, k) for n in (*PROCESSES, "total") for k in ("rss_mib", "pss_mib", "uss_mib", "fds")
        ]
        writer.writerow(["t_s", *(f"{n}_{k}" for n, k in columns)])
        for row in result["samples"]:
            values = [(row[n] or {}).get(k, "") for n, k in columns]
            writer.writerow([row["t"], *(round(v, 3) if v != "" else v for v in values)])


def report(result: dict[str, Any]) -> str:
    """A short human summary of the result."""
    analysis, stream = result["analysis"], result["stream"]
    lines = [
        f"soak: {result['duration_s'] / 60:.0f} min at {result['rate']:.0f} readings/s, "
        f"warm-up {analysis['warmup_s'] / 60:.1f} min left out, "
        f"{analysis['samples_after_warmup']} samples after it",
    ]
    for metric in ("rss_mib", "pss_mib", "uss_mib"):
        for name, fit in analysis[metric].items():
            if fit is None:
                lines.append(f"  {metric[:3].upper()} {name:<9} (too few samples)")
                continue
            verdict = "met" if fit["pct_per_h"] <= TARGET_PCT_PER_H else "MISSED"
            lines.append(
                f"  {metric[:3].upper()} {name:<9} {fit['first_mib']:7.1f} -> "
                f"{fit['last_mib']:7.1f} MiB  slope {fit['mib_per_h']:+7.2f} MiB/h "
                f"{fit['pct_per_h']:+6.2f} %/h  (target <= {TARGET_PCT_PER_H} %/h: {verdict})"
            )
    for count in ("fds", "threads"):
        for name, seen in analysis[count].items():
            lines.append(
                f"  {count:<7} {name:<9} start {seen['start']}  after warm-up "
                f"{seen['after_warmup']}  end {seen['end']}"
            )
    lines.append(f"  CPU seconds {analysis['cpu_s']}; worker pids {analysis['worker_pids']}")
    data = analysis.get("data_mib") or {}
    lines.append(f"  data dir on disk: {data.get('start')} -> {data.get('end')} MiB")
    lines.append(
        f"  stream: received {stream['received']} readings of {stream['produced_by_seq']} "
        f"produced (by seq; nominal {stream['nominal']}), missing {stream['missing_by_seq']} "
        f"in {stream['gaps']} gaps, repeated {stream['repeated']}, "
        f"reopened {stream['reopened']}x"
    )
    lines.append(f"  errors in the node's log: {len(result['log_errors'])}")
    return "\n".join(lines)


def default_warmup(duration_s: float) -> float:
    """10 % of the run, but at least 5 min when that leaves three quarters of it."""
    return max(WARMUP_FRACTION * duration_s, min(WARMUP_FLOOR_S, duration_s / 4))


def main(argv: list[str] | None = None) -> None:
    """Parse the arguments, soak, write the samples and print the summary."""
    parser = argparse.ArgumentParser(prog="python -m bench.soak", description=__doc__)
    parser.add_argument("--duration", type=float, default=DEFAULT_DURATION_S, help="seconds")
    parser.add_argument("--every", type=float, default=DEFAULT_EVERY_S, help="sample period")
    parser.add_argument("--warmup", type=float, help="seconds left out (default: 10 %%/5 min)")
    parser.add_argument("--services", help="EDGE_SERVICES (default: every installed service)")
    parser.add_argument("--out", type=Path, default=Path("build/soak/soak.json"))
    args = parser.parse_args(argv)
    warmup = default_warmup(args.duration) if args.warmup is None else args.warmup
    result = soak(args.duration, args.every, warmup, args.services, args.out.with_suffix(".jsonl"))
    write(result, args.out)
    print(report(result))  # noqa: T201  (the CLI's output)
    print(f"samples: {args.out}, {args.out.with_suffix('.csv')}")  # noqa: T201


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    main()
