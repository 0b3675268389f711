"""The operation runner on its own: sessions, messages, failures, stop functions, shutdown."""

from __future__ import annotations

import contextlib
import sys
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

from pyedge import OperationConflict, OperationFailed, OpState, UnknownOperation
from pyedge.errors import ShuttingDown
from pyedge.operations import (
    MAX_MESSAGES,
    PUBLISH_INTERVAL_S,
    Operation,
    OperationRunner,
    OpKind,
    Session,
)


def chatty(session: Session, params: dict[str, Any]) -> str:
    """Log more messages than a session keeps."""
    for i in range(MAX_MESSAGES + 20):
        session.log(f"line {i}")
    return "done talking"


def failing(session: Session, params: dict[str, Any]) -> None:
    raise OperationFailed("no sensor")


def crashing(session: Session, params: dict[str, Any]) -> None:
    raise ZeroDivisionError("division by zero")


def instant(session: Session, params: dict[str, Any]) -> str:
    return "done at once"


def progress(session: Session, params: dict[str, Any]) -> str:
    for step in range(3):
        session.update(step=step)
    session.sleep(PUBLISH_INTERVAL_S * 1.5)
    return "reported"


def until_stopped(session: Session, params: dict[str, Any]) -> str:
    while session.sleep(0.01):
        pass
    return "stopped cleanly"


@pytest.fixture
def published() -> list[dict[str, Any]]:
    return []


@pytest.fixture
def runner(published: list[dict[str, Any]]) -> OperationRunner:
    stops: list[str] = []
    ops = {
        "chatty": Operation("chatty", OpKind.TASK, chatty),
        "instant": Operation("instant", OpKind.TASK, instant),
        "progress": Operation("progress", OpKind.TASK, progress),
        "failing": Operation("failing", OpKind.TASK, failing),
        "crashing": Operation("crashing", OpKind.TASK, crashing),
        "loop": Operation(
            "loop", OpKind.PROCESS, until_stopped, stop=lambda s: stops.append(s.op.name)
        ),
    }
    runner = OperationRunner(ops, on_change=published.append)
    runner.stops = stops  # type: ignore[attr-defined]
    return runner


def test_only_the_last_100_messages_are_kept(runner: OperationRunner) -> None:
    session = runner.start("chatty", {})
    assert session.wait(5)
    texts = [m["text"] for m in session.to_dict()["messages"]]
    assert len(texts) == MAX_MESSAGES
    assert texts[-1] == "done talking"
    assert texts[0] == f"line {20 + 1}"


def test_operation_failed_ends_unsuccessfully_with_its_message(runner: OperationRunner) -> None:
    session = runner.start("failing", {})
    assert session.wait(5)
    assert (session.state, session.success) == (OpState.DONE, False)
    assert session.messages[-1].text == "failed: no sensor"


def test_a_crash_ends_unsuccessfully_and_names_the_error(runner: OperationRunner) -> None:
    session = runner.start("crashing", {})
    assert session.wait(5)
    assert session.success is False
    assert session.messages[-1].text == "crashed: ZeroDivisionError: division by zero"


def test_stop_calls_the_stop_function_and_ends_successfully(runner: OperationRunner) -> None:
    session = runner.start("loop", {})
    runner.stop("loop")
    assert session.wait(5)
    assert session.success is True
    assert runner.stops == ["loop"]  # type: ignore[attr-defined]
    assert session.messages[-1].text == "stopped cleanly"


def test_state_changes_are_reported_in_order(
    runner: OperationRunner, published: list[dict[str, Any]]
) -> None:
    session = runner.start("loop", {})
    runner.stop("loop")
    session.wait(5)
    states = [p["state"] for p in published]
    assert states[:2] == ["starting", "running"]
    assert "stopping" in states
    assert states[-1] == "done"


def test_shutdown_stops_every_active_session(runner: OperationRunner) -> None:
    session = runner.start("loop", {})
    runner.shutdown(timeout=5)
    assert session.state is OpState.DONE
    assert session.success is True


def test_unknown_and_conflicting_requests_raise(runner: OperationRunner) -> None:
    with pytest.raises(UnknownOperation):
        runner.start("nope", {})
    runner.start("loop", {})
    with pytest.raises(OperationConflict):
        runner.start("loop", {})
    with pytest.raises(OperationConflict):
        runner.abort("loop")
    runner.shutdown()


def aborted_instant_tasks(runner: OperationRunner, count: int) -> Iterator[Session]:
    """Start a Task that ends at once and abort it straight away, `count` times."""
    for _ in range(count):
        session = runner.start("instant", {})
        with contextlib.suppress(OperationConflict):  # it may have finished already: fine
            runner.abort("instant")
        assert session.wait(5)
        yield session


def test_a_stop_racing_the_end_never_leaves_a_session_stuck(runner: OperationRunner) -> None:
    previous = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # switch threads often, so that abort and finish interleave
    try:
        for session in aborted_instant_tasks(runner, 300):
            assert session.state is OpState.DONE
            assert session.success is not None
    finally:
        sys.setswitchinterval(previous)


def test_the_last_report_is_the_final_state(
    runner: OperationRunner, published: list[dict[str, Any]]
) -> None:
    for session in aborted_instant_tasks(runner, 100):
        assert published[-1] == session.to_dict()


def test_progress_inside_the_throttle_window_is_reported_when_it_ends(
    runner: OperationRunner, published: list[dict[str, Any]]
) -> None:
    session = runner.start("progress", {})
    time.sleep(PUBLISH_INTERVAL_S * 1.2)  # the session still runs; only the timer can report
    assert any(p["data"].get("step") == 2 for p in published), published
    session.wait(5)


def test_no_start_after_shutdown(runner: OperationRunner) -> None:
    runner.shutdown()
    with pytest.raises(ShuttingDown):
        runner.start("instant", {})


def start_unless_shut_down(runner: OperationRunner) -> None:
    with contextlib.suppress(ShuttingDown):
        runner.start("loop", {})


def test_shutdown_racing_a_start_stops_cleanly() -> None:
    op = Operation("loop", OpKind.PROCESS, until_stopped)
    previous = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    try:
        for _ in range(300):
            runner = OperationRunner({"loop": op}, on_change=lambda snapshot: None)
            starter = threading.Thread(target=start_unless_shut_down, args=(runner,))
            starter.start()
            runner.shutdown(timeout=5)  # must not raise, whatever the start was doing
            starter.join(5)
            assert not runner.sessions["loop"].active
    finally:
        sys.setswitchinterval(previous)


def test_a_restart_is_never_overwritten_by_the_previous_run(
    runner: OperationRunner, published: list[dict[str, Any]]
) -> None:
    previous = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    try:
        for _ in range(200):
            runner.start("instant", {}).wait(5)
            session = runner.start("loop", {})
            runner.stop("loop")
            session.wait(5)
            again = runner.start("loop", {})
            time.sleep(0.001)
            last = [p for p in published if p["op"] == "loop"][-1]
            assert last["started_at"] == again.started_at, "an old run's report came last"
            runner.stop("loop")
            again.wait(5)
    finally:
        sys.setswitchinterval(previous)
