"""The state machine of one rule: hysteresis, duration and staleness."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

FIRING = "firing"
OK = "ok"


@dataclass(frozen=True)
class Transition:
    """A rule's change of state, and why."""

    state: str
    value: float | None
    message: str


def condition(rule: dict[str, Any], value: float) -> bool:
    """True when `value` breaks the rule (what makes it fire)."""
    kind = rule["kind"]
    if kind == "above":
        return bool(value > rule["threshold"])
    if kind == "below":
        return bool(value < rule["threshold"])
    if kind == "outside":
        return bool(value < rule["low"] or value > rule["high"])
    return False


def cleared(rule: dict[str, Any], value: float) -> bool:
    """True when a firing rule may clear: back past the threshold by the hysteresis."""
    kind, margin = rule["kind"], rule["hysteresis"]
    if kind == "above":
        return bool(value <= rule["threshold"] - margin)
    if kind == "below":
        return bool(value >= rule["threshold"] + margin)
    if kind == "outside":
        return bool(rule["low"] + margin <= value <= rule["high"] - margin)
    return True


def describe(rule: dict[str, Any], value: float | None, firing: bool) -> str:
    """A one-line account of a transition, for events and the history."""
    what = f"{rule['sensor']}.{rule['field']}"
    kind = rule["kind"]
    if kind == "stale":
        if firing:
            return f"{rule['sensor']}: no reading for {rule['stale_after']:g} s"
        return f"{rule['sensor']}: readings again"
    bound = f"{rule['low']:g}..{rule['high']:g}" if kind == "outside" else f"{rule['threshold']:g}"
    if firing:
        return f"{what} = {value:g}, {kind} {bound}"
    return f"{what} = {value:g}, back from {kind} {bound}"


class RuleState:
    """One rule's current state; fed readings and ticks, it returns its transitions."""

    def __init__(self, rule: dict[str, Any], now: float) -> None:
        self.rule = rule
        self.state = OK
        self.value: float | None = None
        self.since: str | None = None
        # When the condition started holding (for `duration`), and the last reading
        # (for `stale`): monotonic seconds. Watching starts the stale clock.
        self.pending_since: float | None = None
        self.last_seen = now

    @property
    def firing(self) -> bool:
        """True while the rule fires."""
        return self.state == FIRING

    def reading(self, value: float | None, now: float) -> Transition | None:
        """A new reading (None: one without the rule's field, which only proves life)."""
        self.last_seen = now
        rule = self.rule
        if rule["kind"] == "stale":
            if self.firing:
                return self._move(OK, value)
            return None
        if value is None:
            return None
        self.value = value
        if self.firing:
            return self._move(OK, value) if cleared(rule, value) else None
        if not condition(rule, value):
            self.pending_since = None
            return None
        if self.pending_since is None:
            self.pending_since = now
        return self.tick(now)

    def tick(self, now: float) -> Transition | None:
        """Time passing: a condition held for `duration`, or a sensor gone quiet."""
        rule = self.rule
        if self.firing:
            return None
        if rule["kind"] == "stale":
            if now - self.last_seen >= rule["stale_after"]:
                return self._move(FIRING, self.value)
            return None
        if self.pending_since is not None and now - self.pending_since >= rule["duration"]:
            return self._move(FIRING, self.value)
        return None

    def _move(self, state: str, value: float | None) -> Transition:
        self.state = state
        self.pending_since = None
        return Transition(state, value, describe(self.rule, value, state == FIRING))


def field_value(rule: dict[str, Any], body: Any) -> float | None:
    """The rule's field of a reading's JSON body as a number; ValueError if malformed."""
    if not isinstance(body, dict):
        raise ValueError("expected a JSON object")
    if rule["field"] not in body:
        raise ValueError(f"no field {rule['field']!r}")
    value = body[rule["field"]]
    if isinstance(value, bool):
        return float(value)
    if not isinstance(value, int | float) or value != value or abs(value) == float("inf"):
        raise ValueError(f"{rule['field']} is not a finite number: {value!r}")
    return float(value)
