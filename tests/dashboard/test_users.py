"""The users page: users, API tokens and the audit log, against the node's real accounts."""

from __future__ import annotations

import re
import uuid
from http import HTTPStatus
from pathlib import Path

from playwright.sync_api import Browser, Page, expect

from pyedge.security import Role
from tests.dashboard.conftest import PHONE, Edge, Login
from tests.test_run import request

NEW_PASSWORD = "a-new-users-secret"
AUDIT_PAGE = 25  # entries per page of the audit log (users.js)


def open_users(page: Page, edge: Edge, fragment: str = "") -> None:
    """Go to the users page and wait until its three tables have their rows."""
    page.goto(f"{edge.url}/users{fragment}")
    expect(page.locator("h1")).to_have_text("Users, tokens and audit")
    for table in ("#user-table", "#token-table", "#audit-table"):
        expect(page.locator(f"{table} tbody tr").first).not_to_contain_text("Loading")


def unique(prefix: str) -> str:
    """A name no other test uses (they share one node)."""
    return f"{prefix}-{uuid.uuid4().hex[:6]}"


def confirm_dialog(page: Page, says: str, accept: bool = True) -> None:
    """Answer PyEdge.confirm's dialog after checking what it warns about."""
    dialog = page.locator("dialog#confirm")
    expect(dialog).to_be_visible()
    expect(dialog).to_contain_text(says)
    answer = re.compile("Delete|Revoke") if accept else "Cancel"
    dialog.get_by_role("button", name=answer).click()
    expect(dialog).to_be_hidden()


def user_names(edge: Edge) -> list[str]:
    """The users the API lists."""
    status, users = edge.node.call("/api/auth/users")
    assert status == HTTPStatus.OK, users
    return [user["name"] for user in users]


def test_an_admin_adds_a_user_who_logs_in_and_is_deleted(
    login: Login, edge: Edge, browser: Browser
) -> None:
    page = login(Role.ADMIN)
    open_users(page, edge)
    name = unique("ulla")
    add = page.get_by_role("form", name="Add a user")

    # The API's refusals are shown at their fields, readably.
    add.get_by_label("Name").fill(name)
    add.get_by_label("Role").select_option("operator")
    add.get_by_label("Password").fill("short")
    add.get_by_role("button", name="Add user").click()
    expect(add.locator('[data-error-for="password"]')).to_contain_text("8")
    add.get_by_label("Name").fill("olga")
    add.get_by_label("Password").fill(NEW_PASSWORD)
    add.get_by_role("button", name="Add user").click()
    expect(add.locator('[data-error-for="name"]')).to_have_text(
        'A user named "olga" exists already.'
    )

    add.get_by_label("Name").fill(name)
    add.get_by_role("button", name="Add user").click()
    row = page.locator(f'#user-table tr[data-user="{name}"]')
    expect(row).to_contain_text("operator")
    expect(add.locator('[data-error-for="name"]')).to_have_text("")
    expect(add.get_by_label("Name")).to_have_value("")  # ready for the next one
    assert name in user_names(edge)

    # The creation is in the audit log at once, by ada.
    created = page.locator("#audit-table tbody tr").filter(has_text="/api/auth/users").first
    expect(created).to_contain_text("user:ada")
    expect(created).to_contain_text("POST")
    expect(created).to_contain_text("201")

    # The new user logs in through the login page, in a browser of their own.
    context = browser.new_context()
    try:
        theirs = context.new_page()
        theirs.goto(f"{edge.url}/login")
        theirs.get_by_label("Name").fill(name)
        theirs.get_by_label("Password").fill(NEW_PASSWORD)
        theirs.get_by_role("button", name="Log in").click()
        theirs.wait_for_url(f"{edge.url}/")
        expect(theirs.locator(".who")).to_contain_text(f"{name} (operator)")

        # Asked first; cancelling keeps the user.
        row.get_by_role("button", name=f"Delete user {name}").click()
        confirm_dialog(page, "sessions end at once", accept=False)
        expect(row).to_be_visible()
        row.get_by_role("button", name=f"Delete user {name}").click()
        confirm_dialog(page, "sessions end at once")
        expect(row).to_have_count(0)
        assert name not in user_names(edge)

        # As the dialog said: their open session has ended.
        theirs.goto(f"{edge.url}/operations")
        expect(theirs).to_have_url(re.compile(r"/login"))
    finally:
        context.close()


def test_a_token_is_shown_once_works_and_is_refused_once_revoked(login: Login, edge: Edge) -> None:
    page = login(Role.ADMIN)
    page.context.grant_permissions(["clipboard-read", "clipboard-write"], origin=edge.url)
    open_users(page, edge)
    name = unique("ci")
    create = page.get_by_role("form", name="Create a token")
    create.get_by_label("Name").fill(name)
    create.get_by_label("Role").select_option("viewer")
    create.get_by_label("Expires after (days)").fill("0")
    create.get_by_role("button", name="Create token").click()
    expect(create.locator('[data-error-for="expires_days"]')).to_contain_text("0.001")
    create.get_by_label("Expires after (days)").fill("2")
    create.get_by_role("button", name="Create token").click()

    reveal = page.locator("#new-token")
    expect(reveal).to_be_visible()
    expect(reveal).to_contain_text("Shown only now")
    value = page.get_by_label(re.compile("^Token"))
    expect(value).to_be_focused()
    token = value.input_value()
    assert token.startswith("pye_")
    page.get_by_role("button", name="Copy").click()
    expect(page.locator("#toasts")).to_contain_text("Token copied")
    assert page.evaluate("navigator.clipboard.readText()") == token

    me = f"{edge.url}/api/auth/me"
    assert request(me, token=token) == (
        HTTPStatus.OK,
        {"name": name, "role": "viewer", "kind": "token"},
    )
    # Listed, with its use; its value is nowhere but in that one answer.
    row = page.locator(f'#token-table tr[data-token="{name}"]')
    expect(row).to_contain_text("viewer")
    expect(row.locator("td").nth(4)).to_have_text("in 2 d")
    page.get_by_role("button", name="Done, hide it").click()
    expect(reveal).to_be_hidden()
    assert value.input_value() == ""
    open_users(page, edge)
    expect(row.locator("td").nth(3)).to_contain_text("ago")  # last used: just now
    assert token not in page.content()
    _, listed = edge.node.call("/api/auth/tokens")
    assert token not in str(listed)

    row.get_by_role("button", name=f"Revoke token {name}").click()
    confirm_dialog(page, "refused from now on")
    expect(row).to_have_count(0)
    status, body = request(me, token=token)
    assert status == HTTPStatus.UNAUTHORIZED, body


def test_the_audit_log_is_newest_first_and_pages_back(login: Login, edge: Edge) -> None:
    # Enough refused changes (each one audited, 404) for more than one page.
    for number in range(AUDIT_PAGE + 10):
        status, _ = edge.node.call(f"/api/auth/tokens/missing-{number}", "DELETE")
        assert status == HTTPStatus.NOT_FOUND
    page = login(Role.ADMIN)
    open_users(page, edge, "#audit")
    expect(page.locator("#audit")).to_be_in_viewport()
    rows = page.locator("#audit-table tbody tr")
    expect(rows).to_have_count(AUDIT_PAGE)
    # The newest first (after the entry of this very login).
    newest = rows.filter(has_text="/api/auth/tokens/missing-").first
    expect(newest).to_contain_text("token:test-run")
    expect(newest).to_contain_text(f"/api/auth/tokens/missing-{AUDIT_PAGE + 9}")
    expect(newest.locator("td").nth(4)).to_have_text("404")
    expect(newest.locator("time")).to_have_attribute("title", re.compile(r"^\d{4}-\d\d-\d\dT"))
    expect(newest.locator("time")).to_contain_text("ago")
    expect(newest).to_contain_text("127.0.0.1")

    page.get_by_role("button", name="Older").click()
    expect(rows).not_to_have_count(AUDIT_PAGE)
    ids = [int(i) for i in rows.evaluate_all("rows => rows.map(r => r.dataset.id)")]
    assert ids == sorted(ids, reverse=True)
    assert len(ids) == len(set(ids)) > AUDIT_PAGE
    expect(rows.filter(has_text="/api/auth/tokens/missing-0")).to_have_count(1)

    # Paging on to the very first entry; then the button goes, and the log says it is whole.
    older = page.get_by_role("button", name="Older")
    shown = page.locator("#audit-count")
    for _ in range(20):
        if older.is_hidden():
            break
        before = shown.text_content() or ""
        older.click()
        expect(shown).not_to_have_text(before)
    expect(older).to_be_hidden()
    expect(shown).to_contain_text("the whole log")
    expect(rows.last).to_have_attribute("data-id", "1")

    page.get_by_role("button", name="Newest").click()
    expect(rows).to_have_count(AUDIT_PAGE)
    expect(older).to_be_visible()


def test_a_viewer_has_no_users_page(login: Login, edge: Edge) -> None:
    for role in (Role.VIEWER, Role.OPERATOR):
        page = login(role)
        nav = page.get_by_role("navigation", name="Main")
        expect(nav.get_by_role("link", name="Overview")).to_be_visible()
        expect(nav.get_by_role("link", name="Users")).to_have_count(0)
        response = page.goto(f"{edge.url}/users")
        assert response is not None
        assert response.status == HTTPStatus.FORBIDDEN


def test_the_page_works_by_keyboard_on_a_phone(
    login: Login, edge: Edge, screenshots: Path | None
) -> None:
    page = login(Role.ADMIN)
    open_users(page, edge)
    if screenshots:
        page.screenshot(path=str(screenshots / "users-desktop.png"), full_page=True)

    page = login(Role.ADMIN, viewport=PHONE)
    open_users(page, edge)
    if screenshots:
        page.screenshot(path=str(screenshots / "users-phone.png"), full_page=True)
    # Nothing wider than the phone but the tables, which scroll in their own box.
    assert page.evaluate("document.documentElement.scrollWidth <= window.innerWidth")
    name = unique("kay")
    add = page.get_by_role("form", name="Add a user")
    add.get_by_label("Name").focus()
    page.keyboard.type(name)
    page.keyboard.press("Tab")
    expect(add.get_by_label("Role")).to_be_focused()
    page.keyboard.press("ArrowDown")  # viewer → operator
    page.keyboard.press("Tab")
    expect(add.get_by_label("Password")).to_be_focused()
    page.keyboard.type(NEW_PASSWORD)
    page.keyboard.press("Enter")
    row = page.locator(f'#user-table tr[data-user="{name}"]')
    expect(row).to_contain_text("operator")

    row.get_by_role("button", name=f"Delete user {name}").focus()
    page.keyboard.press("Enter")
    expect(page.locator("dialog#confirm")).to_be_visible()
    expect(page.get_by_role("button", name="Delete user", exact=True)).to_be_focused()
    page.keyboard.press("Enter")
    expect(row).to_have_count(0)
    assert name not in user_names(edge)
