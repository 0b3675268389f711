"""The rule state machine alone: below and outside with hysteresis, duration, staleness."""

from __future__ import annotations

from typing import Any

import pytest

from alerts.evaluator import RuleState, field_value
from alerts.rules import RuleSchema


def states(rule: dict[str, Any], readings: list[tuple[float, float | None]]) -> list[str]:
    """The transitions of `rule` fed (time, value) readings; None: a tick only."""
    state = RuleState(RuleSchema().load({"name": "r", "sensor": "s", **rule}), 0.0)
    seen = []
    for now, value in readings:
        moved = state.tick(now) if value is None else state.reading(value, now)
        if moved is not None:
            seen.append(f"{moved.state}@{now:g}")
    return seen


def test_below_and_outside_clear_only_past_the_hysteresis() -> None:
    below = {"kind": "below", "threshold": 10, "hysteresis": 1}
    values = [(1, 11), (2, 9.9), (3, 10.5), (4, 9), (5, 11), (6, 9.5)]
    assert states(below, values) == ["firing@2", "ok@5", "firing@6"]
    band = {"kind": "outside", "low": 0, "high": 10, "hysteresis": 1}
    values = [(1, 5), (2, 10.5), (3, 9.5), (4, 8.9), (5, -0.1), (6, 0.5), (7, 1)]
    assert states(band, values) == ["firing@2", "ok@4", "firing@5", "ok@7"]


def test_duration_needs_the_condition_to_hold_and_stale_needs_silence() -> None:
    rule = {"kind": "above", "threshold": 5, "duration": 2}
    values = [(0, 6), (1, None), (1.5, 4), (2.5, None), (3, 6), (4, None), (5, None)]
    assert states(rule, values) == ["firing@5"]
    stale = {"kind": "stale", "stale_after": 3}
    values = [(1, None), (2, 1), (4, None), (5, None), (6, 1), (8, None), (9.5, None)]
    assert states(stale, values) == ["firing@5", "ok@6", "firing@9.5"]


def test_a_reading_must_carry_a_finite_number() -> None:
    rule = {"field": "humidity"}
    assert field_value(rule, {"humidity": 40, "units": {}}) == 40.0
    for body in ([1], {"value": 1}, {"humidity": "wet"}, {"humidity": float("nan")}):
        with pytest.raises(ValueError):
            field_value(rule, body)
