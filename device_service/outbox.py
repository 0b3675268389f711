"""The durable outbox: every reading is committed here before it is published.

One SQLite file (WAL) in the service's data dir holds the outbox, the per-sensor sequence
numbers and the counters, so that a reading, its `seq` and the counters change in one
transaction. A row leaves only when the broker has acknowledged its PUBLISH.
"""

from __future__ import annotations

import json
import logging
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pyedge import PyEdgeError
from pyedge.sqlite import transaction

logger = logging.getLogger(__name__)

SCHEMA = """
CREATE TABLE IF NOT EXISTS outbox (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    topic TEXT NOT NULL,
    payload BLOB NOT NULL,
    created REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS seq (sensor TEXT PRIMARY KEY, seq INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS counters (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS history (
    sensor TEXT NOT NULL,
    ts REAL NOT NULL,
    body TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS history_sensor_ts ON history (sensor, ts);
CREATE TABLE IF NOT EXISTS state (key TEXT PRIMARY KEY, value TEXT NOT NULL);
"""


class OutboxError(PyEdgeError):
    """The outbox could not store a reading (disk full, I/O error)."""


@dataclass(frozen=True)
class Row:
    """One reading waiting for the broker."""

    id: int
    topic: str
    payload: bytes


@dataclass(frozen=True)
class Reading:
    """A reading to store: the sensor, its topic, its body (seq is added here), its time."""

    sensor: str
    topic: str
    body: dict[str, Any]
    epoch: float


class Outbox:
    """Readings waiting for the broker's acknowledgement, oldest first, bounded."""

    def __init__(
        self,
        path: Path,
        *,
        max_rows: int,
        max_age: float,
        policy: str = "drop_oldest",
        synchronous: str = "FULL",
        clock: Callable[[], float] = time.time,
    ) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self.max_rows = max_rows
        self.max_age = max_age
        self.policy = policy
        self._clock = clock
        self._lock = threading.Lock()
        # One connection shared by the sampling, forwarding and API threads, under a lock.
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        # FULL: a committed reading survives a power cut too, not only a crash (a Pi's
        # usual way to stop); commits are batched per sampling tick to pay for it.
        self.synchronous = synchronous
        self._db.execute(f"PRAGMA synchronous={synchronous}")
        self._db.executescript(SCHEMA)
        self._depth = self._scalar("SELECT COUNT(*) FROM outbox")

    def append(self, readings: Sequence[Reading]) -> list[int]:
        """Give each reading its next `seq` and store it, all in one transaction.

        Returns the seqs. Raises OutboxError when the disk refuses the write; then nothing
        of this batch is stored and no seq is used up.
        """
        seqs: list[int] = []
        with self._session(write=True):
            for reading in readings:
                seq = self._next_seq(reading.sensor)
                body = {**reading.body, "seq": seq}
                payload = json.dumps(body, separators=(",", ":"), allow_nan=False).encode()
                if self._make_room():
                    self._db.execute(
                        "INSERT INTO outbox (topic, payload, created) VALUES (?, ?, ?)",
                        (reading.topic, payload, reading.epoch),
                    )
                    self._depth += 1
                self._db.execute(
                    "INSERT INTO history (sensor, ts, body) VALUES (?, ?, ?)",
                    (reading.sensor, reading.epoch, payload.decode()),
                )
                seqs.append(seq)
        return seqs

    def peek(self, limit: int, after_id: int) -> list[Row]:
        """Up to `limit` rows after `after_id`, oldest first."""
        with self._session():
            rows = self._db.execute(
                "SELECT id, topic, payload FROM outbox WHERE id > ? ORDER BY id LIMIT ?",
                (after_id, limit),
            ).fetchall()
        return [Row(row_id, topic, bytes(payload)) for row_id, topic, payload in rows]

    def ack(self, ids: Iterable[int]) -> None:
        """Remove rows the broker has acknowledged, and count them as drained.

        This commit skips the disk flush: losing it in a power cut only sends those
        readings again (a QoS 1 duplicate, which the contract allows), never loses one.
        """
        ids = list(ids)
        if not ids:
            return
        with self._session(write=True, durable=False):
            removed = 0
            for chunk in _chunks(ids, 500):
                marks = ",".join("?" * len(chunk))
                removed += self._db.execute(
                    f"DELETE FROM outbox WHERE id IN ({marks})", chunk
                ).rowcount
            self._count("drained", removed)
            self._depth -= removed

    def expire(self) -> int:
        """Drop readings older than max_age (counted); returns how many."""
        with self._session(write=True):
            removed = self._db.execute(
                "DELETE FROM outbox WHERE created < ?", (self._clock() - self.max_age,)
            ).rowcount
            self._count("dropped", removed)
            self._depth -= removed
        if removed:
            logger.warning("outbox: dropped %d readings older than %.0f s", removed, self.max_age)
        return removed

    def stats(self) -> dict[str, Any]:
        """Depth, age of the oldest reading, and the drained and dropped counts."""
        with self._session():
            oldest = self._scalar("SELECT MIN(created) FROM outbox")
            counters = dict(self._db.execute("SELECT name, value FROM counters").fetchall())
            return {
                "depth": self._depth,
                "oldest_age": round(self._clock() - oldest, 3) if oldest is not None else None,
                "drained": counters.get("drained", 0),
                "dropped": counters.get("dropped", 0),
                "max_rows": self.max_rows,
                "policy": self.policy,
            }

    def sampled(self) -> dict[str, int]:
        """Each sensor's last `seq`: how many of its readings were ever stored."""
        with self._session():
            return dict(self._db.execute("SELECT sensor, seq FROM seq").fetchall())

    def history(
        self, sensor: str, since: float, until: float, limit: int, keys: Sequence[str]
    ) -> tuple[list[dict[str, Any]], bool]:
        """A sensor's readings in [since, until], oldest first, as at most `limit` points.

        When there are more, SQLite averages each quantity in `limit` equal time buckets
        (a boolean averages to the fraction of readings that were true); returns the
        points and whether they were downsampled.
        """
        where = "FROM history WHERE sensor = ? AND ts BETWEEN ? AND ?"
        with self._session():
            count = self._db.execute(f"SELECT COUNT(*) {where}", (sensor, since, until))
            if count.fetchone()[0] <= limit:
                rows = self._db.execute(
                    f"SELECT body {where} ORDER BY ts", (sensor, since, until)
                ).fetchall()
                return [_point(json.loads(body), keys) for (body,) in rows], False
            width = (until - since) / limit
            averages = ", ".join(f"AVG(json_extract(body, '$.{_key(k)}'))" for k in keys)
            buckets = self._db.execute(
                f"SELECT CAST((ts - ?) / ? AS INTEGER) AS bucket, COUNT(*), {averages} "
                f"{where} GROUP BY bucket ORDER BY bucket",
                (since, width, sensor, since, until),
            ).fetchall()
        points = []
        for bucket, count_, *values in buckets:
            start = datetime.fromtimestamp(since + bucket * width, UTC)
            points.append(
                {
                    "ts": start.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
                    "values": {
                        k: round(v, 6) for k, v in zip(keys, values, strict=True) if v is not None
                    },
                    "count": count_,
                }
            )
        return points, True

    def purge_history(self, older_than: float) -> int:
        """Delete history before the epoch `older_than`; returns how many rows."""
        with self._session(write=True):
            removed: int = self._db.execute(
                "DELETE FROM history WHERE ts < ?", (older_than,)
            ).rowcount
        return removed

    def get_state(self, key: str, default: Any = None) -> Any:
        """A small JSON value the service keeps across runs (e.g. what it announced)."""
        with self._session():
            row = self._db.execute("SELECT value FROM state WHERE key = ?", (key,)).fetchone()
        return json.loads(row[0]) if row else default

    def set_state(self, key: str, value: Any) -> None:
        """Store a small JSON value for the next run."""
        with self._session():
            self._db.execute(
                "INSERT INTO state (key, value) VALUES (?, ?) "
                "ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                (key, json.dumps(value)),
            )

    def close(self) -> None:
        """Close the database (after the last write)."""
        with self._session():
            self._db.close()

    def _next_seq(self, sensor: str) -> int:
        row = self._db.execute(
            "INSERT INTO seq (sensor, seq) VALUES (?, 1) "
            "ON CONFLICT (sensor) DO UPDATE SET seq = seq + 1 RETURNING seq",
            (sensor,),
        ).fetchone()
        return int(row[0])

    def _make_room(self) -> bool:
        # Called inside append's transaction: the bound holds for every committed state.
        if self._depth < self.max_rows:
            return True
        self._count("dropped", 1)
        if self.policy == "reject_new":
            return False
        self._db.execute("DELETE FROM outbox WHERE id = (SELECT MIN(id) FROM outbox)")
        self._depth -= 1
        return True

    def _count(self, name: str, amount: int) -> None:
        if amount:
            self._db.execute(
                "INSERT INTO counters (name, value) VALUES (?, ?) "
                "ON CONFLICT (name) DO UPDATE SET value = value + excluded.value",
                (name, amount),
            )

    def _scalar(self, sql: str) -> Any:
        return self._db.execute(sql).fetchone()[0]

    @contextmanager
    def _session(self, write: bool = False, durable: bool = True) -> Iterator[None]:
        """The lock; for a write, a transaction; any SQLite error becomes an OutboxError.

        `durable=False` commits without the disk flush. The usual level is restored
        whatever happens, or every later write would silently lose its flush.
        """
        with self._lock:
            relaxed = write and not durable
            try:
                if relaxed:
                    self._db.execute("PRAGMA synchronous=NORMAL")
                with transaction(self._db, write):
                    yield
            except sqlite3.Error as exc:
                with suppress(sqlite3.Error):
                    self._depth = self._scalar("SELECT COUNT(*) FROM outbox")
                raise OutboxError(f"outbox {self.path}: {exc}") from exc
            finally:
                if relaxed:
                    self._db.execute(f"PRAGMA synchronous={self.synchronous}")


def _point(body: dict[str, Any], keys: Sequence[str]) -> dict[str, Any]:
    return {"ts": body["ts"], "values": {k: body[k] for k in keys if k in body}, "count": 1}


def _key(name: str) -> str:
    # Quantity names come from drivers; keep them to what a JSON path may hold unquoted.
    if not name.replace("_", "").isalnum():
        raise OutboxError(f"quantity name {name!r} cannot be averaged")
    return name


def _chunks(items: list[int], size: int) -> Iterable[list[int]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]
