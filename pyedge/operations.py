"""Operations (the OCS contract): Tasks that finish and Processes that run until stopped."""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

import marshmallow as ma

from pyedge.errors import OperationConflict, OperationFailed, ShuttingDown, UnknownOperation
from pyedge.security import Role

logger = logging.getLogger(__name__)

MAX_MESSAGES = 100
# Progress updates are published at most this often; state changes always are.
PUBLISH_INTERVAL_S = 1.0


class OpKind(StrEnum):
    """Whether an operation finishes by itself or runs until stopped."""

    TASK = "task"
    PROCESS = "process"


class OpState(StrEnum):
    """Where a session is in its life."""

    IDLE = "idle"
    STARTING = "starting"
    RUNNING = "running"
    STOPPING = "stopping"
    DONE = "done"


ACTIVE_STATES = frozenset({OpState.STARTING, OpState.RUNNING, OpState.STOPPING})


class NoParams(ma.Schema):
    """An operation that takes no parameters."""

    class Meta:
        unknown = ma.RAISE


OpFunction = Callable[["Session", dict[str, Any]], str | None]
StopFunction = Callable[["Session"], None]
# Autostart params, or a function of the runtime's context giving them (None: do not start).
Autostart = Mapping[str, Any] | Callable[[Any], Mapping[str, Any] | None]


@dataclass(frozen=True)
class Operation:
    """An operation's declaration: what runs, how it stops, which parameters it takes."""

    name: str
    kind: OpKind
    run: OpFunction
    params: type[ma.Schema] = NoParams
    # Called after stop_requested is set: on stop (a Process) or abort (a Task).
    stop: StopFunction | None = None
    autostart: Autostart | None = None
    # Who may start it and stop or abort it; reading its state needs only viewer.
    role: Role = Role.OPERATOR
    description: str = ""
    # It destroys data (a purge, a reset): the dashboard asks before it starts it.
    destructive: bool = False

    def load_params(self, raw: Mapping[str, Any]) -> dict[str, Any]:
        """Validate raw parameters; raises marshmallow.ValidationError."""
        loaded: dict[str, Any] = self.params().load(raw)
        return loaded


def utc_now() -> str:
    """The current time as ISO 8601 UTC with milliseconds, e.g. 2026-11-23T12:00:00.123Z."""
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


@dataclass
class Message:
    """One line an operation logged."""

    ts: str
    text: str


@dataclass
class Session:
    """One run of an operation; the only place its state lives.

    Operation code reads `stop_requested` (or uses `sleep`) to honour abort/stop, and
    reports through `log` and `update`. State moves only through the methods below, each
    under the session's lock, so a late stop can never overwrite `done`.
    """

    op: Operation
    # Receives a snapshot (to_dict) after each change; calls are serialised and in order.
    on_change: Callable[[dict[str, Any]], None] = field(repr=False, default=lambda _s: None)
    # Whatever runs the operation (a ServiceRuntime: settings, bus, topics).
    context: Any = field(default=None, repr=False)
    state: OpState = OpState.IDLE
    success: bool | None = None
    started_at: str | None = None
    ended_at: str | None = None
    params: dict[str, Any] = field(default_factory=dict)
    messages: deque[Message] = field(default_factory=lambda: deque(maxlen=MAX_MESSAGES))
    data: dict[str, Any] = field(default_factory=dict)
    stop_requested: threading.Event = field(default_factory=threading.Event, repr=False)
    _cond: threading.Condition = field(default_factory=threading.Condition, repr=False)
    _publish_lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    _last_publish: float = field(default=0.0, repr=False)
    _flush_timer: threading.Timer | None = field(default=None, repr=False)
    # Set when a newer session of the same operation exists: this one reports no more, so
    # a late `done` of the old run cannot overwrite the new run's retained state.
    _superseded: bool = field(default=False, repr=False)

    @property
    def kind(self) -> OpKind:
        """The operation's kind."""
        return self.op.kind

    @property
    def active(self) -> bool:
        """True from start until the operation's code has returned."""
        return self.state in ACTIVE_STATES

    def log(self, text: str) -> None:
        """Append a message (the last 100 are kept) and publish it soon."""
        with self._cond:
            self.messages.append(Message(utc_now(), text))
        logger.info("%s: %s", self.op.name, text)
        self.publish(force=False)

    def update(self, **data: Any) -> None:
        """Merge values into the session's data and publish them soon."""
        with self._cond:
            self.data.update(data)
        self.publish(force=False)

    def sleep(self, seconds: float) -> bool:
        """Wait up to `seconds`; False as soon as abort/stop is requested."""
        return not self.stop_requested.wait(seconds)

    def wait(self, timeout: float | None) -> bool:
        """Block until the session is no longer active; False on timeout."""
        with self._cond:
            return self._cond.wait_for(lambda: not self.active, timeout)

    def to_dict(self) -> dict[str, Any]:
        """A consistent snapshot of the session, as the API and MQTT show it."""
        with self._cond:
            return {
                "op": self.op.name,
                "kind": self.op.kind,
                "state": self.state,
                "success": self.success,
                "started_at": self.started_at,
                "ended_at": self.ended_at,
                "params": dict(self.params),
                "messages": [{"ts": m.ts, "text": m.text} for m in self.messages],
                "data": dict(self.data),
            }

    def mark_running(self) -> None:
        """starting -> running, unless a stop came first."""
        with self._cond:
            if self.state is OpState.STARTING:
                self.state = OpState.RUNNING
        self.publish()

    def request_stop(self, reason: str) -> bool:
        """starting/running -> stopping and set `stop_requested`; False if not running."""
        with self._cond:
            if self.state not in (OpState.STARTING, OpState.RUNNING):
                return False
            self.state = OpState.STOPPING
            self.stop_requested.set()
            self.messages.append(Message(utc_now(), reason))
            self._cond.notify_all()
        logger.info("%s: %s", self.op.name, reason)
        self.publish()
        return True

    def finish(self, success: bool, message: str) -> None:
        """-> done, with the result and a last message."""
        with self._cond:
            self.messages.append(Message(utc_now(), message))
            self.state = OpState.DONE
            self.success = success
            self.ended_at = utc_now()
            self._cond.notify_all()
        logger.info("%s: %s", self.op.name, message)
        self.publish()

    def publish(self, force: bool = True) -> None:
        """Report a snapshot now (force) or, for progress, at most once per interval; a
        change that falls inside the interval is reported when the interval ends."""
        with self._publish_lock:
            if self._superseded:
                return
            wait = PUBLISH_INTERVAL_S - (time.monotonic() - self._last_publish)
            if not force and wait > 0:
                if self._flush_timer is None:
                    self._flush_timer = threading.Timer(wait, self.publish)
                    self._flush_timer.daemon = True
                    self._flush_timer.start()
                return
            if self._flush_timer is not None:
                self._flush_timer.cancel()
                self._flush_timer = None
            self._last_publish = time.monotonic()
            # Snapshot and hand-over under one lock: reports leave in the order of changes.
            snapshot = self.to_dict()
            try:
                self.on_change(snapshot)
            except Exception:
                # Reporting must never break the operation itself.
                logger.exception("publishing session of %s failed", self.op.name)


class OperationRunner:
    """Runs one service's operations, one session per operation at a time, each in a thread."""

    def __init__(
        self,
        operations: Mapping[str, Operation],
        on_change: Callable[[dict[str, Any]], None],
        thread_prefix: str = "op",
        context: Any = None,
    ) -> None:
        self.operations = dict(operations)
        self._context = context
        self._on_change = on_change
        self._thread_prefix = thread_prefix
        self._lock = threading.Lock()
        self._closed = False
        self._threads: dict[str, threading.Thread] = {}
        self.sessions: dict[str, Session] = {
            name: Session(op, on_change=on_change, context=context)
            for name, op in self.operations.items()
        }

    def operation(self, name: str) -> Operation:
        """The declaration of `name`; raises UnknownOperation."""
        try:
            return self.operations[name]
        except KeyError:
            raise UnknownOperation(f"no operation {name!r}") from None

    def session(self, name: str) -> Session:
        """The current (or last) session of `name`."""
        self.operation(name)
        return self.sessions[name]

    def start(self, name: str, params: Mapping[str, Any]) -> Session:
        """Start a new session with validated params; raises OperationConflict if active."""
        op = self.operation(name)
        with self._lock:
            if self._closed:
                raise ShuttingDown(f"cannot start {name}: the service is shutting down")
            previous = self.sessions[name]
            if previous.active:
                raise OperationConflict(f"{name} is already {previous.state.value}")
            with previous._publish_lock:
                previous._superseded = True
            session = Session(
                op,
                on_change=self._on_change,
                context=self._context,
                state=OpState.STARTING,
                started_at=utc_now(),
                params=dict(params),
                # One publish lock per operation: reports of successive runs stay in order.
                _publish_lock=previous._publish_lock,
            )
            self.sessions[name] = session
            thread = threading.Thread(
                target=self._run,
                args=(session,),
                daemon=True,
                name=f"{self._thread_prefix}-{name}",
            )
            self._threads[name] = thread
            # Still under the lock: shutdown() never sees a thread it cannot join, and
            # `starting` is reported before the thread can report `running`.
            session.publish()
            thread.start()
        return session

    def abort(self, name: str) -> Session:
        """Ask a running Task to stop early; it ends unsuccessfully."""
        return self._request_stop(name, OpKind.TASK, "abort")

    def stop(self, name: str) -> Session:
        """Ask a running Process to stop; it ends successfully if it stops cleanly."""
        return self._request_stop(name, OpKind.PROCESS, "stop")

    def shutdown(self, timeout: float = 5.0) -> None:
        """Refuse new starts, stop every active session and wait for their threads."""
        with self._lock:
            self._closed = True
        for session in list(self.sessions.values()):
            self._stop_session(session, "service shutting down")
        deadline = time.monotonic() + timeout
        for name, thread in list(self._threads.items()):
            thread.join(max(0.0, deadline - time.monotonic()))
            if thread.is_alive():
                logger.warning("operation %s did not stop within %.1f s", name, timeout)

    def _request_stop(self, name: str, kind: OpKind, verb: str) -> Session:
        op = self.operation(name)
        if op.kind is not kind:
            other = "stop" if op.kind is OpKind.PROCESS else "abort"
            raise OperationConflict(f"{name} is a {op.kind.value}: use {other}, not {verb}")
        session = self.sessions[name]
        if not self._stop_session(session, f"{verb} requested"):
            raise OperationConflict(f"{name} is not running (state {session.state.value})")
        return session

    @staticmethod
    def _stop_session(session: Session, reason: str) -> bool:
        if not session.request_stop(reason):
            return False
        if session.op.stop is not None:
            try:
                session.op.stop(session)
            except Exception:
                logger.exception("stop function of %s failed", session.op.name)
        return True

    def _run(self, session: Session) -> None:
        op = session.op
        session.mark_running()
        try:
            message = op.run(session, session.params)
        except OperationFailed as exc:
            session.finish(False, f"failed: {exc}")
            return
        except Exception as exc:
            logger.exception("operation %s crashed", op.name)
            session.finish(False, f"crashed: {type(exc).__name__}: {exc}")
            return
        aborted = op.kind is OpKind.TASK and session.stop_requested.is_set()
        session.finish(not aborted, message or ("aborted" if aborted else "finished"))
