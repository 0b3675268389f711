"""The fault suite: every test here is marked `faults`; the run ends with the counting table."""

from __future__ import annotations

from pathlib import Path

import pytest
from _pytest.terminal import TerminalReporter

from tests.containers.conftest import cm_app, cm_client, cm_config, cm_server, docker_client
from tests.faults.report import REPORT, read, table

__all__ = ["cm_app", "cm_client", "cm_config", "cm_server", "docker_client"]

HERE = Path(__file__).parent


@pytest.hookimpl(tryfirst=True)  # before `-m` selects by the marker
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark this directory's tests, so that `-m "not faults"` leaves them to `make faults`."""
    for item in items:
        if HERE in Path(item.path).parents:
            item.add_marker(pytest.mark.faults)


_ran: list[bool] = []


@pytest.fixture(scope="session", autouse=True)
def fresh_report() -> None:
    """Start the run's report empty: its rows are this run's."""
    REPORT.unlink(missing_ok=True)
    _ran.append(True)


def pytest_terminal_summary(terminalreporter: TerminalReporter) -> None:
    """The counting report of every fault test that ran."""
    rows = read()
    if _ran and rows:
        terminalreporter.write_sep("=", f"fault report ({REPORT})")
        terminalreporter.write_line(table(rows))
