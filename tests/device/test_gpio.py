"""gpio_in and gpio_out drivers on gpiozero's mock pins."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from gpiozero.pins.mock import MockFactory  # type: ignore[import-untyped]

from device_service.drivers.base import DriverError
from device_service.drivers.gpio import GpioIn, GpioOut
from tests.device.helpers import make


@pytest.fixture
def factory() -> Iterator[MockFactory]:
    factory = MockFactory()
    yield factory
    factory.reset()


def test_input_polls_the_pin(factory: MockFactory) -> None:
    driver = make(GpioIn, {"pin_factory": factory}, pin=17)
    pin = factory.pin(17)
    assert driver.read() == {"state": False}
    pin.drive_high()
    assert driver.read() == {"state": True}
    pin.drive_low()
    assert driver.read() == {"state": False}
    driver.close()


def test_input_with_pull_up_is_active_low(factory: MockFactory) -> None:
    driver = make(GpioIn, {"pin_factory": factory}, pin=4, pull_up=True)
    pin = factory.pin(4)
    assert pin.state  # pulled up
    assert driver.read() == {"state": False}
    pin.drive_low()
    assert driver.read() == {"state": True}
    driver.close()


def test_input_counts_edges(factory: MockFactory) -> None:
    driver = make(GpioIn, {"pin_factory": factory}, pin=27, mode="edge")
    pin = factory.pin(27)
    assert driver.read() == {"state": False, "edges": 0}
    for _ in range(3):
        pin.drive_high()
        pin.drive_low()
    pin.drive_high()
    assert driver.read() == {"state": True, "edges": 7}
    driver.close()


def test_output_switches_the_pin(factory: MockFactory) -> None:
    driver = make(GpioOut, {"pin_factory": factory}, pin=22)
    pin = factory.pin(22)
    assert (driver.read(), pin.state) == ({"state": False}, False)
    assert driver.write(True) == {"state": True}
    assert pin.state
    assert driver.write(False) == {"state": False}
    assert not pin.state
    driver.close()


def test_output_active_low_with_initial_on(factory: MockFactory) -> None:
    driver = make(GpioOut, {"pin_factory": factory}, pin=23, active_high=False, initial=True)
    pin = factory.pin(23)
    assert (driver.read(), pin.state) == ({"state": True}, False)
    driver.write(False)
    assert pin.state
    driver.close()


def test_a_pin_in_use_is_an_error_until_closed(factory: MockFactory) -> None:
    first = make(GpioOut, {"pin_factory": factory}, pin=5)
    with pytest.raises(DriverError, match="GPIO5"):
        make(GpioIn, {"pin_factory": factory}, pin=5)
    first.close()
    second = make(GpioIn, {"pin_factory": factory}, pin=5)
    second.close()


def test_reading_a_closed_driver_is_an_error(factory: MockFactory) -> None:
    driver = make(GpioOut, {"pin_factory": factory}, pin=6)
    driver.close()
    with pytest.raises(DriverError):
        driver.read()
    with pytest.raises(DriverError):
        driver.write(True)
