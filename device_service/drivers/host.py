"""Host metrics: CPU use, memory, disk and SoC temperature of the machine the service runs on."""

from __future__ import annotations

import logging
import re
import shutil
from pathlib import Path
from typing import Any

import marshmallow as ma

from device_service.drivers.base import Driver, DriverError, Reading

logger = logging.getLogger(__name__)


class HostOptions(ma.Schema):
    """Options of the host driver."""

    path = ma.fields.String(
        load_default="/", metadata={"description": "a path on the filesystem for disk_used"}
    )
    proc_root = ma.fields.String(
        load_default="/proc", metadata={"description": "procfs mount point (tests use a copy)"}
    )
    thermal_root = ma.fields.String(
        load_default="/sys/class/thermal",
        metadata={"description": "where the thermal_zone* directories are"},
    )


class Host(Driver):
    """CPU busy %, memory used %, disk used % and CPU temperature °C of this machine.

    cpu_load is the share of CPU time not idle between two reads, from /proc/stat; the
    first read covers the time since the driver was created (0.0 if none has passed).
    disk_used is used / (used + available), as df shows it. cpu_temperature comes from the
    thermal zone whose type names the CPU (else the first readable zone) and is left out
    when the machine has none.
    """

    name = "host"
    Options = HostOptions
    quantities = {"cpu_load": "%", "memory_used": "%", "disk_used": "%", "cpu_temperature": "°C"}

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        self.proc = Path(options["proc_root"])
        self.thermal = Path(options["thermal_root"])
        self._cpu_load = 0.0
        try:
            self._last_cpu: tuple[int, int] | None = self._cpu_times()
        except DriverError:
            self._last_cpu = None

    def read(self) -> Reading:
        """Every metric now; DriverError when procfs or the disk cannot be read."""
        reading: Reading = {
            "cpu_load": self._cpu_percent(),
            "memory_used": self._memory_percent(),
            "disk_used": self._disk_percent(),
        }
        temperature = self._temperature()
        if temperature is not None:
            reading["cpu_temperature"] = temperature
        return reading

    def _cpu_times(self) -> tuple[int, int]:
        """(busy, total) jiffies of all CPUs since boot."""
        path = self.proc / "stat"
        try:
            first = path.read_text().splitlines()[0].split()
            # user nice system idle iowait irq softirq steal; guest time is inside user.
            times = [int(field) for field in first[1:9]]
        except (OSError, IndexError, ValueError) as exc:
            raise DriverError(f"cannot read CPU times from {path}: {exc}") from exc
        if first[0] != "cpu" or len(times) < 4:
            raise DriverError(f"unexpected first line in {path}: {' '.join(first)}")
        idle = sum(times[3:5])
        return sum(times) - idle, sum(times)

    def _cpu_percent(self) -> float:
        """CPU busy % since the previous read (the previous value if no time passed)."""
        busy, total = self._cpu_times()
        if self._last_cpu is not None and total > self._last_cpu[1]:
            self._cpu_load = 100 * (busy - self._last_cpu[0]) / (total - self._last_cpu[1])
        self._last_cpu = (busy, total)
        return self._cpu_load

    def _memory_percent(self) -> float:
        """100 * (1 - MemAvailable / MemTotal) from /proc/meminfo."""
        path = self.proc / "meminfo"
        try:
            text = path.read_text()
        except OSError as exc:
            raise DriverError(f"cannot read {path}: {exc.strerror or exc}") from exc
        info = {key: int(kb) for key, kb in re.findall(r"^(\w+):\s+(\d+)", text, re.MULTILINE)}
        if not info.get("MemTotal") or "MemAvailable" not in info:
            raise DriverError(f"{path} lacks MemTotal or MemAvailable")
        return 100 * (1 - info["MemAvailable"] / info["MemTotal"])

    def _disk_percent(self) -> float:
        """Used share of the filesystem holding `path`, as df computes it."""
        try:
            usage = shutil.disk_usage(self.options["path"])
        except OSError as exc:
            raise DriverError(f"cannot stat {self.options['path']}: {exc.strerror or exc}") from exc
        if usage.used + usage.free == 0:
            return 0.0
        return 100 * usage.used / (usage.used + usage.free)

    def _temperature(self) -> float | None:
        """°C of the CPU's thermal zone, or None without a readable zone."""
        # thermal_zone2 before thermal_zone10; then CPU zones first (sort is stable).
        zones = sorted(self.thermal.glob("thermal_zone*"), key=lambda z: (len(z.name), z.name))
        zones.sort(key=lambda zone: "cpu" not in _text(zone / "type").lower())
        for zone in zones:
            try:
                return int(_text(zone / "temp")) / 1000
            except ValueError:
                logger.debug("thermal zone %s has no readable temperature", zone)
        return None


def _text(path: Path) -> str:
    """A sysfs file's stripped content, "" if it cannot be read."""
    try:
        return path.read_text().strip()
    except OSError:
        return ""
