"""The web dashboard: its pages, the live event stream, and the assets they use."""

from __future__ import annotations

from typing import Any

from flask import Flask

from pyedge import ServiceHost


def init_app(app: Flask, host: ServiceHost, api: Any) -> None:
    """Mount the pages and `/api/events` (on the host's bus) on `app`."""
    from edge_server.dashboard import events, login, pages

    assert login.bp is pages.bp  # the login pages are routes of the same blueprint
    app.register_blueprint(pages.bp)
    events.init_app(app, host, api)
