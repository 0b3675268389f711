"""The dashboard in a real Chromium against a real `pyedge run` (gunicorn, its own Mosquitto,
the test Docker engine), with a fake 1-wire thermometer below the driver seam and gpiozero's
mock pins for a relay. One node for the whole session; each test logs in as it needs."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

import pytest
from playwright.sync_api import Browser, BrowserContext, Page, Route

from edge_server.broker.accounts import EDGE_SERVER, load_accounts
from pyedge.accounts import AccountStore
from pyedge.security import Role
from tests.docker_engine import DockerEngine
from tests.test_run import Node, start_node, stop_node, wait_ready

W1_DEVICE = "28-0316a2795dff"
PASSWORD = "dashboard-secret-1"
USERS = {Role.ADMIN: "ada", Role.OPERATOR: "olga", Role.VIEWER: "vic"}
DESKTOP = {"width": 1280, "height": 860}
PHONE = {"width": 390, "height": 844}


def w1_slave(millidegrees: int) -> str:
    """A DS18B20's w1_slave file as the kernel shows it, with a good CRC line."""
    return f"57 01 4b 46 7f ff 0c 10 a2 : crc=a2 YES\n57 01 4b 46 7f ff 0c 10 a2 t={millidegrees}\n"


@dataclass
class Edge:
    """The running node the browser talks to."""

    node: Node
    w1_slave: Path

    @property
    def url(self) -> str:
        return self.node.url("")

    @property
    def node_id(self) -> str:
        return self.node.node_id

    def set_water(self, millidegrees: int) -> None:
        """Change the fake thermometer's reading at once (as the kernel's file would)."""
        staged = self.w1_slave.with_name("w1_slave.new")
        staged.write_text(w1_slave(millidegrees))
        staged.replace(self.w1_slave)

    def mqtt_login(self) -> dict[str, str]:
        """The edge-server's broker account on the node's own Mosquitto."""
        return load_accounts(self.node.data_dir / "mosquitto").login(EDGE_SERVER)


@pytest.fixture(scope="session")
def edge(tmp_path_factory: pytest.TempPathFactory, docker_engine: DockerEngine) -> Iterator[Edge]:
    """`pyedge run` with every service: sensors, containers, custom-service."""
    tmp = tmp_path_factory.mktemp("dashboard")
    device = tmp / "sys" / "bus" / "w1" / "devices" / W1_DEVICE
    device.mkdir(parents=True)
    (device / "w1_slave").write_text(w1_slave(21375))
    sensors = tmp / "sensors.toml"
    sensors.write_text(
        f'[sensors.water]\ndriver = "ds18b20"\ninterval = 0.5\ndevice_class = "temperature"\n'
        f'options = {{ root = "{tmp / "sys"}", device = "{W1_DEVICE}" }}\n\n'
        '[sensors.greenhouse]\ndriver = "simulated"\ninterval = 1\nunit = "°C"\n'
        'device_class = "temperature"\n'
        'options = { waveform = "sine", minimum = 12.0, maximum = 28.0, period = 60 }\n\n'
        '[sensors.pump]\ndriver = "gpio_out"\ninterval = 5\noptions = { pin = 27 }\n'
    )
    store = AccountStore(tmp / "data" / "accounts.db")
    for role, name in USERS.items():
        store.add_user(name, PASSWORD, role)
    node = start_node(
        tmp,
        DOCKER_HOST=docker_engine.url,
        EDGE_SENSORS=str(sensors),
        GPIOZERO_PIN_FACTORY="mock",
        EDGE_DEVICE_SERVICE_DISCOVERY="false",
    )
    try:
        wait_ready(node, timeout=30)
        yield Edge(node, device / "w1_slave")
    finally:
        stop_node(node)


def log_in(page: Page, base_url: str, name: str) -> None:
    """Log in through the login page, as a person does."""
    page.goto(f"{base_url}/login")
    page.get_by_label("Name").fill(name)
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Log in").click()
    page.wait_for_url(f"{base_url}/")


Login = Callable[..., Page]


@pytest.fixture
def login(browser: Browser, edge: Edge) -> Iterator[Login]:
    """`login(role, viewport=DESKTOP, base_url=edge.url)`: a logged-in page that may load
    nothing but the node itself, and whose scripts raise no error."""
    contexts: list[BrowserContext] = []
    outside: list[str] = []
    errors: list[str] = []

    def open_page(
        role: Role = Role.ADMIN, viewport: dict[str, int] = DESKTOP, base_url: str | None = None
    ) -> Page:
        base = base_url or edge.url
        context = browser.new_context(viewport=viewport)
        contexts.append(context)
        page = context.new_page()
        netloc = urlparse(base).netloc

        def local_only(route: Route) -> None:
            if urlparse(route.request.url).netloc == netloc:
                route.continue_()
            else:
                outside.append(route.request.url)
                route.abort()

        page.route("**/*", local_only)
        page.on("pageerror", lambda exc: errors.append(str(exc)))
        # A blocked asset or script is only a console message: the CSP must block nothing.
        page.on(
            "console",
            lambda message: (
                errors.append(message.text) if "Content Security Policy" in message.text else None
            ),
        )
        log_in(page, base, USERS[role])
        return page

    yield open_page
    for context in contexts:
        context.close()
    assert outside == [], f"a page tried to load from outside the node: {outside}"
    assert errors == [], f"a page's script failed: {errors}"


@pytest.fixture
def screenshots() -> Path | None:
    """Where to save the docs' screenshots: PYEDGE_SCREENSHOTS=docs/screenshots, else none."""
    target = os.environ.get("PYEDGE_SCREENSHOTS")
    return Path(target) if target else None
