"""The sensors file: defaults by machine type, and errors that name file, sensor and key."""

from __future__ import annotations

from pathlib import Path

import pytest

from device_service.drivers.base import DriverCatalog
from device_service.sensors import load_sensors
from pyedge import ConfigError


def load(tmp_path: Path, text: str) -> list[object]:
    path = tmp_path / "sensors.toml"
    path.write_text(text)
    return load_sensors(path, "pc_linux", DriverCatalog())  # type: ignore[return-value]


def test_defaults_by_machine_type() -> None:
    pc = {s.name: s.driver_name for s in load_sensors(None, "pc_linux", DriverCatalog())}
    assert pc == {"host": "host", "room_temperature": "simulated", "room_humidity": "simulated"}
    pi = {s.name: s.driver_name for s in load_sensors(None, "rpi", DriverCatalog())}
    assert pi == {"host": "host"}
    mac = {s.name: s.driver_name for s in load_sensors(None, "mac", DriverCatalog())}
    assert mac == {"room_temperature": "simulated", "room_humidity": "simulated"}


def test_the_example_sensors_file_loads() -> None:
    example = Path(__file__).resolve().parents[2] / "sensors.example.toml"
    sensors = load_sensors(example, "pc_linux", DriverCatalog())
    assert {s.name for s in sensors} >= {"host", "greenhouse"}


@pytest.mark.parametrize(
    ("text", "key", "problem"),
    [
        ("[sensors.a]\ninterval = 1\n", "[sensors.a] driver", "required"),
        ('[sensors.a]\ndriver = "nope"\n', "[sensors.a] driver", "no driver 'nope'"),
        ('[sensors.a]\ndriver = "simulated"\ninterval = -1\n', "[sensors.a] interval", ""),
        ('[sensors.a]\ndriver = "simulated"\ncolour = "red"\n', "[sensors.a] colour", "Unknown"),
        (
            '[sensors.a]\ndriver = "ds18b20"\noptions = { root = 5 }\n',
            "[sensors.a] options.root",
            "",
        ),
        ('[sensors.Bad]\ndriver = "simulated"\n', "[sensors.Bad]", "lowercase"),
        ('[sensor.a]\ndriver = "simulated"\n', "sensor", "expected only [sensors.<name>]"),
    ],
)
def test_a_bad_file_names_the_file_the_sensor_and_the_key(
    tmp_path: Path, text: str, key: str, problem: str
) -> None:
    with pytest.raises(ConfigError) as error:
        load(tmp_path, text)
    assert error.value.key == key
    assert error.value.source == str(tmp_path / "sensors.toml")
    assert problem in error.value.problem


def test_a_bad_sensors_file_stops_start_up(app_config: dict[str, object], tmp_path: Path) -> None:
    from edge_server import create_app

    path = tmp_path / "sensors.toml"
    path.write_text('[sensors.a]\ndriver = "simulated"\ninterval = "often"\n')
    with pytest.raises(ConfigError, match=r"\[sensors.a\] interval"):
        create_app({**app_config, "EDGE_SERVICES": "device-service", "EDGE_SENSORS": str(path)})
