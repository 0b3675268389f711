"""Admin pages as data: a service's own panels, and the recent log lines of each service.

A service runs in another process, maybe on another node, and the hub's proxy sandboxes
the HTML it serves, so a service contributes no HTML to the dashboard: it declares
`AdminPanel`s (a source to show, a form to edit a row or the object with), and the
dashboard draws them with its own code, on its own origin.
"""

from __future__ import annotations

import logging
import re
import threading
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import marshmallow as ma

from pyedge.schemas import json_schema
from pyedge.security import Role

# Records each service's log keeps: enough to see what just happened, bounded in memory.
LOG_LINES = 200
# A record's message is cut here: one huge line must not fill the page or the buffer.
MAX_MESSAGE = 4000
EDIT_METHODS = ("PATCH", "PUT", "POST")
# The framework's logger for operation sessions; their records are the service's when
# they come from one of its operation threads.
OPERATIONS_LOGGER = "pyedge.operations"
_FIELD_RE = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}")
_PATH_RE = re.compile(r"^[A-Za-z0-9_.~{}-]+(/[A-Za-z0-9_.~{}-]+)*$")


@dataclass(frozen=True)
class AdminPanel:
    """A section of a service's admin page: a source to show, optionally editable.

    `source` is a path under the service's API (`sensors` for /api/<slug>/sensors) whose
    GET answers a list (shown as a table, a row per item, named by its `key` field) or an
    object (shown as a list of facts); `columns` are the fields shown, in order (all when
    empty). `edit` is the path that `method` sends a
    row's (or the object's) changes to, with `{field}` filled in from the row, e.g.
    `sensors/{name}`; its form is generated from the `form` schema, prefilled with the
    row. Callers below `role` see no Edit button (the endpoint enforces its own role).
    """

    title: str
    source: str
    description: str = ""
    columns: tuple[str, ...] = ()
    key: str = "name"
    edit: str | None = None
    form: type[ma.Schema] | None = None
    method: str = "PATCH"
    role: Role = Role.ADMIN

    def __post_init__(self) -> None:
        # A bad panel is a programming error: fail at import, not when the page opens.
        if not self.title.strip():
            raise ValueError("an admin panel needs a title")
        for name, path in (("source", self.source), ("edit", self.edit)):
            if path is not None and (not _PATH_RE.fullmatch(path) or ".." in path.split("/")):
                raise ValueError(
                    f"admin panel {self.title!r}: {name} {path!r} must be a relative path "
                    "under the service's API (no leading '/', no '..')"
                )
        if "{" in self.source:
            raise ValueError(f"admin panel {self.title!r}: source {self.source!r} takes no fields")
        if (self.edit is None) != (self.form is None):
            raise ValueError(f"admin panel {self.title!r}: edit and form go together")
        if self.method.upper() not in EDIT_METHODS:
            raise ValueError(
                f"admin panel {self.title!r}: method must be one of {', '.join(EDIT_METHODS)}"
            )
        object.__setattr__(self, "method", self.method.upper())
        object.__setattr__(self, "columns", tuple(self.columns))

    @property
    def edit_fields(self) -> list[str]:
        """The row fields that the edit path is filled in with."""
        return _FIELD_RE.findall(self.edit or "")

    def describe(self) -> dict[str, Any]:
        """The panel as GET /api/<slug>/admin lists it, its form as JSON Schema."""
        return {
            "title": self.title,
            "description": self.description,
            "source": self.source,
            "columns": list(self.columns),
            "key": self.key,
            "edit": self.edit,
            "method": self.method,
            "role": self.role.label,
            "form_schema": json_schema(self.form) if self.form is not None else None,
        }


def log_package(import_name: str | None) -> str | None:
    """The logger of a service's package: the parent of the module declaring it."""
    if not import_name:
        return None
    parent, _, _module = import_name.rpartition(".")
    return parent or import_name


def _utc(created: float) -> str:
    stamp = datetime.fromtimestamp(created, UTC).isoformat(timespec="milliseconds")
    return stamp.replace("+00:00", "Z")


class RingHandler(logging.Handler):
    """Keeps the last `capacity` records, formatted, for the admin page."""

    def __init__(self, capacity: int = LOG_LINES, threads: Iterable[str] = ()) -> None:
        super().__init__()
        self.records: deque[dict[str, str]] = deque(maxlen=capacity)
        # Records of the operations logger count only from these threads (the service's).
        self.threads = frozenset(threads)
        self._formatter = logging.Formatter()

    def emit(self, record: logging.LogRecord) -> None:
        """Keep the record as {ts, level, logger, message}; a traceback joins the message."""
        if record.name == OPERATIONS_LOGGER and record.threadName not in self.threads:
            return
        try:
            message = record.getMessage()
            if record.exc_info:
                message += "\n" + self._formatter.formatException(record.exc_info)
            if len(message) > MAX_MESSAGE:
                message = message[:MAX_MESSAGE] + " …"
            entry = {
                "ts": _utc(record.created),
                "level": record.levelname,
                "logger": record.name,
                "message": message,
            }
        except Exception:
            self.handleError(record)
            return
        # Handler.handle holds the handler's lock around emit.
        self.records.append(entry)

    def lines(self) -> list[dict[str, str]]:
        """The kept records, oldest first."""
        self.acquire()
        try:
            return list(self.records)
        finally:
            self.release()


class _Capture:
    """One RingHandler on a service's loggers, shared by every runtime of that service."""

    def __init__(self, handler: RingHandler, loggers: tuple[str, ...]) -> None:
        self.handler = handler
        self.loggers = loggers
        self.users = 0


_captures: dict[str, _Capture] = {}
_captures_lock = threading.Lock()


def attach_log(slug: str, package: str | None, threads: Iterable[str]) -> RingHandler:
    """Start keeping a service's log lines (its package's, its operation threads').

    Several apps mounting the same service in one process (tests do) share one handler:
    each record is kept once, and the handler goes when the last runtime detaches.
    """
    with _captures_lock:
        capture = _captures.get(slug)
        if capture is None:
            loggers = tuple(name for name in (package, OPERATIONS_LOGGER) if name)
            capture = _Capture(RingHandler(threads=threads), loggers)
            for name in loggers:
                logging.getLogger(name).addHandler(capture.handler)
            _captures[slug] = capture
        capture.users += 1
        return capture.handler


def detach_log(slug: str) -> None:
    """Stop keeping a service's log lines once no runtime of it runs in this process."""
    with _captures_lock:
        capture = _captures.get(slug)
        if capture is None:
            return
        capture.users -= 1
        if capture.users > 0:
            return
        del _captures[slug]
        for name in capture.loggers:
            logging.getLogger(name).removeHandler(capture.handler)
