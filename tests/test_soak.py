"""The soak run (bench/soak.py): its arithmetic, and a short real run of the solo bundle."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from bench import soak


def _samples(mib_per_h: float, hours: float = 1.0, every_s: float = 60.0) -> list[dict[str, Any]]:
    """Samples whose worker grows by `mib_per_h` from 100 MiB; the others stay flat."""
    rows = []
    for i in range(int(hours * 3600 / every_s) + 1):
        t = i * every_s
        worker = 100.0 + mib_per_h * t / 3600
        row: dict[str, Any] = {"t": t, "pids": {"arbiter": 1, "worker": 2, "mosquitto": 3}}
        for name, mib in (("arbiter", 20.0), ("worker", worker), ("mosquitto", 8.0)):
            row[name] = {
                "rss_mib": mib,
                "pss_mib": mib / 2,
                "uss_mib": mib / 2,
                "fds": 7,
                "cpu_s": t / 100,
                "threads": 1,
            }
        total = 128.0 + worker - 100.0
        row["total"] = {"rss_mib": total, "pss_mib": total / 2, "uss_mib": total / 2}
        rows.append(row)
    return rows


def test_the_slope_is_the_growth_per_hour_after_the_warm_up() -> None:
    # 5 MiB/h on a worker of ~100-105 MiB: about 4.9 % of its mean per hour.
    analysis = soak.analyse(_samples(5.0), warmup_s=360)
    worker = analysis["rss_mib"]["worker"]
    assert worker["mib_per_h"] == pytest.approx(5.0)
    assert worker["pct_per_h"] == pytest.approx(100 * 5.0 / worker["mean_mib"])
    assert analysis["rss_mib"]["arbiter"]["mib_per_h"] == pytest.approx(0.0)
    assert analysis["samples_after_warmup"] == 55


def test_a_flat_run_has_no_slope_and_a_growing_one_misses_the_target() -> None:
    assert soak.analyse(_samples(0.0), 0)["rss_mib"]["total"]["pct_per_h"] == pytest.approx(0.0)
    report = soak.report(
        {
            "duration_s": 3600,
            "rate": soak.RATE,
            "analysis": soak.analyse(_samples(20.0), 360),
            "stream": {
                "received": 1,
                "produced_by_seq": 1,
                "nominal": 1,
                "missing_by_seq": 0,
                "gaps": 0,
                "repeated": 0,
                "reopened": 0,
            },
            "log_errors": [],
        }
    )
    worker = next(line for line in report.splitlines() if "RSS worker" in line)
    assert "MISSED" in worker


def test_the_stream_counts_gaps_and_repeats_by_seq() -> None:
    count = soak.SensorCount()
    for seq in (7, 8, 9, 12, 12, 13):
        count.add(seq)
    assert (count.received, count.first, count.last) == (5, 7, 13)
    assert (count.gaps, count.missing, count.repeated) == (1, 2, 1)


def test_a_short_soak_samples_every_process_and_loses_no_reading(tmp_path: Path) -> None:
    # The real bundle (its Mosquitto, gunicorn, every installed service) for a few seconds.
    result = soak.soak(duration_s=12, every_s=1, warmup_s=3, services=None)
    soak.write(result, tmp_path / "soak.json")
    samples = result["samples"]
    assert all(row[name] for row in samples for name in soak.PROCESSES)
    assert len(result["analysis"]["worker_pids"]) == 1
    assert all(result["analysis"]["fds"][name]["end"] > 0 for name in soak.PROCESSES)
    assert result["analysis"]["data_mib"]["end"] > 0
    stream = result["stream"]
    assert stream["sensors"] == soak.SENSORS
    assert stream["received"] > 0
    assert stream["received"] == stream["produced_by_seq"]
    assert (stream["missing_by_seq"], stream["reopened"]) == (0, 0)
    assert result["log_errors"] == []
    assert (tmp_path / "soak.csv").read_text().count("\n") == len(samples) + 1
