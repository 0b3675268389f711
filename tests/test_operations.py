"""The operation runner on its own: sessions, messages, failures, stop functions, shutdown."""

from __future__ import annotations

from typing import Any

import pytest

from pyedge import OperationConflict, OperationFailed, OpState, UnknownOperation
from pyedge.operations import MAX_MESSAGES, Operation, OperationRunner, OpKind, Session


def chatty(session: Session, params: dict[str, Any]) -> str:
    """Log more messages than a session keeps."""
    for i in range(MAX_MESSAGES + 20):
        session.log(f"line {i}")
    return "done talking"


def failing(session: Session, params: dict[str, Any]) -> None:
    raise OperationFailed("no sensor")


def crashing(session: Session, params: dict[str, Any]) -> None:
    raise ZeroDivisionError("division by zero")


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
        "failing": Operation("failing", OpKind.TASK, failing),
        "crashing": Operation("crashing", OpKind.TASK, crashing),
        "loop": Operation(
            "loop", OpKind.PROCESS, until_stopped, stop=lambda s: stops.append(s.op.name)
        ),
    }
    runner = OperationRunner(ops, on_change=lambda s: published.append(s.to_dict()))
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
