"""The device's own figures for the overview: CPU, memory, disk of the data dir, uptime."""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path
from typing import Any

PROC = Path("/proc")
# CPU use is the share of non-idle time between two reads of /proc/stat this far apart.
CPU_SAMPLE_S = 0.2


def _cpu_times(proc: Path) -> tuple[int, int]:
    """(idle, total) jiffies of all CPUs."""
    fields = [int(x) for x in (proc / "stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    return idle, sum(fields)


def cpu_percent(proc: Path = PROC, sample: float = CPU_SAMPLE_S) -> float | None:
    """CPU use over a short sample, in percent; None where /proc is not Linux's."""
    try:
        idle0, total0 = _cpu_times(proc)
        time.sleep(sample)
        idle1, total1 = _cpu_times(proc)
    except (OSError, ValueError, IndexError):
        return None
    total = total1 - total0
    return round(100.0 * (1 - (idle1 - idle0) / total), 1) if total > 0 else 0.0


def memory(proc: Path = PROC) -> dict[str, int] | None:
    """Total and available memory in bytes, from /proc/meminfo."""
    try:
        lines = (proc / "meminfo").read_text().splitlines()
    except OSError:
        return None
    values = {}
    for line in lines:
        name, _, rest = line.partition(":")
        parts = rest.split()
        if parts and parts[0].isdigit():
            values[name] = int(parts[0]) * 1024
    if "MemTotal" not in values:
        return None
    return {"total": values["MemTotal"], "available": values.get("MemAvailable", 0)}


def uptime(proc: Path = PROC) -> float | None:
    """Seconds since the device booted."""
    try:
        return float((proc / "uptime").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def device_figures(data_dir: Path) -> dict[str, Any]:
    """The overview's device figures; a figure this platform lacks is None."""
    disk = shutil.disk_usage(data_dir if data_dir.exists() else data_dir.parent)
    return {
        "cpu_percent": cpu_percent(),
        "cpus": os.cpu_count(),
        "load": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        "memory": memory(),
        "disk": {"path": str(data_dir), "total": disk.total, "free": disk.free},
        "uptime": uptime(),
    }
