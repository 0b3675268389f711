"""The fault suite's counting report: one row per test, as JSON lines; `python -m` prints it."""

from __future__ import annotations

import json
import logging
import os
import sqlite3
import sys
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from tests.device.persistent_subscriber import account

logger = logging.getLogger(__name__)

# Where the rows go: `make faults` prints them at the end, CI keeps the file.
REPORT = Path(os.environ.get("PYEDGE_FAULTS_REPORT", "build/faults/report.jsonl"))
COLUMNS = ("test", "expected", "received", "lost", "duplicates", "out_of_order", "recovery_s")


@dataclass(frozen=True)
class FaultReport:
    """What a fault cost: readings expected, received, lost, duplicated, reordered."""

    test: str
    expected: int
    received: int
    lost: int
    duplicates: int
    out_of_order: int
    recovery_s: float | None
    notes: dict[str, Any] = field(default_factory=dict)


def count(test: str, received: dict[str, list[int]], last: dict[str, int],
          recovery_s: float | None, **notes: Any) -> FaultReport:  # fmt: skip
    """Sum every sensor's accounts of its seqs received against 1..last."""
    totals = {"expected": 0, "received": 0, "lost": 0, "duplicates": 0, "out_of_order": 0}
    for sensor, seq in last.items():
        for key, value in account(received.get(sensor, []), seq).items():
            totals[key] += value
    rounded = None if recovery_s is None else round(recovery_s, 2)
    return FaultReport(test, **totals, recovery_s=rounded, notes=notes)


def record(report: FaultReport, path: Path = REPORT) -> FaultReport:
    """Log the report and append it to the report file."""
    logger.warning("fault report: %s", report)  # in the test's log when it fails
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as out:
        out.write(json.dumps(asdict(report)) + "\n")
    return report


def stored_seqs(data_dir: Path) -> dict[str, int]:
    """Each sensor's last seq as the device-service's database holds it: what was sampled."""
    (db_path,) = data_dir.rglob("device.sqlite3")
    with sqlite3.connect(f"file:{db_path}?mode=ro", uri=True) as db:
        return dict(db.execute("SELECT sensor, seq FROM seq").fetchall())


def integrity(data_dir: Path) -> str:
    """`PRAGMA integrity_check` of the device-service's database ("ok" when sound)."""
    (db_path,) = data_dir.rglob("device.sqlite3")
    with sqlite3.connect(db_path) as db:
        return str(db.execute("PRAGMA integrity_check").fetchone()[0])


def table(rows: Iterable[dict[str, Any]]) -> str:
    """The rows as a Markdown table (as docs/PERFORMANCE.md shows them)."""
    lines = ["| " + " | ".join(COLUMNS) + " | notes |", "|" + "---|" * (len(COLUMNS) + 1)]
    for row in rows:
        notes = ", ".join(f"{k}={v}" for k, v in row.get("notes", {}).items())
        cells = ["-" if row.get(c) is None else str(row[c]) for c in COLUMNS]
        lines.append("| " + " | ".join([*cells, notes]) + " |")
    return "\n".join(lines)


def read(path: Path = REPORT) -> list[dict[str, Any]]:
    """The rows in the report file (none if there is no file)."""
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


if __name__ == "__main__":
    sys.stdout.write(table(read(Path(sys.argv[1]) if len(sys.argv) > 1 else REPORT)) + "\n")
