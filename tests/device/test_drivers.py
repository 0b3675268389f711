"""Drivers: the entry points, the simulated, host and ds18b20 drivers over fake sysfs/procfs."""

from __future__ import annotations

import itertools
import shutil
from pathlib import Path

import marshmallow as ma
import pytest

from device_service.drivers.base import Actuator, Driver, DriverError, installed_drivers
from device_service.drivers.bme280 import BME280
from device_service.drivers.ds18b20 import DS18B20
from device_service.drivers.gpio import GpioIn, GpioOut
from device_service.drivers.host import Host
from device_service.drivers.simulated import Simulated
from tests.device.helpers import make

EXPECTED = {
    "simulated": Simulated,
    "host": Host,
    "ds18b20": DS18B20,
    "bme280": BME280,
    "gpio_in": GpioIn,
    "gpio_out": GpioOut,
}


def test_installed_drivers_are_the_six_entry_points() -> None:
    assert installed_drivers() == EXPECTED
    assert issubclass(GpioOut, Actuator)


@pytest.mark.parametrize("cls", EXPECTED.values(), ids=EXPECTED.keys())
def test_options_are_described_and_default_except_the_pin(cls: type[Driver]) -> None:
    for name, field in cls.Options().fields.items():
        assert field.metadata.get("description"), f"{cls.name}.{name}"
        assert (name == "pin") == field.required, f"{cls.name}.{name}"
    assert cls.quantities


# -- simulated ---------------------------------------------------------------------------------


def test_random_walk_repeats_for_a_seed_and_stays_within_bounds() -> None:
    def walk(seed: int) -> list[float]:
        driver = make(Simulated, seed=seed, minimum=-5, maximum=5, step=2)
        return [float(driver.read()["value"]) for _ in range(500)]

    values = walk(7)
    assert values == walk(7)
    assert values != walk(8)
    assert all(-5 <= value <= 5 for value in values)
    assert all(abs(b - a) <= 2 for a, b in itertools.pairwise(values))
    assert len(set(values)) > 400


def test_sine_follows_the_clock_between_the_bounds() -> None:
    now = [100.0]
    options = {"waveform": "sine", "minimum": 10, "maximum": 20, "period": 8, "unit": "°C"}
    driver = make(Simulated, {"clock": lambda: now[0]}, **options)
    values = []
    for t in (100, 102, 104, 106, 108):
        now[0] = t
        values.append(driver.read()["value"])
    assert values == pytest.approx([15, 20, 15, 10, 15])
    assert driver.unit == "°C"
    assert Simulated.quantities == {"value": ""}


@pytest.mark.parametrize(
    "raw",
    [{"minimum": 5, "maximum": 5}, {"waveform": "square"}, {"step": 0}, {"period": -1}, {"x": 1}],
)
def test_simulated_rejects_bad_options(raw: dict[str, object]) -> None:
    with pytest.raises(ma.ValidationError):
        Simulated.Options().load(raw)


# -- host ----------------------------------------------------------------------------------------

MEMINFO = "MemTotal:        4000000 kB\nMemFree:          500000 kB\nMemAvailable:    1000000 kB\n"


def stat_line(user: int, idle: int) -> str:
    """A /proc/stat with `user` busy and `idle` idle jiffies (and zero of the rest)."""
    return f"cpu  {user} 0 0 {idle} 0 0 0 0 0 0\ncpu0 {user} 0 0 {idle} 0 0 0 0 0 0\nintr 1\n"


@pytest.fixture
def proc(tmp_path: Path) -> Path:
    root = tmp_path / "proc"
    root.mkdir()
    (root / "stat").write_text(stat_line(1000, 3000))
    (root / "meminfo").write_text(MEMINFO)
    return root


def zone(thermal: Path, name: str, kind: str, temp: str) -> None:
    (thermal / name).mkdir(parents=True)
    (thermal / name / "type").write_text(kind + "\n")
    (thermal / name / "temp").write_text(temp + "\n")


def test_host_reads_cpu_memory_disk_and_the_cpu_zone(proc: Path, tmp_path: Path) -> None:
    thermal = tmp_path / "thermal"
    zone(thermal, "thermal_zone0", "acpitz", "30000")
    zone(thermal, "thermal_zone1", "cpu-thermal", "48312")
    host = make(Host, proc_root=str(proc), thermal_root=str(thermal), path=str(tmp_path))
    first = host.read()
    assert first["cpu_load"] == 0.0  # no time passed since the driver started
    (proc / "stat").write_text(stat_line(1000 + 30, 3000 + 70))
    reading = host.read()
    usage = shutil.disk_usage(tmp_path)
    assert reading == {
        "cpu_load": pytest.approx(30.0),
        "memory_used": pytest.approx(75.0),
        "disk_used": pytest.approx(100 * usage.used / (usage.used + usage.free), abs=0.5),
        "cpu_temperature": pytest.approx(48.312),
    }
    (proc / "stat").write_text(stat_line(1000 + 130, 3000 + 70))
    assert host.read()["cpu_load"] == pytest.approx(100.0)
    assert set(reading) == set(Host.quantities)


def test_host_leaves_out_the_temperature_without_a_readable_zone(
    proc: Path, tmp_path: Path
) -> None:
    thermal = tmp_path / "thermal"
    zone(thermal, "thermal_zone0", "acpitz", "")
    host = make(Host, proc_root=str(proc), thermal_root=str(thermal))
    assert set(host.read()) == {"cpu_load", "memory_used", "disk_used"}
    host = make(Host, proc_root=str(proc), thermal_root=str(tmp_path / "none"))
    assert "cpu_temperature" not in host.read()


def test_host_falls_back_to_the_first_zone(proc: Path, tmp_path: Path) -> None:
    thermal = tmp_path / "thermal"
    zone(thermal, "thermal_zone10", "soc", "70000")
    zone(thermal, "thermal_zone2", "soc", "41000")
    host = make(Host, proc_root=str(proc), thermal_root=str(thermal))
    assert host.read()["cpu_temperature"] == pytest.approx(41.0)


@pytest.mark.parametrize(
    ("name", "text"),
    [("meminfo", "MemTotal: 100 kB\n"), ("stat", "intr 1 2 3\n"), ("stat", "cpu a b c d\n")],
)
def test_host_rejects_unreadable_procfs(proc: Path, name: str, text: str) -> None:
    host = make(Host, proc_root=str(proc))
    (proc / name).write_text(text)
    with pytest.raises(DriverError):
        host.read()
    (proc / name).unlink()
    with pytest.raises(DriverError):
        host.read()


def test_host_rejects_a_missing_disk_path(proc: Path, tmp_path: Path) -> None:
    host = make(Host, proc_root=str(proc), path=str(tmp_path / "missing"))
    with pytest.raises(DriverError, match="cannot stat"):
        host.read()


def test_host_reads_this_machine() -> None:
    host = make(Host)
    reading = host.read()
    for key in ("cpu_load", "memory_used", "disk_used"):
        assert 0 <= float(reading[key]) <= 100


# -- ds18b20 -------------------------------------------------------------------------------------

GOOD = "57 01 4b 46 7f ff 0c 10 a2 : crc=a2 YES\n57 01 4b 46 7f ff 0c 10 a2 t=21375\n"


def w1(root: Path, device: str, text: str) -> None:
    path = root / "bus" / "w1" / "devices" / device
    path.mkdir(parents=True)
    (path / "w1_slave").write_text(text)


def test_ds18b20_reads_the_configured_sensor(tmp_path: Path) -> None:
    w1(tmp_path, "28-0316a2795dff", GOOD)
    w1(tmp_path, "28-000000000001", GOOD.replace("t=21375", "t=-1250"))
    assert make(DS18B20, root=str(tmp_path), device="28-0316a2795dff").read() == {
        "temperature": 21.375
    }
    assert make(DS18B20, root=str(tmp_path), device="28-000000000001").read() == {
        "temperature": -1.25
    }


def test_ds18b20_without_device_reads_the_first_28(tmp_path: Path) -> None:
    (tmp_path / "bus" / "w1" / "devices" / "w1_bus_master1").mkdir(parents=True)
    w1(tmp_path, "28-0316a2795dff", GOOD.replace("t=21375", "t=19000"))
    w1(tmp_path, "28-0000075e3b1a", GOOD)
    assert make(DS18B20, root=str(tmp_path)).read() == {"temperature": 21.375}


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (GOOD.replace("YES", "NO"), "CRC check failed"),
        (GOOD.replace("t=21375", "t=85000"), "power-on reset"),
        ("00 00 00 00 00 00 00 00 00 : crc=00 YES\n00 00 00 00 00 00 00 00 00 t=0\n", "empty"),
        ("", "unexpected content"),
        (GOOD.replace("t=21375", "t="), "bad temperature"),
    ],
    ids=["crc", "85C", "disconnected", "empty-file", "no-value"],
)
def test_ds18b20_rejects_bad_readings(tmp_path: Path, text: str, message: str) -> None:
    w1(tmp_path, "28-0316a2795dff", text)
    with pytest.raises(DriverError, match=message):
        make(DS18B20, root=str(tmp_path)).read()


def test_ds18b20_rejects_a_missing_sensor(tmp_path: Path) -> None:
    with pytest.raises(DriverError, match="no DS18B20"):
        make(DS18B20, root=str(tmp_path)).read()
    w1(tmp_path, "28-0316a2795dff", GOOD)
    with pytest.raises(DriverError, match="cannot read"):
        make(DS18B20, root=str(tmp_path), device="28-000000000002").read()


def test_ds18b20_device_must_be_a_1_wire_id() -> None:
    with pytest.raises(ma.ValidationError):
        DS18B20.Options().load({"device": "../../etc"})
