"""The admin pages: every service's settings, health, operations and log, and its own panels."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import Locator, Page, expect

from pyedge.security import Role
from tests.dashboard.conftest import PHONE, Edge, Login

DEVICE = "/api/device-service"
# The sensor these tests edit, and its interval in the node's sensors file.
SENSOR = "greenhouse"
FILE_INTERVAL = 1.0


def sensor(edge: Edge, name: str = SENSOR) -> dict[str, Any]:
    """The sensor as the API shows it."""
    status, body = edge.node.call(f"{DEVICE}/sensors/{name}")
    assert status == 200, body
    return body


@pytest.fixture
def greenhouse(edge: Edge) -> Iterator[None]:
    """The session's node keeps the sensor as its file has it, whatever a test changed."""
    yield
    status, body = edge.node.call(
        f"{DEVICE}/sensors/{SENSOR}", "PATCH", {"interval": FILE_INTERVAL, "offset": 0.0}
    )
    assert status == 200, body


def admin_page(login: Login, edge: Edge, slug: str, **kwargs: Any) -> Page:
    """The admin page of a service of this node, reached from the Admin menu as a person does."""
    page = login(Role.ADMIN, **kwargs)
    page.goto(f"{edge.url}/")
    nav = page.get_by_role("navigation", name="Main")
    if kwargs.get("viewport") == PHONE:
        page.get_by_role("button", name="Menu").click()
    nav.get_by_role("link", name="Admin").click()
    expect(page.locator("h1")).to_have_text("Admin")
    row = page.locator(f'tr[data-slug="{slug}"][data-node="{edge.node_id}"]')
    row.get_by_role("link").click()
    expect(page).to_have_url(f"{edge.url}/admin/{slug}?node={edge.node_id}")
    expect(page.locator("#health [data-body] .badge").first).to_be_visible()
    return page


def panel(page: Page, title: str) -> Locator:
    return page.locator(f'section.panel[data-panel="{title}"]')


def test_the_device_service_page_edits_a_sensor_interval(
    login: Login, edge: Edge, greenhouse: None
) -> None:
    page = admin_page(login, edge, "device-service")
    sensors = panel(page, "Sensors")
    expect(sensors.get_by_role("heading", name="Sensors")).to_be_visible()
    row = sensors.locator(f'tr[data-key="{SENSOR}"]')
    expect(row.locator('[data-column="driver"]')).to_have_text("simulated")
    expect(row.locator('[data-column="interval"]')).to_have_text("1")
    expect(sensors.locator('tr[data-key="water"] [data-column="interval"]')).to_have_text("0.5")

    row.get_by_role("button", name=f"Edit {SENSOR}").click()
    edit = sensors.get_by_role("form", name=f"Edit {SENSOR}")
    interval = edit.get_by_label("interval")
    expect(interval).to_be_focused()
    expect(interval).to_have_value("1")  # prefilled with the row
    expect(edit.get_by_label("scale")).to_have_value("1")
    interval.fill("2.5")
    edit.get_by_label("offset").fill("0.25")
    edit.get_by_role("button", name="Save").click()

    expect(edit).to_have_count(0)
    expect(row.locator('[data-column="interval"]')).to_have_text("2.5")
    expect(row.locator('[data-column="offset"]')).to_have_text("0.25")
    changed = sensor(edge)
    assert changed["interval"] == 2.5
    assert changed["offset"] == 0.25
    assert sensor(edge, "water")["interval"] == 0.5


def test_an_invalid_interval_shows_the_apis_message_at_the_field(
    login: Login, edge: Edge, greenhouse: None
) -> None:
    page = admin_page(login, edge, "device-service")
    sensors = panel(page, "Sensors")
    sensors.get_by_role("button", name=f"Edit {SENSOR}").click()
    edit = sensors.get_by_role("form", name=f"Edit {SENSOR}")
    edit.get_by_label("interval").fill("0")
    edit.get_by_role("button", name="Save").click()
    error = edit.locator('[data-error-for="interval"]')
    expect(error).to_contain_text("greater than or equal to 0.01")
    expect(edit.get_by_label("interval")).to_have_attribute("aria-invalid", "true")
    assert sensor(edge)["interval"] == FILE_INTERVAL
    edit.get_by_role("button", name="Cancel").click()
    expect(edit).to_have_count(0)
    expect(sensors.get_by_role("button", name=f"Edit {SENSOR}")).to_be_focused()


def test_the_generic_sections_show_settings_health_operations_and_log(
    login: Login, edge: Edge
) -> None:
    page = admin_page(login, edge, "device-service")
    expect(page.locator('#health tr[data-check="sensors_and_outbox"] .badge')).to_have_text("ok")
    sensors_setting = page.locator('#settings tr[data-key="EDGE_DEVICE_SERVICE_SENSORS"]')
    expect(sensors_setting.locator(".source")).to_have_text("environment EDGE_SENSORS")
    expect(sensors_setting.locator(".value")).to_contain_text("sensors.toml")
    node_id = page.locator('#settings [data-group="core"] tr[data-key="EDGE_NODE_ID"]')
    expect(node_id.locator(".value")).to_have_text(edge.node_id)
    expect(page.locator('#operations tr[data-op="acquire"] [data-state]')).to_have_text("running")

    # A Task logs from its thread: after a refresh its lines are in the service's log.
    status, body = edge.node.call(f"{DEVICE}/ops/read/start", "POST", {"sensors": [SENSOR]})
    assert status == 202, body
    edge.node.call(f"{DEVICE}/ops/read/wait?timeout=10", "POST")
    page.get_by_role("button", name="Refresh").click()
    expect(page.locator("#log pre")).to_contain_text("read: read 1 sensors")
    expect(page.locator('#operations tr[data-op="read"] [data-state]')).to_have_text("done")


def test_the_container_manager_page_shows_the_policy(login: Login, edge: Edge) -> None:
    page = admin_page(login, edge, "container-manager")
    policy = panel(page, "Security policy in force")
    expect(policy.locator("dt").first).to_have_text("Allow privileged")
    expect(policy.locator('[data-fact="allow_privileged"]')).to_have_text("no")
    expect(policy.locator('[data-fact="system_dirs"]')).to_contain_text("/etc, /proc")
    expect(policy.locator('[data-fact="security_opt"]')).to_contain_text("no-new-privileges")
    expect(policy.locator('[data-fact="engine_socket"]')).to_contain_text(".sock")
    expect(policy.get_by_role("button")).to_have_count(0)  # read-only


def test_the_custom_service_page_restarts_its_heartbeat(login: Login, edge: Edge) -> None:
    status, before = edge.node.call("/api/custom-service/heartbeat")
    assert status == 200, before
    page = admin_page(login, edge, "custom-service")
    heartbeat = panel(page, "Heartbeat")
    expect(heartbeat.locator("dt").first).to_have_text("Running")  # the declared order
    running = "yes" if before["running"] else "no"
    expect(heartbeat.locator('[data-fact="running"]')).to_have_text(running)
    try:
        heartbeat.get_by_role("button", name="Edit Heartbeat").click()
        edit = heartbeat.get_by_role("form", name="Edit Heartbeat")
        edit.get_by_label("interval").fill("0.5")
        edit.get_by_role("button", name="Save").click()
        expect(heartbeat.locator('[data-fact="interval"]')).to_have_text("0.5")
        status, after = edge.node.call("/api/custom-service/ops/heartbeat")
        assert after["state"] == "running" and after["params"] == {"interval": 0.5}
    finally:
        # The session's node keeps the heartbeat as it was.
        if before["running"]:
            edge.node.call("/api/custom-service/heartbeat", "PUT", {"interval": before["interval"]})
        else:
            edge.node.call("/api/custom-service/ops/heartbeat/stop", "POST")


@pytest.mark.parametrize("role", [Role.VIEWER, Role.OPERATOR])
def test_only_an_admin_sees_the_admin_pages(login: Login, edge: Edge, role: Role) -> None:
    page = login(role)
    nav = page.get_by_role("navigation", name="Main")
    expect(nav.get_by_role("link", name="Operations")).to_be_visible()
    expect(nav.get_by_role("link", name="Admin")).to_have_count(0)
    for path in ("/admin", f"/admin/device-service?node={edge.node_id}"):
        response = page.goto(f"{edge.url}{path}")
        assert response is not None and response.status == 403, path
    status, _body = edge.node.call("/api/device-service/admin")
    assert status == 200  # the admin's token still reads it


def test_the_admin_page_works_on_a_phone(
    login: Login, edge: Edge, greenhouse: None, screenshots: Path | None
) -> None:
    page = admin_page(login, edge, "device-service")
    expect(panel(page, "Sensors").locator(f'tr[data-key="{SENSOR}"]')).to_be_visible()
    expect(page.locator("#log pre")).not_to_have_text("Loading…")
    if screenshots:
        page.screenshot(path=str(screenshots / "admin-desktop.png"), full_page=True)

    phone = admin_page(login, edge, "device-service", viewport=PHONE)
    sensors = panel(phone, "Sensors")
    edit_button = sensors.get_by_role("button", name=f"Edit {SENSOR}")
    edit_button.scroll_into_view_if_needed()
    expect(edit_button).to_be_visible()
    # Nothing wider than the phone but the tables, which scroll in their own box.
    width = phone.evaluate("document.documentElement.scrollWidth")
    assert width <= PHONE["width"], f"the page is {width} px wide on a phone"
    edit_button.click()
    edit = sensors.get_by_role("form", name=f"Edit {SENSOR}")
    expect(edit.get_by_label("interval")).to_be_in_viewport()
    if screenshots:
        phone.screenshot(path=str(screenshots / "admin-phone.png"), full_page=True)
