"""Downsampling a sensor's history for charts: equal time buckets, numbers averaged."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

# Keys of a stored body that are not quantities.
META_KEYS = frozenset({"ts", "seq", "unit", "units"})


def downsample(
    rows: Sequence[tuple[float, dict[str, Any]]], since: float, until: float, limit: int
) -> tuple[list[dict[str, Any]], bool]:
    """At most `limit` points: the rows themselves, or bucket averages when there are more.

    Numbers are averaged per bucket; other values (booleans, text) keep the bucket's last.
    """
    if len(rows) <= limit:
        return [_point(body["ts"], _values(body), 1) for _, body in rows], False
    width = (until - since) / limit or 1.0
    buckets: dict[int, list[dict[str, Any]]] = {}
    for epoch, body in rows:
        index = min(int((epoch - since) / width), limit - 1)
        buckets.setdefault(index, []).append(_values(body))
    points = []
    for index in sorted(buckets):
        start = datetime.fromtimestamp(since + index * width, UTC)
        ts = start.isoformat(timespec="milliseconds").replace("+00:00", "Z")
        points.append(_point(ts, _average(buckets[index]), len(buckets[index])))
    return points, True


def _values(body: dict[str, Any]) -> dict[str, Any]:
    return {key: value for key, value in body.items() if key not in META_KEYS}


def _average(group: list[dict[str, Any]]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for key in group[-1]:
        numbers = [
            v[key]
            for v in group
            if isinstance(v.get(key), int | float) and not isinstance(v.get(key), bool)
        ]
        result[key] = round(sum(numbers) / len(numbers), 6) if numbers else group[-1][key]
    return result


def _point(ts: str, values: dict[str, Any], count: int) -> dict[str, Any]:
    return {"ts": ts, "values": values, "count": count}
