"""The containers and apps page against the real test Docker engine: lifecycle with
confirmation, live logs over the container-manager's SSE stream, apps planned before they
are applied, images, and what each role may touch."""

from __future__ import annotations

import contextlib
import json
import re
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import docker
import docker.errors
import pytest
import requests
from playwright.sync_api import Locator, Page, expect

from pyedge.security import Role
from tests.dashboard.conftest import PHONE, Edge, Login
from tests.docker_engine import TEST_IMAGE, DockerEngine

API = "/api/container-manager"
# sh as PID 1 ignores SIGTERM unless it traps it: stop must not wait for the kill timeout.
LOOP = "trap 'exit 0' TERM; echo started; while true; do sleep 1; done"
WAIT_MS = 15_000


def api(edge: Edge, method: str, path: str, body: Any = None) -> requests.Response:
    """A request to the container-manager with the node's admin token (204s included)."""
    return requests.request(
        method,
        edge.node.url(API + path),
        json=body,
        headers={"Authorization": f"Bearer {edge.node.token}"},
        timeout=30,
    )


@pytest.fixture
def engine(docker_engine: DockerEngine) -> Iterator[docker.DockerClient]:
    """A docker-py client of the engine the node uses, for the tests' own checks."""
    client = docker_engine.client()
    yield client
    client.close()


MakeContainer = Callable[..., str]


@pytest.fixture
def make_container(edge: Edge, engine: docker.DockerClient) -> Iterator[MakeContainer]:
    """`make_container(**spec)`: a running busybox container made through the API; its name.

    Every container made is removed afterwards, whatever the test did to it.
    """
    names: list[str] = []

    def make(**spec: Any) -> str:
        name = f"dash-{uuid.uuid4().hex[:8]}"
        names.append(name)
        body = {"name": name, "image": TEST_IMAGE, "command": ["sh", "-c", LOOP], **spec}
        answer = api(edge, "POST", "/containers", body)
        assert answer.status_code == 201, answer.text
        return name

    yield make
    for name in names:
        with contextlib.suppress(docker.errors.NotFound):
            engine.containers.get(name).remove(force=True)


@pytest.fixture
def apps(edge: Edge) -> Iterator[list[str]]:
    """Names of apps a test deploys: removed afterwards with their containers."""
    names: list[str] = []
    yield names
    for name in names:
        api(edge, "DELETE", f"/apps/{name}")


def state(engine: docker.DockerClient, name: str) -> str:
    container = engine.containers.get(name)
    container.reload()
    status: str = container.status
    return status


def row(page: Page, name: str) -> Locator:
    return page.locator(f'tr.container[data-name="{name}"]')


def open_page(
    login: Login, role: Role = Role.ADMIN, viewport: dict[str, int] | None = None
) -> Page:
    page = login(role, viewport=viewport) if viewport else login(role)
    page.goto(page.url.rstrip("/") + "/containers")
    expect(page.locator("h1")).to_have_text("Containers and apps")
    return page


def test_stop_asks_and_stops_the_container_in_the_engine(
    login: Login, make_container: MakeContainer, engine: docker.DockerClient
) -> None:
    name = make_container()
    page = open_page(login, Role.OPERATOR)
    container = row(page, name)
    expect(container.locator('[data-cell="state"]')).to_contain_text("running")
    # Cancelled: nothing happens.
    container.get_by_role("button", name="Stop").click()
    dialog = page.locator("dialog#confirm")
    expect(dialog).to_be_visible()
    expect(dialog).to_contain_text(f"Stop {name}?")
    dialog.get_by_role("button", name="Cancel").click()
    expect(dialog).to_be_hidden()
    assert state(engine, name) == "running"
    # By keyboard: the confirmation's OK has the focus.
    container.get_by_role("button", name="Stop").focus()
    page.keyboard.press("Enter")
    expect(dialog).to_be_visible()
    expect(page.locator("#confirm-ok")).to_be_focused()
    page.keyboard.press("Enter")
    expect(container.locator('[data-cell="state"]')).to_contain_text("exited", timeout=WAIT_MS)
    assert state(engine, name) == "exited"
    # Focus stays on the row's actions once it changed.
    expect(container.get_by_role("button", name="Start")).to_be_focused()


def test_start_and_remove_from_the_page(
    login: Login, make_container: MakeContainer, engine: docker.DockerClient
) -> None:
    name = make_container()
    engine.containers.get(name).stop(timeout=5)
    page = open_page(login, Role.ADMIN)
    container = row(page, name)
    expect(container.locator('[data-cell="state"]')).to_contain_text("exited")
    container.get_by_role("button", name="Start").click()
    expect(container.locator('[data-cell="state"]')).to_contain_text("running", timeout=WAIT_MS)
    assert state(engine, name) == "running"

    container.get_by_role("button", name="Remove").click()
    dialog = page.locator("dialog#confirm")
    expect(dialog).to_contain_text(f"Remove {name}? It is running")
    dialog.get_by_role("button", name="Remove").click()
    expect(container).to_have_count(0, timeout=WAIT_MS)
    with pytest.raises(docker.errors.NotFound):
        engine.containers.get(name)


def test_stats_and_health_on_demand(login: Login, make_container: MakeContainer) -> None:
    name = make_container(healthcheck={"test": ["CMD", "true"], "interval": 0.5})
    page = open_page(login, Role.VIEWER)
    container = row(page, name)
    expect(container.locator('[data-cell="health"]')).to_have_text("healthy", timeout=WAIT_MS)
    container.get_by_role("button", name="Stats").click()
    expect(container.get_by_role("button", name="Stats")).to_have_attribute("aria-expanded", "true")
    stats = page.locator(f'dl[data-stats="{name}"]')
    expect(stats).to_contain_text("Memory", timeout=WAIT_MS)
    expect(stats).to_contain_text("Processes")


def test_live_logs_follow_pause_filter_and_cap(
    login: Login, make_container: MakeContainer, engine: docker.DockerClient
) -> None:
    name = make_container()
    page = open_page(login, Role.VIEWER)
    row(page, name).get_by_role("button", name="Logs").click()
    panel = page.locator(".logs")
    expect(panel).to_be_visible()
    expect(panel.locator("[data-log-name]")).to_have_text(name)
    lines = panel.locator("[data-log-lines] .line")
    expect(lines.filter(has_text="started")).to_have_count(1, timeout=WAIT_MS)
    expect(panel.locator("[data-log-state]")).to_contain_text("Following")

    def say(text: str) -> None:
        # Written to the container's own stdout: it is in its log as if PID 1 printed it.
        engine.containers.get(name).exec_run(["sh", "-c", f"echo {text} > /proc/1/fd/1"])

    marker = f"after-open-{uuid.uuid4().hex[:6]}"
    say(marker)
    expect(lines.filter(has_text=marker)).to_have_count(1, timeout=WAIT_MS)

    panel.get_by_role("button", name="Pause").click()
    say("while-paused")
    held = panel.locator("[data-log-state]")
    expect(held).to_contain_text("1 held while paused", timeout=WAIT_MS)
    expect(lines.filter(has_text="while-paused")).to_have_count(0)
    panel.get_by_role("button", name="Resume").click()
    expect(lines.filter(has_text="while-paused")).to_have_count(1)

    panel.get_by_label("Filter").fill(marker)
    expect(page.locator("[data-log-lines] .line:visible")).to_have_count(1)
    expect(page.locator("[data-log-lines] .line:visible")).to_have_text(marker)
    panel.get_by_label("Filter").fill("")

    # A chatty container: the page keeps the last lines only.
    engine.containers.get(name).exec_run(
        ["sh", "-c", "i=0; while [ $i -lt 1200 ]; do echo n$i; i=$((i+1)); done > /proc/1/fd/1"]
    )
    expect(lines.last).to_have_text("n1199", timeout=WAIT_MS)
    expect(lines).to_have_count(1000)

    # Stopped elsewhere: the stream ends; started again, it resumes without repeating.
    engine.containers.get(name).stop(timeout=5)
    expect(lines.last).to_contain_text("The container stopped", timeout=WAIT_MS)
    engine.containers.get(name).start()
    expect(lines.filter(has_text="started")).to_have_count(1, timeout=WAIT_MS)
    expect(lines.filter(has_text="n1199")).to_have_count(1)


def test_system_containers_are_protected(login: Login, engine: docker.DockerClient) -> None:
    name = f"dash-system-{uuid.uuid4().hex[:6]}"
    engine.containers.run(
        TEST_IMAGE, ["sh", "-c", LOOP], name=name, detach=True, labels={"pyedge.system": "true"}
    )
    try:
        page = open_page(login, Role.ADMIN)
        container = row(page, name)
        expect(container).to_contain_text("protected")
        expect(container.get_by_role("button", name="Logs")).to_be_visible()
        for action in ("Start", "Stop", "Restart", "Remove"):
            expect(container.get_by_role("button", name=action)).to_have_count(0)
    finally:
        engine.containers.get(name).remove(force=True)


def test_a_viewer_sees_no_action_button(
    login: Login, make_container: MakeContainer, engine: docker.DockerClient
) -> None:
    running = make_container()
    stopped = make_container()
    engine.containers.get(stopped).stop(timeout=5)
    page = open_page(login, Role.VIEWER)
    expect(row(page, running)).to_contain_text("running")
    expect(row(page, stopped)).to_contain_text("exited")
    main = page.locator("main")
    controls = ("Start", "Stop", "Restart", "Remove", "Pull", "Show plan", "Apply", "Change spec")
    for action in controls:
        expect(main.get_by_role("button", name=action)).to_have_count(0)
    expect(page.locator("form[data-deploy]")).to_have_count(0)
    expect(page.locator("form[data-pull]")).to_have_count(0)
    # Looking is allowed.
    expect(row(page, running).get_by_role("button", name="Logs")).to_be_visible()


def test_an_operator_gets_lifecycle_but_not_removal(
    login: Login, make_container: MakeContainer
) -> None:
    name = make_container()
    page = open_page(login, Role.OPERATOR)
    container = row(page, name)
    expect(container.get_by_role("button", name="Restart")).to_be_visible()
    expect(container.get_by_role("button", name="Remove")).to_have_count(0)
    expect(page.locator("form[data-pull]")).to_have_count(0)
    expect(page.locator("form[data-deploy]")).to_have_count(0)


def deploy(page: Page, name: str, spec: str) -> Locator:
    """Fill the deploy form and show its plan; the plan's box."""
    page.get_by_text("Deploy or change an app").click()
    form = page.locator("form[data-deploy]")
    form.get_by_label("App name").fill(name)
    form.get_by_label("App spec (JSON)").fill(spec)
    form.get_by_role("button", name="Show plan").click()
    return form.locator("[data-plan]")


def test_an_app_is_planned_then_applied_then_removed(
    login: Login, engine: docker.DockerClient, apps: list[str]
) -> None:
    name = f"dash{uuid.uuid4().hex[:6]}"
    apps.append(name)
    page = open_page(login, Role.ADMIN)
    spec = json.dumps({"services": {"web": {"image": TEST_IMAGE, "command": ["sh", "-c", LOOP]}}})
    plan = deploy(page, name, spec)
    expect(plan).to_contain_text(f"Plan for app {name}")
    expect(plan.locator("ol.steps li", has_text="create web")).to_have_count(1)
    expect(plan.locator("ol.steps li").first).to_contain_text(f"create network pyedge-{name}")
    # Nothing exists before Apply.
    assert not engine.containers.list(all=True, filters={"name": f"{name}-web"})

    apply = page.get_by_role("button", name="Apply", exact=True)
    apply.click()
    dialog = page.locator("dialog#confirm")
    expect(dialog).to_contain_text(f"Apply app {name}")
    dialog.get_by_role("button", name="Apply").click()
    card = page.locator(f'article[data-app="{name}"]')
    expect(card.locator('tr[data-service="web"]')).to_contain_text("running", timeout=WAIT_MS)
    expect(card.locator('tr[data-service="web"]')).to_contain_text(TEST_IMAGE)
    assert state(engine, f"{name}-web") == "running"
    expect(row(page, f"{name}-web")).to_contain_text(f"app {name}", timeout=WAIT_MS)

    card.get_by_role("button", name="Remove").click()
    expect(dialog).to_contain_text(f"Remove app {name}?")
    dialog.get_by_role("button", name="Remove").click()
    expect(card).to_have_count(0, timeout=WAIT_MS)
    assert not engine.containers.list(all=True, filters={"name": f"{name}-web"})
    apps.remove(name)


def test_the_policy_refusal_is_shown_and_blocks_apply(login: Login) -> None:
    page = open_page(login, Role.ADMIN)
    spec = json.dumps({"services": {"root": {"image": TEST_IMAGE, "privileged": True}}})
    plan = deploy(page, "dashdenied", spec)
    expect(plan).to_contain_text("Denied by the security policy")
    expect(plan.locator(".violation")).to_contain_text("privileged containers are root on the host")
    expect(page.get_by_role("button", name="Apply", exact=True)).to_be_disabled()
    # A spec the API cannot read: its message at the field.
    form = page.locator("form[data-deploy]")
    form.get_by_label("App spec (JSON)").fill('{"services": {"web": {"ports": ["80"]}}}')
    form.get_by_role("button", name="Show plan").click()
    expect(form.locator('[data-error-for="spec"]')).to_contain_text("services.web.image")
    form.get_by_label("App spec (JSON)").fill("{not json")
    form.get_by_role("button", name="Show plan").click()
    expect(form.locator('[data-error-for="spec"]')).to_contain_text("Not JSON")


def test_images_are_listed_removed_and_a_failed_pull_says_why(
    login: Login, engine: docker.DockerClient
) -> None:
    tag = f"dash-extra:{uuid.uuid4().hex[:6]}"
    engine.images.get(TEST_IMAGE).tag(tag)
    try:
        page = open_page(login, Role.ADMIN)
        images = page.locator("table.images")
        expect(images.locator(f'tr[data-ref="{TEST_IMAGE}"]')).to_be_visible()
        extra = images.locator(f'tr[data-ref="{tag}"]')
        extra.get_by_role("button", name="Remove").click()
        dialog = page.locator("dialog#confirm")
        expect(dialog).to_contain_text(f"Remove image {tag}?")
        dialog.get_by_role("button", name="Remove").click()
        expect(extra).to_have_count(0, timeout=WAIT_MS)
        assert tag not in {t for image in engine.images.list() for t in image.tags}
        assert engine.images.get(TEST_IMAGE)

        # No registry answers in the tests: the pull fails, and the page says why.
        pull = page.locator("form[data-pull]")
        pull.get_by_label("Pull an image").fill("127.0.0.1:9/nothing/here:1")
        pull.get_by_role("button", name="Pull").click()
        status = pull.locator("[data-pull-status]")
        expect(status).to_have_class(re.compile("bad"), timeout=30_000)
        expect(status).to_contain_text("127.0.0.1:9")
        expect(pull.get_by_role("button", name="Pull")).to_be_enabled()
        # A malformed reference is refused at its field.
        pull.get_by_label("Pull an image").fill("Not A Ref")
        pull.get_by_role("button", name="Pull").click()
        expect(pull.locator('[data-error-for="ref"]')).to_contain_text("not an image reference")
    finally:
        with contextlib.suppress(docker.errors.ImageNotFound):
            engine.images.remove(tag)


def test_the_page_fits_a_phone_with_screenshots(
    login: Login,
    edge: Edge,
    apps: list[str],
    make_container: MakeContainer,
    engine: docker.DockerClient,
    screenshots: Path | None,
) -> None:
    running = make_container(healthcheck={"test": ["CMD", "true"], "interval": 0.5})
    stopped = make_container()
    engine.containers.get(stopped).stop(timeout=5)
    app = f"shot{uuid.uuid4().hex[:6]}"
    apps.append(app)
    spec = {"services": {"web": {"image": TEST_IMAGE, "command": ["sh", "-c", LOOP]}}}
    assert api(edge, "PUT", f"/apps/{app}", spec).status_code == 201
    for viewport, suffix in ((None, "desktop"), (PHONE, "phone")):
        page = open_page(login, Role.ADMIN, viewport)
        expect(page.locator(f'article[data-app="{app}"] tr[data-service="web"]')).to_contain_text(
            "running", timeout=WAIT_MS
        )
        expect(row(page, running).locator('[data-cell="health"]')).to_have_text(
            "healthy", timeout=WAIT_MS
        )
        row(page, running).get_by_role("button", name="Logs").click()
        expect(page.locator("[data-log-lines] .line").first).to_have_text("started")
        if viewport == PHONE:
            # Minor columns fold away; the table scrolls within its own box.
            expect(page.locator("table.containers th.hide-narrow").first).to_be_hidden()
            width = page.evaluate("document.documentElement.scrollWidth")
            assert width <= PHONE["width"], f"the page scrolls sideways: {width}px"
        if screenshots:
            # Clicking scrolled a table sideways to its button: show its start.
            page.evaluate("document.querySelectorAll('.table-wrap').forEach(w => w.scrollLeft = 0)")
            screenshots.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(screenshots / f"containers-{suffix}.png"), full_page=True)
