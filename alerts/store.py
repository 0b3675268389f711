"""SQLite storage of the API-made rules and of the alert history."""

from __future__ import annotations

import json
import sqlite3
import threading
from pathlib import Path
from typing import Any

from pyedge.sqlite import transaction

SCHEMA = """
CREATE TABLE IF NOT EXISTS rules (name TEXT PRIMARY KEY, spec TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS history (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    ts TEXT NOT NULL,
    rule TEXT NOT NULL,
    event TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS history_rule ON history (rule, id);
"""


class Store:
    """The service's database: one connection, shared by threads under a lock."""

    def __init__(self, path: Path, history_max: int) -> None:
        self.history_max = history_max
        self._lock = threading.Lock()
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.executescript(SCHEMA)

    def rules(self) -> dict[str, dict[str, Any]]:
        """Every stored rule, by name."""
        with self._lock:
            rows = self._db.execute("SELECT name, spec FROM rules ORDER BY name").fetchall()
        return {name: json.loads(spec) for name, spec in rows}

    def put_rule(self, rule: dict[str, Any]) -> None:
        """Create or replace a rule."""
        with self._lock, transaction(self._db, write=True):
            self._db.execute(
                "INSERT OR REPLACE INTO rules (name, spec) VALUES (?, ?)",
                (rule["name"], json.dumps(rule)),
            )

    def delete_rule(self, name: str) -> None:
        """Delete a rule (its history stays)."""
        with self._lock, transaction(self._db, write=True):
            self._db.execute("DELETE FROM rules WHERE name = ?", (name,))

    def add_event(self, event: dict[str, Any]) -> None:
        """Append an event to the history, pruning it to `history_max` entries."""
        with self._lock, transaction(self._db, write=True):
            cursor = self._db.execute(
                "INSERT INTO history (ts, rule, event) VALUES (?, ?, ?)",
                (event["ts"], event["rule"], json.dumps(event)),
            )
            # By id, not by count: one indexed range delete per insert stays cheap.
            self._db.execute(
                "DELETE FROM history WHERE id <= ?", ((cursor.lastrowid or 0) - self.history_max,)
            )

    def history(self, rule: str | None, limit: int) -> list[dict[str, Any]]:
        """The newest `limit` events, newest first, of one rule or all."""
        query = "SELECT event FROM history"
        args: tuple[Any, ...] = ()
        if rule is not None:
            query += " WHERE rule = ?"
            args = (rule,)
        with self._lock:
            rows = self._db.execute(f"{query} ORDER BY id DESC LIMIT ?", (*args, limit))
            return [json.loads(event) for (event,) in rows.fetchall()]

    def close(self) -> None:
        """Close the database."""
        with self._lock:
            self._db.close()
