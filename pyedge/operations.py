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

from pyedge.errors import OperationConflict, OperationFailed, UnknownOperation

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
    stop: StopFunction | None = None
    autostart: Autostart | None = None
    description: str = ""

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
    reports through `log` and `update`.
    """

    op: Operation
    on_change: Callable[[Session], None] = field(repr=False, default=lambda _s: None)
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
    _last_publish: float = field(default=0.0, repr=False)

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
        self._changed(force=False)

    def update(self, **data: Any) -> None:
        """Merge values into the session's data and publish them soon."""
        with self._cond:
            self.data.update(data)
        self._changed(force=False)

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

    def _set_state(self, state: OpState, success: bool | None = None) -> None:
        with self._cond:
            self.state = state
            if state is OpState.DONE:
                self.success = success
                self.ended_at = utc_now()
            self._cond.notify_all()
        self._changed(force=True)

    def _changed(self, force: bool) -> None:
        now = time.monotonic()
        if not force and now - self._last_publish < PUBLISH_INTERVAL_S:
            return
        self._last_publish = now
        try:
            self.on_change(self)
        except Exception:
            # Reporting must never break the operation itself.
            logger.exception("publishing session of %s failed", self.op.name)


class OperationRunner:
    """Runs one service's operations, one session per operation at a time, each in a thread."""

    def __init__(
        self,
        operations: Mapping[str, Operation],
        on_change: Callable[[Session], None],
        thread_prefix: str = "op",
        context: Any = None,
    ) -> None:
        self.operations = dict(operations)
        self._context = context
        self._on_change = on_change
        self._thread_prefix = thread_prefix
        self._lock = threading.Lock()
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
            if self.sessions[name].active:
                raise OperationConflict(f"{name} is already {self.sessions[name].state.value}")
            session = Session(
                op,
                on_change=self._on_change,
                context=self._context,
                state=OpState.STARTING,
                started_at=utc_now(),
                params=dict(params),
            )
            self.sessions[name] = session
            thread = threading.Thread(
                target=self._run,
                args=(session,),
                daemon=True,
                name=f"{self._thread_prefix}-{name}",
            )
            self._threads[name] = thread
        session._changed(force=True)
        thread.start()
        return session

    def abort(self, name: str) -> Session:
        """Ask a running Task to stop early; it ends unsuccessfully."""
        return self._request_stop(name, OpKind.TASK, "abort")

    def stop(self, name: str) -> Session:
        """Ask a running Process to stop; it ends successfully if it stops cleanly."""
        return self._request_stop(name, OpKind.PROCESS, "stop")

    def shutdown(self, timeout: float = 5.0) -> None:
        """Stop every active session and wait for their threads, at most `timeout` in all."""
        for session in list(self.sessions.values()):
            if session.active:
                self._signal_stop(session, "service shutting down")
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
        if not session.active:
            raise OperationConflict(f"{name} is not running (state {session.state.value})")
        self._signal_stop(session, f"{verb} requested")
        return session

    def _signal_stop(self, session: Session, reason: str) -> None:
        if session.stop_requested.is_set():
            return
        session.log(reason)
        session.stop_requested.set()
        session._set_state(OpState.STOPPING)
        if session.op.stop is not None:
            try:
                session.op.stop(session)
            except Exception:
                logger.exception("stop function of %s failed", session.op.name)

    def _run(self, session: Session) -> None:
        op = session.op
        with session._cond:
            # A stop may already have arrived between start and this thread running.
            if session.state is OpState.STARTING:
                session.state = OpState.RUNNING
        session._changed(force=True)
        try:
            message = op.run(session, session.params)
        except OperationFailed as exc:
            session.log(f"failed: {exc}")
            session._set_state(OpState.DONE, success=False)
            return
        except Exception as exc:
            logger.exception("operation %s crashed", op.name)
            session.log(f"crashed: {type(exc).__name__}: {exc}")
            session._set_state(OpState.DONE, success=False)
            return
        aborted = op.kind is OpKind.TASK and session.stop_requested.is_set()
        session.log(message or ("aborted" if aborted else "finished"))
        session._set_state(OpState.DONE, success=not aborted)
