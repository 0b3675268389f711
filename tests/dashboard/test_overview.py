"""The overview page: services and health, live states, the device's figures."""

from __future__ import annotations

from pathlib import Path

import pytest
from playwright.sync_api import Browser, expect

from pyedge.security import Role
from tests.dashboard.conftest import DESKTOP, PHONE, Edge, Login


def test_the_overview_shows_services_health_and_the_device(login: Login, edge: Edge) -> None:
    page = login(Role.ADMIN)
    expect(page.locator("h1")).to_have_text("Overview")
    row = page.locator('tr[data-slug="custom-service"]')
    expect(row.locator("[data-health]")).to_have_text("ok")
    expect(page.locator("#broker-status")).to_have_text("connected")
    expect(page.locator('[data-figure="memory"]')).to_contain_text("used of")
    expect(page.locator('[data-figure="disk"]')).to_contain_text("free of")
    expect(page.locator("#outboxes")).to_contain_text("waiting")
    expect(page.locator("#audit tbody tr").first).not_to_contain_text("Loading")


def test_a_viewer_sees_no_admin_link(login: Login) -> None:
    page = login(Role.VIEWER)
    nav = page.get_by_role("navigation", name="Main")
    expect(nav.get_by_role("link", name="Sensors")).to_be_visible()
    expect(nav.get_by_role("link", name="Admin")).to_have_count(0)
    expect(nav.get_by_role("link", name="Users")).to_have_count(0)
    expect(page.locator("#audit")).to_have_count(0)
    expect(page.get_by_role("link", name="Admin")).to_have_count(0)


def test_the_menu_folds_on_a_phone(login: Login) -> None:
    page = login(Role.OPERATOR, viewport=PHONE)
    nav = page.get_by_role("navigation", name="Main")
    expect(nav).to_be_hidden()
    page.get_by_role("button", name="Menu").click()
    expect(nav.get_by_role("link", name="Operations")).to_be_visible()


def test_screenshots_of_the_login_and_the_overview(
    browser: Browser, login: Login, edge: Edge, screenshots: Path | None
) -> None:
    if screenshots is None:
        pytest.skip("PYEDGE_SCREENSHOTS is not set (make screenshots)")
    screenshots.mkdir(parents=True, exist_ok=True)
    context = browser.new_context(viewport=DESKTOP)
    stranger = context.new_page()
    stranger.goto(f"{edge.url}/login")
    stranger.screenshot(path=str(screenshots / "login-desktop.png"))
    context.close()
    for name, viewport in (("desktop", DESKTOP), ("phone", PHONE)):
        page = login(Role.ADMIN, viewport=viewport)
        expect(page.locator('[data-figure="memory"]')).to_contain_text("used of")
        expect(page.locator("#audit tbody tr").first).not_to_contain_text("Loading")
        page.screenshot(path=str(screenshots / f"overview-{name}.png"), full_page=True)
