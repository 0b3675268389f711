"""Bosch BME280 temperature, humidity and pressure sensor on I2C, in forced mode."""

from __future__ import annotations

import logging
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import marshmallow as ma
import smbus2

from device_service.drivers.base import Driver, DriverError, Reading

logger = logging.getLogger(__name__)

CHIP_ID = 0x60
REG_CHIP_ID = 0xD0
REG_CALIB_TP = 0x88  # 0x88..0xA1: dig_T1..dig_P9, a reserved byte, dig_H1
REG_CALIB_H = 0xE1  # 0xE1..0xE7: dig_H2..dig_H6
REG_CTRL_HUM = 0xF2
REG_STATUS = 0xF3
REG_CTRL_MEAS = 0xF4
REG_CONFIG = 0xF5
REG_DATA = 0xF7  # 0xF7..0xFE: pressure, temperature (20 bit each), humidity (16 bit)
OSRS_X1 = 0b001
FORCED = 0b01
MEASURING = 0x08
SKIPPED_TP, SKIPPED_H = 0x80000, 0x8000  # what a skipped measurement reads
MEASURE_S = 0.01  # longest conversion with x1 oversampling of all three is 9.3 ms
TIMEOUT_S = 0.1


class SMBusLike(Protocol):
    """The part of smbus2.SMBus this driver uses."""

    def read_byte_data(self, i2c_addr: int, register: int) -> int: ...

    def read_i2c_block_data(self, i2c_addr: int, register: int, length: int) -> list[int]: ...

    def write_byte_data(self, i2c_addr: int, register: int, value: int) -> None: ...

    def close(self) -> None: ...


@dataclass(frozen=True)
class Calibration:
    """The trimming parameters stored in the chip's NVM."""

    t1: int
    t2: int
    t3: int
    p: tuple[int, ...]  # dig_P1..dig_P9
    h1: int
    h2: int
    h3: int
    h4: int
    h5: int
    h6: int

    @classmethod
    def from_registers(cls, tp: list[int], h: list[int]) -> Calibration:
        """Unpack 0x88..0xA1 (26 bytes) and 0xE1..0xE7 (7 bytes)."""
        t1, t2, t3, *p = struct.unpack("<HhhHhhhhhhhh", bytes(tp[:24]))
        h2, h3, e4, e5, e6, h6 = struct.unpack("<hBbBbb", bytes(h[:7]))
        # dig_H4 is 0xE4 (signed) then 0xE5[3:0]; dig_H5 is 0xE6 (signed) then 0xE5[7:4].
        h4, h5 = (e4 * 16) | (e5 & 0x0F), (e6 * 16) | (e5 >> 4)
        return cls(t1, t2, t3, tuple(p), tp[25], h2, h3, h4, h5, h6)


def compensate(cal: Calibration, adc_t: int, adc_p: int, adc_h: int) -> tuple[float, float, float]:
    """(°C, Pa, %RH) by the datasheet's double-precision formulas (BME280 section 8.1)."""
    var1 = (adc_t / 16384.0 - cal.t1 / 1024.0) * cal.t2
    var2 = (adc_t / 131072.0 - cal.t1 / 8192.0) ** 2 * cal.t3
    t_fine = var1 + var2
    temperature = t_fine / 5120.0

    p1, p2, p3, p4, p5, p6, p7, p8, p9 = cal.p
    var1 = t_fine / 2.0 - 64000.0
    var2 = var1 * var1 * p6 / 32768.0
    var2 = var2 + var1 * p5 * 2.0
    var2 = var2 / 4.0 + p4 * 65536.0
    var1 = (p3 * var1 * var1 / 524288.0 + p2 * var1) / 524288.0
    var1 = (1.0 + var1 / 32768.0) * p1
    if var1 == 0:
        raise DriverError("BME280 calibration gives a division by zero (dig_P1 = 0?)")
    pressure = 1048576.0 - adc_p
    pressure = (pressure - var2 / 4096.0) * 6250.0 / var1
    var1 = p9 * pressure * pressure / 2147483648.0
    var2 = pressure * p8 / 32768.0
    pressure = pressure + (var1 + var2 + p7) / 16.0

    var_h = t_fine - 76800.0
    var_h = (adc_h - (cal.h4 * 64.0 + cal.h5 / 16384.0 * var_h)) * (
        cal.h2 / 65536.0 * (1.0 + cal.h6 / 67108864.0 * var_h * (1.0 + cal.h3 / 67108864.0 * var_h))
    )
    var_h = var_h * (1.0 - cal.h1 * var_h / 524288.0)
    humidity = min(max(var_h, 0.0), 100.0)
    return temperature, pressure, humidity


class BME280Options(ma.Schema):
    """Options of the bme280 driver."""

    bus = ma.fields.Integer(
        load_default=1,
        validate=ma.validate.Range(min=0),
        metadata={"description": "I2C bus number, /dev/i2c-<bus> (1 on a Raspberry Pi)"},
    )
    address = ma.fields.Integer(
        load_default=0x76,
        validate=ma.validate.OneOf([0x76, 0x77]),
        metadata={"description": "I2C address: 118 (0x76, SDO low) or 119 (0x77, SDO high)"},
    )


class BME280(Driver):
    """Temperature °C, relative humidity % and pressure hPa, one forced measurement per read.

    The bus is opened and the chip checked and calibrated on the first read, and again on
    the read after a failure, so a sensor plugged in late or reset is picked up.
    """

    name = "bme280"
    Options = BME280Options
    quantities = {"temperature": "°C", "humidity": "%", "pressure": "hPa"}

    def __init__(
        self, *, smbus_factory: Callable[[int], SMBusLike] = smbus2.SMBus, **options: Any
    ) -> None:
        super().__init__(**options)
        self.address: int = options["address"]
        self._factory = smbus_factory
        self._bus: SMBusLike | None = None
        self._calibration: Calibration | None = None

    def read(self) -> Reading:
        """Trigger a measurement, wait for it and compensate it."""
        try:
            bus, cal = self._setup()
            bus.write_byte_data(self.address, REG_CTRL_HUM, OSRS_X1)  # applies at ctrl_meas
            bus.write_byte_data(self.address, REG_CTRL_MEAS, OSRS_X1 << 5 | OSRS_X1 << 2 | FORCED)
            self._wait(bus)
            data = bus.read_i2c_block_data(self.address, REG_DATA, 8)
        except OSError as exc:
            self.close()
            raise DriverError(f"BME280 at {self.address:#x}: {exc}") from exc
        adc_p = data[0] << 12 | data[1] << 4 | data[2] >> 4
        adc_t = data[3] << 12 | data[4] << 4 | data[5] >> 4
        adc_h = data[6] << 8 | data[7]
        if adc_t == SKIPPED_TP or adc_p == SKIPPED_TP or adc_h == SKIPPED_H:
            raise DriverError(f"BME280 at {self.address:#x} skipped a measurement")
        temperature, pressure, humidity = compensate(cal, adc_t, adc_p, adc_h)
        return {"temperature": temperature, "humidity": humidity, "pressure": pressure / 100}

    def close(self) -> None:
        """Close the I2C bus; the next read opens it again."""
        bus, self._bus, self._calibration = self._bus, None, None
        if bus is not None:
            try:
                bus.close()
            except OSError:
                logger.debug("closing I2C bus %s failed", self.options["bus"], exc_info=True)

    def _setup(self) -> tuple[SMBusLike, Calibration]:
        """The open bus and the calibration, after checking the chip id."""
        if self._bus is not None and self._calibration is not None:
            return self._bus, self._calibration
        self._bus = bus = self._factory(self.options["bus"])
        chip = bus.read_byte_data(self.address, REG_CHIP_ID)
        if chip != CHIP_ID:
            self.close()
            raise DriverError(
                f"chip id {chip:#04x} at {self.address:#x} is not a BME280 ({CHIP_ID:#04x})"
            )
        self._calibration = Calibration.from_registers(
            bus.read_i2c_block_data(self.address, REG_CALIB_TP, 26),
            bus.read_i2c_block_data(self.address, REG_CALIB_H, 7),
        )
        bus.write_byte_data(self.address, REG_CONFIG, 0)  # no IIR filter, no standby
        logger.info("BME280 found at %#x on bus %s", self.address, self.options["bus"])
        return bus, self._calibration

    def _wait(self, bus: SMBusLike) -> None:
        """Sleep through the conversion, then until the status has no "measuring" bit."""
        time.sleep(MEASURE_S)
        deadline = time.monotonic() + TIMEOUT_S
        while bus.read_byte_data(self.address, REG_STATUS) & MEASURING:
            if time.monotonic() > deadline:
                raise DriverError(f"BME280 at {self.address:#x}: measurement did not finish")
            time.sleep(0.002)
