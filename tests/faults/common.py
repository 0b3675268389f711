"""What the fault tests share: the sampling rate, waiting for every seq, the bounds."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

from tests.device.persistent_subscriber import PersistentSubscriber
from tests.device.test_faults import INTERVAL, SENSORS, wait_until

__all__ = ["INTERVAL", "SENSORS", "WINDOW", "all_arrived", "wait_for_all", "wait_until"]

# The forwarder's unacknowledged window: what one lost connection may send twice (QoS 1).
WINDOW = 100


def all_arrived(subscriber: PersistentSubscriber, last: dict[str, int]) -> bool:
    """Whether every seq 1..last of every sensor has arrived."""
    return all(set(range(1, n + 1)) <= set(subscriber.received(s)) for s, n in last.items())


def wait_for_all(
    subscriber: PersistentSubscriber,
    last: Callable[[], dict[str, int]] | dict[str, int],
    timeout: float,
    log: Path | None = None,
) -> float:
    """Wait until every seq up to `last` has arrived; returns how long that took."""
    started = time.monotonic()
    target = last() if callable(last) else last
    wait_until(lambda: all_arrived(subscriber, target), timeout, f"every seq to {target}", log)
    return time.monotonic() - started
