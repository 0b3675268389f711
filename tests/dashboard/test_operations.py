"""The operations page: forms from parameter schemas, live sessions, the kind's buttons."""

from __future__ import annotations

import re
import time
from pathlib import Path
from typing import Any

from playwright.sync_api import Locator, Page, expect

from pyedge.security import Role
from tests.dashboard.conftest import PHONE, Edge, Login

SERVICE = "/api/custom-service"
# The heartbeat's interval when the node autostarts it (custom-service's default setting).
AUTOSTART_INTERVAL = 5.0


def operation(page: Page, edge: Edge, op: str, slug: str = "custom-service") -> Locator:
    """The card of one operation of this node's service."""
    return page.locator(
        f'article.op[data-node="{edge.node_id}"][data-slug="{slug}"][data-op="{op}"]'
    )


def session(edge: Edge, op: str) -> dict[str, Any]:
    """The operation's session, as the API has it."""
    status, body = edge.node.call(f"{SERVICE}/ops/{op}")
    assert status == 200, body
    return body


def end(edge: Edge, op: str, action: str) -> None:
    """Stop or abort the operation through the API if it runs, and wait until it is done."""
    if session(edge, op)["state"] in ("starting", "running"):
        edge.node.call(f"{SERVICE}/ops/{op}/{action}", "POST")
    status, body = edge.node.call(f"{SERVICE}/ops/{op}/wait?timeout=10", "POST")
    assert status == 200 and body["state"] in ("idle", "done"), body


def test_a_task_started_from_its_form_is_done_on_screen(login: Login, edge: Edge) -> None:
    end(edge, "sleep", "abort")
    page = login(Role.OPERATOR)
    page.goto(f"{edge.url}/operations")
    sleep = operation(page, edge, "sleep")
    expect(sleep.get_by_text("how long to sleep")).to_be_visible()
    sleep.get_by_label("seconds").fill("0.5")
    sleep.get_by_role("button", name="Start").click()
    expect(sleep.locator("[data-state]")).to_have_text("done", timeout=10_000)
    expect(sleep.locator("[data-success]")).to_have_text("succeeded")
    expect(sleep.locator("[data-progress]")).to_have_text("100 %")
    expect(sleep.locator(".log")).to_contain_text("slept 0.5 s")
    after = session(edge, "sleep")
    assert after["params"] == {"seconds": 0.5}
    assert after["success"] is True


def test_a_task_is_waited_for_and_aborted_with_confirmation(login: Login, edge: Edge) -> None:
    end(edge, "sleep", "abort")
    page = login(Role.OPERATOR)
    page.goto(f"{edge.url}/operations")
    sleep = operation(page, edge, "sleep")
    wait = sleep.get_by_role("button", name="Wait")
    abort = sleep.get_by_role("button", name="Abort")
    expect(abort).to_be_disabled()
    # Long enough to see progress between two published updates (at most one a second).
    sleep.get_by_label("seconds").fill("4")
    sleep.get_by_role("button", name="Start").click()
    expect(sleep.locator("[data-state]")).to_have_text("running")
    # Progress arrives live, in between 0 and 100 %.
    expect(sleep.locator("[data-progress]")).to_have_text(re.compile(r"^[1-9]\d? %$"))
    wait.click()
    expect(page.locator("#toasts")).to_contain_text("sleep: succeeded", timeout=10_000)
    expect(sleep.locator("[data-state]")).to_have_text("done")

    sleep.get_by_label("seconds").fill("60")
    sleep.get_by_role("button", name="Start").click()
    expect(abort).to_be_enabled()
    abort.click()
    dialog = page.locator("dialog#confirm")
    dialog.get_by_role("button", name="Abort").click()
    expect(sleep.locator("[data-state]")).to_have_text("done", timeout=10_000)
    expect(sleep.locator("[data-success]")).to_have_text("failed")
    expect(sleep.locator(".log")).to_contain_text("aborted after")
    assert session(edge, "sleep")["success"] is False


def test_a_bad_value_shows_the_apis_message_at_its_field(login: Login, edge: Edge) -> None:
    end(edge, "sleep", "abort")
    before = session(edge, "sleep")
    # What the API itself says of this value (and it starts nothing).
    status, refused = edge.node.call(f"{SERVICE}/ops/sleep/start", "POST", {"seconds": 0})
    assert status == 422, refused
    message = " ".join(refused["errors"]["json"]["seconds"])
    page = login(Role.OPERATOR)
    page.goto(f"{edge.url}/operations")
    sleep = operation(page, edge, "sleep")
    field = sleep.locator('[data-field="seconds"]')
    field.get_by_label("seconds").fill("0")
    sleep.get_by_role("button", name="Start").click()
    expect(field.locator('[data-error-for="seconds"]')).to_have_text(message)
    expect(field.get_by_label("seconds")).to_have_attribute("aria-invalid", "true")
    expect(sleep.locator("[data-state]")).to_have_text(before["state"])
    assert session(edge, "sleep")["started_at"] == before["started_at"]


def test_a_process_is_started_and_stopped_with_confirmation(login: Login, edge: Edge) -> None:
    end(edge, "heartbeat", "stop")
    page = login(Role.OPERATOR)
    page.goto(f"{edge.url}/operations")
    beat = operation(page, edge, "heartbeat")
    try:
        beat.get_by_label("interval").fill("0.2")
        beat.get_by_role("button", name="Start").click()
        expect(beat.locator("[data-state]")).to_have_text("running")
        # A heartbeat reports no progress: no bar for it.
        expect(beat.locator("progress")).to_be_hidden()
        # The beats arrive live: the data's sequence number grows on screen.
        expect(beat.locator("dl.data dd").first).to_have_text(re.compile(r"^([3-9]|\d{2,})$"))
        # Cancelling the confirmation leaves the process running.
        beat.get_by_role("button", name="Stop").click()
        dialog = page.locator("dialog#confirm")
        expect(dialog).to_contain_text("heartbeat")
        dialog.get_by_role("button", name="Cancel").click()
        time.sleep(0.5)
        assert session(edge, "heartbeat")["state"] == "running"
        beat.get_by_role("button", name="Stop").click()
        dialog.get_by_role("button", name="Stop").click()
        expect(beat.locator("[data-state]")).to_have_text("done", timeout=10_000)
        expect(beat.locator("[data-success]")).to_have_text("succeeded")
        expect(beat.get_by_role("button", name="Stop")).to_be_disabled()
        after = session(edge, "heartbeat")
        assert after["state"] == "done" and after["params"] == {"interval": 0.2}
    finally:
        # Leave the node as it started: the heartbeat autostarted at its usual pace.
        end(edge, "heartbeat", "stop")
        edge.node.call(f"{SERVICE}/ops/heartbeat/start", "POST", {"interval": AUTOSTART_INTERVAL})


def test_a_viewer_sees_sessions_but_no_form_or_button(login: Login, edge: Edge) -> None:
    page = login(Role.VIEWER)
    page.goto(f"{edge.url}/operations")
    sleep = operation(page, edge, "sleep")
    expect(sleep.locator("[data-state]")).not_to_have_text("unknown")
    expect(operation(page, edge, "heartbeat")).to_be_visible()
    expect(page.locator("article.op").first).to_be_visible()
    expect(page.locator("main form")).to_have_count(0)
    expect(page.locator("main button")).to_have_count(0)


def test_an_admin_only_operation_has_no_form_for_an_operator(login: Login, edge: Edge) -> None:
    page = login(Role.OPERATOR)
    page.goto(f"{edge.url}/operations")
    pull = operation(page, edge, "pull", slug="container-manager")
    expect(pull).to_be_visible()
    expect(pull.locator("form")).to_have_count(0)
    reconcile = operation(page, edge, "reconcile", slug="container-manager")
    expect(reconcile.locator("form")).to_have_count(1)


def test_screenshots(login: Login, edge: Edge, screenshots: Path | None) -> None:
    end(edge, "sleep", "abort")
    # A task under way, so the pictures show a session's progress.
    edge.node.call(f"{SERVICE}/ops/sleep/start", "POST", {"seconds": 30})
    try:
        page = login(Role.ADMIN)
        page.goto(f"{edge.url}/operations")
        sleep = operation(page, edge, "sleep")
        expect(sleep.locator("form")).to_be_visible()
        expect(sleep.locator("[data-progress]")).to_have_text(re.compile(r"^[1-9]\d? %$"))
        expect(operation(page, edge, "heartbeat").locator("[data-state]")).to_have_text("running")
        phone = login(Role.OPERATOR, viewport=PHONE)
        phone.goto(f"{edge.url}/operations")
        on_phone = operation(phone, edge, "sleep")
        expect(on_phone.get_by_role("button", name="Abort")).to_be_enabled()
        # Nothing is wider than a phone's screen.
        width = phone.evaluate("document.documentElement.scrollWidth")
        assert width <= PHONE["width"], width
        if screenshots is not None:
            screenshots.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=screenshots / "operations-desktop.png", full_page=True)
            phone.screenshot(path=screenshots / "operations-phone.png", full_page=True)
    finally:
        end(edge, "sleep", "abort")


def test_an_operation_that_deletes_data_asks_before_it_starts(login: Login, edge: Edge) -> None:
    purge = "/api/device-service/ops/purge_history"
    before = edge.node.call(purge)[1]
    page = login(Role.ADMIN)
    page.goto(f"{edge.url}/operations")
    card = operation(page, edge, "purge_history", slug="device-service")
    card.get_by_label("older than").fill("100000")  # hours: nothing is that old
    card.get_by_role("button", name="Start").click()
    dialog = page.locator("dialog#confirm")
    expect(dialog).to_contain_text("purge_history deletes data")
    dialog.get_by_role("button", name="Cancel").click()
    page.wait_for_timeout(500)
    assert edge.node.call(purge)[1]["started_at"] == before["started_at"], "started anyway"
    card.get_by_role("button", name="Start").click()
    dialog.get_by_role("button", name="Start").click()
    expect(card.locator("[data-state]")).to_have_text("done", timeout=10_000)
    assert edge.node.call(purge)[1]["params"] == {"older_than": 100000.0}
