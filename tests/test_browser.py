"""The pages in a real Chromium: the front page, and Swagger UI working with no internet."""

from __future__ import annotations

import logging
import re
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import marshmallow as ma
import pytest
from flask import Flask
from playwright.sync_api import Browser, Page, Route, expect
from werkzeug.serving import make_server

from edge_server import create_app
from pyedge import AdminPanel, EdgeService
from pyedge.auth import EXTENSION as AUTH_EXTENSION
from pyedge.security import Role

PASSWORD = "browser-secret-1"


@pytest.fixture
def page(browser: Browser, base_url: str, app: Flask) -> Iterator[Page]:
    """A page logged in as an operator, that may load nothing but the node itself."""
    outside: list[str] = []
    app.extensions[AUTH_EXTENSION].accounts.add_user("olga", PASSWORD, Role.OPERATOR)
    page = browser.new_page()

    def local_only(route: Route) -> None:
        if urlparse(route.request.url).netloc == urlparse(base_url).netloc:
            route.continue_()
        else:
            outside.append(route.request.url)
            route.abort()

    page.route("**/*", local_only)
    log_in(page, base_url)
    yield page
    page.close()
    assert outside == [], f"the page tried to load from outside the node: {outside}"


def log_in(page: Page, base_url: str) -> None:
    """Log in through the login page, as a person does."""
    page.goto(base_url)  # a stranger is sent to the login page
    assert "/login" in page.url
    page.get_by_label("Name").fill("olga")
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Log in").click()
    page.wait_for_url(f"{base_url}/")


def test_swagger_ui_renders_every_operation_offline(
    page: Page, base_url: str, tmp_path: Path
) -> None:
    page.goto(f"{base_url}/api/docs")
    page.wait_for_selector(".opblock-summary-path", timeout=15000)
    paths = page.locator(".opblock-summary-path").all_inner_texts()
    paths = [p.replace("\u200b", "").strip() for p in paths]
    assert "/api/custom-service/ops/sleep/start" in paths
    assert "/api/health" in paths
    assert page.locator(".info .title").inner_text().startswith("PyEdge")
    page.screenshot(path=str(tmp_path / "docs.png"))


def test_swagger_ui_runs_an_operation(page: Page, base_url: str) -> None:
    page.goto(f"{base_url}/api/docs")
    block = page.locator(".opblock", has=page.locator('[data-path="/api/custom-service/hello"]'))
    block.locator(".opblock-summary").click()
    block.get_by_role("button", name="Try it out").click()
    block.get_by_role("button", name="Execute").click()
    body = block.locator(".responses-wrapper .live-responses-table .microlight").first
    body.wait_for(timeout=10000)
    assert "Hello, world!" in body.inner_text()


def test_swagger_ui_starts_an_operation_through_the_session(page: Page, base_url: str) -> None:
    # A POST through the login session: Swagger UI must send the CSRF token.
    page.goto(f"{base_url}/api/docs")
    path = "/api/custom-service/ops/sleep/start"
    block = page.locator(".opblock", has=page.locator(f'[data-path="{path}"]'))
    block.locator(".opblock-summary").click()
    block.get_by_role("button", name="Try it out").click()
    block.locator("textarea.body-param__text").fill('{"seconds": 0.1}')
    block.get_by_role("button", name="Execute").click()
    status = block.locator(".live-responses-table tbody .response-col_status").first
    status.wait_for(timeout=10000)
    assert status.inner_text().strip().startswith("202")


def test_front_page_shows_services_and_health(page: Page, base_url: str, node_id: str) -> None:
    page.goto(base_url)
    assert page.locator("h1").inner_text() == "Overview"
    assert node_id in page.locator(".brand").inner_text()
    row = page.locator('tr[data-slug="custom-service"]')
    assert row.locator("[data-health]").inner_text() == "ok"
    # The session states arrive retained on the live channel.
    expect(row.locator('[data-op="sleep"] [data-state]')).to_have_text("idle")
    page.get_by_role("link", name="API docs").click()
    page.wait_for_selector(".opblock-summary-path", timeout=15000)


def test_first_run_then_log_out_and_in_again(
    browser: Browser, base_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    # The app of `base_url` has no user yet: its log (at setup) has the one-time code.
    code = setup_code_of(caplog.get_records("setup"))
    page = browser.new_page()
    try:
        page.goto(base_url)
        page.get_by_role("link", name="First run: create the admin").click()
        page.get_by_label("Setup code").fill("AAAA-BBBB-CCCC")
        page.get_by_label("Name").fill("root")
        page.get_by_label("Password").fill(PASSWORD)
        page.get_by_role("button", name="Create the admin").click()
        expect(page.get_by_role("alert")).to_contain_text("setup code")
        page.get_by_label("Setup code").fill(code)
        page.get_by_label("Name").fill("root")
        page.get_by_label("Password").fill(PASSWORD)
        page.get_by_role("button", name="Create the admin").click()
        expect(page.locator("h1")).to_have_text("Overview")
        expect(page.locator(".who")).to_contain_text("root (admin)")
        page.get_by_role("button", name="Log out").click()
        expect(page).to_have_url(f"{base_url}/login")
        page.goto(f"{base_url}/setup")  # done once: the setup page is gone
        expect(page).to_have_url(f"{base_url}/login")
        page.get_by_label("Name").fill("root")
        page.get_by_label("Password").fill(PASSWORD)
        page.get_by_role("button", name="Log in").click()
        expect(page.locator("h1")).to_have_text("Overview")
    finally:
        page.close()


def setup_code_of(records: list[logging.LogRecord]) -> str:
    """The one-time setup code the app logged when it started."""
    found = [
        match.group(1)
        for record in records
        if (
            match := re.search(
                r"setup code ([A-Z0-9]{4}-[A-Z0-9]{4}-[A-Z0-9]{4})", record.getMessage()
            )
        )
    ]
    assert found, "the server did not log a setup code"
    return found[-1]


def test_a_panel_that_would_leave_its_service_is_not_shown(
    browser: Browser, app_config: dict[str, Any]
) -> None:
    # A node's service answers its own GET /admin: a tampered one (it cannot be declared
    # so, AdminPanel refuses) must not get the hub admin's session sent anywhere else.
    probe = EdgeService("probe-admin", title="Probe", version="1.0.0")
    tampered = AdminPanel("Tokens", source="state", edit="state", form=ma.Schema, method="POST")
    object.__setattr__(tampered, "source", "../../auth/tokens")
    object.__setattr__(tampered, "edit", "../../auth/users")
    probe.admin_panel(tampered)
    app = create_app(app_config, services=[probe])
    app.extensions[AUTH_EXTENSION].accounts.add_user("ada", PASSWORD, Role.ADMIN)
    server = make_server("127.0.0.1", 0, app, threaded=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    base_url = f"http://127.0.0.1:{server.server_port}"
    page = browser.new_page()
    requested: list[str] = []
    page.on("request", lambda request: requested.append(urlparse(request.url).path))
    try:
        page.goto(f"{base_url}/login")
        page.get_by_label("Name").fill("ada")
        page.get_by_label("Password").fill(PASSWORD)
        page.get_by_role("button", name="Log in").click()
        page.wait_for_url(f"{base_url}/")
        page.goto(f"{base_url}/admin/probe-admin")
        panel = page.locator('section.panel[data-panel="Tokens"]')
        expect(panel.get_by_role("alert")).to_contain_text("This panel is not shown")
        assert "/api/probe-admin/admin" in requested
        assert not [path for path in requested if path.startswith("/api/auth")], requested
    finally:
        page.close()
        server.shutdown()
        app.extensions["pyedge"].close()
