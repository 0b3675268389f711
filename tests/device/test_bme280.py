"""bme280 driver over a fake SMBus loaded with the datasheet's worked example."""

from __future__ import annotations

import struct

import marshmallow as ma
import pytest

from device_service.drivers.base import DriverError
from device_service.drivers.bme280 import BME280, Calibration
from tests.device.helpers import make

# The BMP280/BME280 datasheet example: these trimming values with adc_T = 519888 and
# adc_P = 415148 give T = 25.08 °C (t_fine = 128422) and p = 100653.27 Pa.
T = (27504, 26435, -1000)
P = (36477, -10685, 3024, 2855, 140, -7, 15500, -14600, 6000)
ADC_T, ADC_P = 519888, 415148
# Humidity trimming values of the kind a real BME280 holds.
H = {"h1": 75, "h2": 362, "h3": 0, "h4": 313, "h5": 50, "h6": 30}
ADC_H = 30000


def calibration_registers(h: dict[str, int]) -> dict[int, int]:
    """0x88..0xA1 and 0xE1..0xE7 encoded as the datasheet's memory map lays them out."""
    tp = struct.pack("<HhhHhhhhhhhh", *T, *P) + bytes([0, h["h1"]])
    packed = struct.pack("<hB", h["h2"], h["h3"]) + bytes(
        [
            (h["h4"] >> 4) & 0xFF,  # 0xE4: dig_H4[11:4]
            ((h["h5"] & 0x0F) << 4) | (h["h4"] & 0x0F),  # 0xE5: dig_H5[3:0], dig_H4[3:0]
            (h["h5"] >> 4) & 0xFF,  # 0xE6: dig_H5[11:4]
            h["h6"] & 0xFF,
        ]
    )
    registers = dict(enumerate(tp, start=0x88))
    registers.update(enumerate(packed, start=0xE1))
    return registers


def data_registers(adc_t: int, adc_p: int, adc_h: int) -> dict[int, int]:
    """0xF7..0xFE: press msb/lsb/xlsb, temp msb/lsb/xlsb, hum msb/lsb."""
    raw = [adc_p >> 12, (adc_p >> 4) & 0xFF, (adc_p & 0x0F) << 4]
    raw += [adc_t >> 12, (adc_t >> 4) & 0xFF, (adc_t & 0x0F) << 4, adc_h >> 8, adc_h & 0xFF]
    return dict(enumerate(raw, start=0xF7))


class FakeSMBus:
    """A BME280 at one address on a fake I2C bus: registers in a dict, writes recorded."""

    def __init__(self, address: int = 0x76, chip_id: int = 0x60) -> None:
        self.address = address
        self.registers = {0xD0: chip_id, 0xF3: 0}
        self.registers.update(calibration_registers(H))
        self.registers.update(data_registers(ADC_T, ADC_P, ADC_H))
        self.writes: list[tuple[int, int]] = []
        self.opened: list[int] = []
        self.closed = False

    def __call__(self, bus: int) -> FakeSMBus:
        """Stands in for smbus2.SMBus(bus)."""
        self.opened.append(bus)
        self.closed = False
        return self

    def _check(self, i2c_addr: int) -> None:
        if i2c_addr != self.address:
            raise OSError(121, "Remote I/O error")

    def read_byte_data(self, i2c_addr: int, register: int) -> int:
        self._check(i2c_addr)
        return self.registers.get(register, 0)

    def read_i2c_block_data(self, i2c_addr: int, register: int, length: int) -> list[int]:
        self._check(i2c_addr)
        return [self.registers.get(register + i, 0) for i in range(length)]

    def write_byte_data(self, i2c_addr: int, register: int, value: int) -> None:
        self._check(i2c_addr)
        self.writes.append((register, value))
        self.registers[register] = value

    def close(self) -> None:
        self.closed = True


def humidity_int32(adc_t: int, adc_h: int) -> float:
    """%RH by the datasheet's other formula, the 32-bit integer one (section 4.2.3)."""
    t1, t2, t3 = T
    var1 = (((adc_t >> 3) - (t1 << 1)) * t2) >> 11
    var2 = (((((adc_t >> 4) - t1) * ((adc_t >> 4) - t1)) >> 12) * t3) >> 14
    t_fine = var1 + var2
    assert t_fine == 128422  # the datasheet's value
    v = t_fine - 76800
    v = ((((adc_h << 14) - (H["h4"] << 20) - (H["h5"] * v)) + 16384) >> 15) * (
        (
            (((((v * H["h6"]) >> 10) * (((v * H["h3"]) >> 11) + 32768)) >> 10) + 2097152) * H["h2"]
            + 8192
        )
        >> 14
    )
    v = v - (((((v >> 15) * (v >> 15)) >> 7) * H["h1"]) >> 4)
    v = min(max(v, 0), 419430400)
    return (v >> 12) / 1024


def test_datasheet_example() -> None:
    bus = FakeSMBus()
    reading = make(BME280, {"smbus_factory": bus}).read()
    assert reading["temperature"] == pytest.approx(25.08, abs=0.005)
    assert reading["pressure"] == pytest.approx(1006.5327, abs=0.0005)
    assert reading["humidity"] == pytest.approx(humidity_int32(ADC_T, ADC_H), abs=0.01)
    assert reading["humidity"] == pytest.approx(55.0, abs=0.01)
    assert set(reading) == set(BME280.quantities)
    assert bus.opened == [1]


def test_each_read_is_a_forced_measurement_after_ctrl_hum() -> None:
    bus = FakeSMBus(address=0x77)
    driver = make(BME280, {"smbus_factory": bus}, bus=3, address=0x77)
    driver.read()
    bus.registers.update(data_registers(ADC_T, ADC_P, 0))
    assert driver.read()["humidity"] == 0.0  # clamped at 0 %RH
    measure = [write for write in bus.writes if write[0] in (0xF2, 0xF4)]
    assert measure == [(0xF2, 0x01), (0xF4, 0x25)] * 2  # x1 oversampling, forced mode
    assert bus.opened == [3]  # calibrated once
    driver.close()
    assert bus.closed


def test_h4_h5_packing_keeps_the_sign() -> None:
    h = {"h1": 0, "h2": -300, "h3": 200, "h4": -1234, "h5": -7, "h6": -20}
    registers = calibration_registers(h)
    tp = [registers[0x88 + i] for i in range(26)]
    cal = Calibration.from_registers(tp, [registers[0xE1 + i] for i in range(7)])
    assert (cal.t1, cal.t2, cal.t3, cal.p) == (*T, P)
    assert (cal.h1, cal.h2, cal.h3, cal.h4, cal.h5, cal.h6) == tuple(h.values())


def test_wrong_chip_id_is_an_error() -> None:
    bus = FakeSMBus(chip_id=0x58)  # a BMP280: no humidity
    with pytest.raises(DriverError, match="0x58 at 0x76 is not a BME280"):
        make(BME280, {"smbus_factory": bus}).read()
    assert bus.closed


def test_no_answer_is_an_error_and_the_next_read_retries() -> None:
    bus = FakeSMBus(address=0x77)
    driver = make(BME280, {"smbus_factory": bus})
    with pytest.raises(DriverError, match="Remote I/O error"):
        driver.read()
    assert bus.closed
    bus.address = 0x76
    assert driver.read()["temperature"] == pytest.approx(25.08, abs=0.005)
    assert bus.opened == [1, 1]


def test_skipped_or_unfinished_measurements_are_errors() -> None:
    bus = FakeSMBus()
    driver = make(BME280, {"smbus_factory": bus})
    bus.registers.update(data_registers(0x80000, ADC_P, ADC_H))
    with pytest.raises(DriverError, match="skipped"):
        driver.read()
    bus.registers.update(data_registers(ADC_T, ADC_P, ADC_H))
    bus.registers[0xF3] = 0x08  # measuring, forever
    with pytest.raises(DriverError, match="did not finish"):
        driver.read()


def test_address_must_be_a_bme280_address() -> None:
    assert BME280.Options().load({}) == {"bus": 1, "address": 0x76}
    with pytest.raises(ma.ValidationError):
        BME280.Options().load({"address": 0x50})
