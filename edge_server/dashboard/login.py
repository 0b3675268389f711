"""Pages anyone may reach: login, first run and logout; the stylesheet; Swagger UI's assets."""

from __future__ import annotations

from http import HTTPStatus
from pathlib import Path
from urllib.parse import urlsplit

from flask import Response, redirect, render_template, request, send_from_directory, url_for
from swagger_ui_bundle import swagger_ui_path
from werkzeug.wrappers import Response as BaseResponse

from edge_server.dashboard.pages import bp
from pyedge.accounts import AccountError
from pyedge.auth import LoginRefused, current_auth
from pyedge.security import public

# Swagger UI is served from the installed package: a Pi may have no internet.
SWAGGER_ASSETS_URL = "/api/docs/assets/"
STATIC_DIR = Path(__file__).parent / "static"
# Assets change with the release; a day's caching is plenty on a device's network.
ASSET_MAX_AGE_S = 3600


def safe_next(target: str | None) -> str:
    """Where to go after login: a path on this server only (no open redirect)."""
    parts = urlsplit(target or "/")
    if parts.scheme or parts.netloc or not (target or "/").startswith("/"):
        return "/"
    return target or "/"


def form_page(title: str, setup: bool, error: str = "", status: int = 200) -> tuple[str, int]:
    """The login or first-run form, with a CSRF token of the visitor's session."""
    auth = current_auth()
    page = render_template(
        "login.html",
        title=title,
        setup=setup,
        error=error,
        next=safe_next(request.values.get("next")),
        csrf_token=auth.csrf_token(),
        first_run=not auth.accounts.has_users(),
    )
    return page, status


@public
@bp.route("/login", methods=["GET", "POST"])
def login_page() -> tuple[str, int] | BaseResponse:
    """The login form; a right name and password start a session."""
    if request.method != "POST":
        return form_page("Log in", setup=False)
    auth = current_auth()
    auth.check_csrf()
    form = request.form
    name, password = form.get("name", ""), form.get("password", "")
    try:
        identity = auth.attempt(
            request.remote_addr or "", lambda: auth.accounts.verify_password(name, password)
        )
    except LoginRefused as exc:
        return form_page("Log in", False, f"{exc}.", HTTPStatus.TOO_MANY_REQUESTS)
    if identity is None:
        auth.record(f"user:{name}", "login", "/login", 401)
        return form_page("Log in", False, "Wrong name or password.", HTTPStatus.UNAUTHORIZED)
    auth.record(identity.actor, "login", "/login", 200)
    auth.login(identity)
    return redirect(safe_next(request.form.get("next")))


@public
@bp.route("/setup", methods=["GET", "POST"])
def setup_page() -> tuple[str, int] | BaseResponse:
    """First run: create the first admin with the setup code from the server's log."""
    auth = current_auth()
    if auth.accounts.has_users():
        return redirect(url_for("pages.login_page"))
    if request.method != "POST":
        return form_page("First run", setup=True)
    auth.check_csrf()
    form = request.form
    name = form.get("name", "")
    try:
        identity = auth.first_admin(
            request.remote_addr or "", form.get("code", ""), name, form.get("password", "")
        )
    except LoginRefused as exc:
        return form_page("First run", True, f"{exc}.", HTTPStatus.TOO_MANY_REQUESTS)
    except AccountError as exc:
        auth.record(f"user:{name}", "setup", "/setup", 403, str(exc))
        return form_page("First run", True, f"{exc}.", HTTPStatus.FORBIDDEN)
    auth.record(identity.actor, "setup", "/setup", 201)
    auth.login(identity)
    return redirect("/")


@public
@bp.post("/logout")
def logout_page() -> BaseResponse:
    """End the session and go back to the login page."""
    auth = current_auth()
    auth.check_csrf()
    auth.logout()
    return redirect(url_for("pages.login_page"))


@public
@bp.get("/static/css/<path:filename>")
def css(filename: str) -> Response:
    """The stylesheet, which the login page needs before anyone has logged in."""
    return send_from_directory(STATIC_DIR / "css", filename, max_age=ASSET_MAX_AGE_S)


@bp.get("/static/<path:filename>")
def assets(filename: str) -> Response:
    """The dashboard's scripts and vendored assets, to a logged-in caller."""
    return send_from_directory(STATIC_DIR, filename, max_age=ASSET_MAX_AGE_S)


@bp.get(f"{SWAGGER_ASSETS_URL}<path:filename>")
def swagger_assets(filename: str) -> Response:
    """Serve a Swagger UI file from the swagger-ui-bundle package."""
    return send_from_directory(swagger_ui_path, filename, max_age=86400)
