"""The outbox on its own: seq across restarts, bounds and their policies, expiry, history."""

from __future__ import annotations

from pathlib import Path

import pytest

from device_service.outbox import Outbox, Reading


class Clock:
    """A settable wall clock."""

    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


def readings(count: int, sensor: str = "temp", epoch: float = 1_000_000.0) -> list[Reading]:
    return [Reading(sensor, f"t/{sensor}", {"value": i, "ts": "x"}, epoch) for i in range(count)]


def open_outbox(path: Path, **kwargs: object) -> Outbox:
    options: dict[str, object] = {"max_rows": 1000, "max_age": 3600.0, **kwargs}
    return Outbox(path / "outbox.sqlite3", **options)  # type: ignore[arg-type]


def test_seq_goes_on_across_a_reopen(tmp_path: Path) -> None:
    outbox = open_outbox(tmp_path)
    assert outbox.append(readings(3)) == [1, 2, 3]
    assert outbox.append(readings(1, "other")) == [1]
    outbox.close()
    again = open_outbox(tmp_path)
    assert again.append(readings(2)) == [4, 5]
    assert again.stats()["depth"] == 6


def test_rows_leave_only_when_acknowledged_oldest_first(tmp_path: Path) -> None:
    outbox = open_outbox(tmp_path)
    outbox.append(readings(5))
    rows = outbox.peek(3, after_id=0)
    assert [r.payload for r in rows] == [
        b'{"value":0,"ts":"x","seq":1}',
        b'{"value":1,"ts":"x","seq":2}',
        b'{"value":2,"ts":"x","seq":3}',
    ]
    assert [r.id for r in outbox.peek(10, after_id=rows[-1].id)] == [4, 5]
    outbox.ack([r.id for r in rows])
    stats = outbox.stats()
    assert (stats["depth"], stats["drained"], stats["dropped"]) == (2, 3, 0)


def test_a_full_outbox_drops_its_oldest_and_counts_it(tmp_path: Path) -> None:
    outbox = open_outbox(tmp_path, max_rows=100)
    outbox.append(readings(130))
    stats = outbox.stats()
    assert (stats["depth"], stats["dropped"]) == (100, 30)
    first = outbox.peek(1, after_id=0)[0]
    assert first.payload.endswith(b'"seq":31}')  # seq 1..30 gave way to the newest


def test_reject_new_keeps_the_oldest_and_counts_the_rest(tmp_path: Path) -> None:
    outbox = open_outbox(tmp_path, max_rows=100, policy="reject_new")
    outbox.append(readings(130))
    stats = outbox.stats()
    assert (stats["depth"], stats["dropped"]) == (100, 30)
    assert outbox.peek(100, after_id=0)[-1].payload.endswith(b'"seq":100}')


def test_readings_older_than_max_age_expire_and_are_counted(tmp_path: Path) -> None:
    clock = Clock()
    outbox = open_outbox(tmp_path, max_age=60.0, clock=clock)
    outbox.append(readings(4, epoch=clock.now))
    clock.now += 30
    outbox.append(readings(2, epoch=clock.now))
    clock.now += 45  # the first four are 75 s old now
    assert outbox.expire() == 4
    stats = outbox.stats()
    assert (stats["depth"], stats["dropped"], stats["oldest_age"]) == (2, 4, 45.0)


def test_history_keeps_readings_until_purged(tmp_path: Path) -> None:
    outbox = open_outbox(tmp_path)
    outbox.append(readings(3, epoch=100.0) + readings(2, epoch=200.0))
    points, downsampled = outbox.history("temp", 0, 1e9, 10, ["value"])
    assert [p["values"]["value"] for p in points] == [0, 1, 2, 0, 1] and not downsampled
    assert outbox.purge_history(older_than=150.0) == 3
    assert len(outbox.history("temp", 0, 1e9, 10, ["value"])[0]) == 2


def test_a_long_history_is_averaged_over_all_of_it(tmp_path: Path) -> None:
    outbox = open_outbox(tmp_path)
    rows = [Reading("temp", "t/temp", {"value": float(i % 10), "ts": "x"}, 1000.0 + i)
            for i in range(1000)]  # fmt: skip
    outbox.append(rows)
    points, downsampled = outbox.history("temp", 1000.0, 2000.0, 10, ["value"])
    assert downsampled and len(points) == 10
    assert sum(p["count"] for p in points) == 1000  # every reading, not only the oldest
    assert all(p["values"]["value"] == 4.5 for p in points)


@pytest.mark.parametrize("policy", ["drop_oldest", "reject_new"])
def test_the_bound_holds_in_every_committed_state(tmp_path: Path, policy: str) -> None:
    outbox = open_outbox(tmp_path, max_rows=100, policy=policy)
    for _ in range(20):
        outbox.append(readings(17))
        assert outbox.stats()["depth"] <= 100
