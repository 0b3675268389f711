"""The sensors page: live values from the bus, history charts, actuators as switches."""

from __future__ import annotations

import json
import re
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion
from playwright.sync_api import Locator, Page, expect

from pyedge.security import Role
from tests.dashboard.conftest import DESKTOP, PHONE, Edge, Login, w1_slave

# The page must show a reading this soon after the broker delivered it.
LIVE_WITHIN_S = 2.0


class Watcher:
    """A plain MQTT client on the node's broker that notes when a reading first arrives."""

    def __init__(self, edge: Edge, topic: str) -> None:
        self.topic = topic
        self.arrivals: dict[float, float] = {}
        self._changed = threading.Condition()
        subscribed = threading.Event()
        self.client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=f"sensors-page-{uuid.uuid4().hex[:8]}",
            protocol=MQTTProtocolVersion.MQTTv5,
        )
        self.client.username_pw_set(**edge.mqtt_login())
        self.client.on_message = self._on_message
        self.client.on_subscribe = lambda *args: subscribed.set()
        self.client.connect("127.0.0.1", edge.node.mqtt_port)
        self.client.loop_start()
        self.client.subscribe(topic, qos=1)
        assert subscribed.wait(5), f"no SUBACK for {topic}"

    def _on_message(self, client: Any, userdata: Any, message: mqtt.MQTTMessage) -> None:
        value = json.loads(message.payload).get("value")
        with self._changed:
            self.arrivals.setdefault(value, time.monotonic())
            self._changed.notify_all()

    def first(self, value: float, timeout: float = 10) -> float:
        """The monotonic time the first reading of `value` arrived."""
        with self._changed:
            assert self._changed.wait_for(lambda: value in self.arrivals, timeout), (
                f"no reading of {value} on {self.topic}: {sorted(self.arrivals)}"
            )
            return self.arrivals[value]

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


@pytest.fixture
def watcher(edge: Edge) -> Iterator[Watcher]:
    watching = Watcher(edge, f"pyedge/{edge.node_id}/device-service/sensors/water")
    yield watching
    watching.close()


def number(text: str) -> re.Pattern[str]:
    """The page's rendering of a number in either decimal style."""
    return re.compile("^" + re.escape(text).replace(r"\.", "[.,]") + "$")


def sensors_page(login: Login, edge: Edge, role: Role, viewport: dict[str, int] = DESKTOP) -> Page:
    """A logged-in page on /sensors."""
    page = login(role, viewport=viewport)
    page.goto(f"{edge.url}/sensors")
    expect(page.locator("h1")).to_have_text("Sensors")
    return page


def card(page: Page, sensor: str) -> Locator:
    return page.locator(f'article.sensor[data-sensor="{sensor}"]')


def open_history(page: Page, sensor: str) -> Locator:
    """Open a sensor's history and wait for its chart to be drawn; returns its card."""
    found = card(page, sensor)
    found.get_by_role("button", name="Show history").click()
    expect(found.get_by_role("button", name="Hide history")).to_have_attribute(
        "aria-expanded", "true"
    )
    expect(found.locator("[data-chart] canvas")).to_have_count(1)
    return found


def points(sensor_card: Locator) -> int:
    """The points the sensor's chart holds now (its data attribute)."""
    return int(sensor_card.locator("[data-chart]").get_attribute("data-points") or 0)


def wait_until(page: Page, check: Callable[[], bool], timeout: float = 5, what: str = "") -> None:
    """Poll `check` while the page runs: the route guard needs Playwright's loop to turn."""
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        page.wait_for_timeout(50)


def pump_state(edge: Edge) -> bool | None:
    status, actuators = edge.node.call("/api/device-service/actuators")
    assert status == 200, actuators
    return next(a["state"] for a in actuators if a["name"] == "pump")


def test_a_reading_on_the_bus_is_shown_within_two_seconds(
    login: Login, edge: Edge, watcher: Watcher
) -> None:
    page = sensors_page(login, edge, Role.VIEWER)
    water = card(page, "water")
    value = water.locator('[data-quantity="value"]')
    expect(water.locator("[data-availability]")).to_have_text("online")
    expect(water.locator(".value small")).to_have_text("°C")
    edge.set_water(22250)
    expect(value).to_have_text(number("22.25"), timeout=5000)

    edge.set_water(23500)
    published = watcher.first(23.5)
    # Measured from the broker's delivery of the reading, not from the file change: the
    # sampling interval (0.5 s) is not part of the 2 s.
    expect(value).to_have_text(number("23.5"), timeout=LIVE_WITHIN_S * 1000)
    assert time.monotonic() - published < LIVE_WITHIN_S
    expect(water.locator("[data-updated]")).to_contain_text("read ")


def test_a_history_chart_has_points_and_grows_live(login: Login, edge: Edge) -> None:
    page = sensors_page(login, edge, Role.VIEWER)
    water = open_history(page, "water")
    chart = water.locator("[data-chart]")
    water.get_by_label("24 h").check()
    expect(chart).to_have_attribute("data-points", re.compile(r"^[1-9]\d*$"))
    expect(water.locator("[data-summary]")).to_contain_text("updating live")

    water.get_by_label("1 h").check()
    expect(chart).to_have_attribute("data-points", re.compile(r"^[1-9]\d*$"))
    before = points(water)
    # Readings every 0.5 s are appended as they arrive (at worst one per history bucket).
    wait_until(page, lambda: points(water) > before, timeout=10, what="a live point")
    expect(water.locator(".u-legend")).to_contain_text("temperature (°C)")

    water.get_by_role("button", name="Hide history").click()
    expect(water.locator(".history")).to_be_hidden()


def test_a_custom_range_ending_before_it_starts_is_refused(login: Login, edge: Edge) -> None:
    page = sensors_page(login, edge, Role.VIEWER)
    water = open_history(page, "water")
    expect(water.get_by_label("From", exact=True)).to_be_hidden()
    water.get_by_label("Custom").check()
    water.get_by_label("From", exact=True).fill("2026-05-02T10:00")
    water.get_by_label("To", exact=True).fill("2026-05-01T10:00")
    water.get_by_role("button", name="Show").click()
    expect(water.get_by_role("alert")).to_have_text("The end of the range must be after its start.")

    # A good custom range shows what it holds, not live.
    now = time.time()
    local = "%Y-%m-%dT%H:%M"
    water.get_by_label("From", exact=True).fill(time.strftime(local, time.localtime(now - 3600)))
    water.get_by_label("To", exact=True).fill(time.strftime(local, time.localtime(now + 120)))
    water.get_by_label("To", exact=True).press("Enter")
    expect(water.locator("[data-range-error]")).to_be_empty()
    expect(water.locator("[data-chart]")).to_have_attribute(
        "data-points", re.compile(r"^[1-9]\d*$")
    )
    expect(water.locator("[data-summary]")).not_to_contain_text("live")


def test_an_operator_switches_the_pump(login: Login, edge: Edge) -> None:
    page = sensors_page(login, edge, Role.OPERATOR)
    switch = page.get_by_role("switch", name="pump")
    before = pump_state(edge)
    assert before is not None
    expect(switch).to_be_checked(checked=before)

    switch.click()
    wait_until(page, lambda: pump_state(edge) is (not before), what="the pump to switch")
    expect(switch).to_be_checked(checked=not before)
    expect(page.locator('[data-actuator-row="pump"] [data-actuator-state]')).to_have_text(
        "on" if not before else "off"
    )
    # The pump's own reading follows on its sensor card.
    expect(card(page, "pump").locator('[data-quantity="value"]')).to_have_text(
        "on" if not before else "off", timeout=10000
    )

    # And back, by keyboard (once the first answer is in: the switch is disabled till then).
    expect(switch).to_be_enabled()
    switch.focus()
    page.keyboard.press("Space")
    wait_until(page, lambda: pump_state(edge) is before, what="the pump to switch back")
    expect(switch).to_be_checked(checked=before)


def test_a_viewer_sees_the_pump_but_no_switch(login: Login, edge: Edge) -> None:
    page = sensors_page(login, edge, Role.VIEWER)
    row = page.locator('[data-actuator-row="pump"]')
    expect(row).to_contain_text("pump")
    expect(row.locator("[data-actuator-state]")).to_have_text("on" if pump_state(edge) else "off")
    expect(page.get_by_role("switch")).to_have_count(0)
    expect(page.locator("input[type=checkbox]")).to_have_count(0)


def test_charts_fit_a_phone_and_open_by_keyboard(
    login: Login, edge: Edge, screenshots: Path | None
) -> None:
    page = sensors_page(login, edge, Role.OPERATOR)
    expect(page.locator("section.node h2")).to_contain_text("(this one)")
    water = open_history(page, "water")
    expect(water.locator("[data-chart]")).to_have_attribute(
        "data-points", re.compile(r"^[1-9]\d*$")
    )
    wide = water.locator("[data-chart] canvas").bounding_box()
    assert wide is not None and wide["width"] > PHONE["width"]
    if screenshots:
        page.screenshot(path=str(screenshots / "sensors-desktop.png"), full_page=True)

    # Turned into a phone: the open chart follows its card's width.
    page.set_viewport_size(PHONE)
    wait_until(
        page,
        lambda: (
            (box := water.locator("[data-chart] canvas").bounding_box()) is not None
            and box["x"] + box["width"] <= PHONE["width"]
        ),
        what="the chart to shrink",
    )
    assert page.evaluate("document.documentElement.scrollWidth") <= PHONE["width"]

    # A fresh phone page, by keyboard alone: Tab to the greenhouse's history and open it.
    page = sensors_page(login, edge, Role.OPERATOR, PHONE)
    greenhouse = card(page, "greenhouse")
    button = greenhouse.get_by_role("button", name="Show history")
    expect(button).to_be_visible()
    for _ in range(40):
        page.keyboard.press("Tab")
        if button.evaluate("b => b === document.activeElement"):
            break
    else:
        pytest.fail("the history button is not reachable by Tab")
    page.keyboard.press("Enter")
    expect(greenhouse.locator("[data-chart]")).to_have_attribute(
        "data-points", re.compile(r"^[1-9]\d*$")
    )
    assert page.evaluate("document.documentElement.scrollWidth") <= PHONE["width"]
    if screenshots:
        page.screenshot(path=str(screenshots / "sensors-phone.png"), full_page=True)


def test_a_failing_sensor_shows_offline_with_its_error(login: Login, edge: Edge) -> None:
    page = sensors_page(login, edge, Role.VIEWER)
    water = card(page, "water")
    expect(water.locator("[data-availability]")).to_have_text("online")
    broken = edge.w1_slave.with_name("w1_slave.new")
    broken.write_text(w1_slave(22000).replace("YES", "NO"))
    broken.replace(edge.w1_slave)
    try:
        expect(water.locator("[data-availability]")).to_have_text("offline", timeout=5000)
        expect(water.locator("[data-error]")).to_contain_text("CRC check failed")
    finally:
        edge.set_water(21375)
    expect(water.locator("[data-availability]")).to_have_text("online", timeout=5000)
    expect(water.locator("[data-error]")).to_be_empty()
