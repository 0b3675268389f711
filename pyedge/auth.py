"""Auth: the Flask extension that authenticates every request and enforces its role.

Callers prove who they are with an API token (`Authorization: Bearer pye_...`) or with
the dashboard's session cookie. Each endpoint's role comes from its declaration
(pyedge.security), read from the view the request is routed to, so that no endpoint can
be forgotten: one without a declaration needs `viewer` to read and `admin` to change.
Cookie sessions also need a CSRF token on every unsafe request (a token is not sent by a
browser on its own, so token requests need none). Every change is written to the audit
log; failed logins are rate-limited per client.
"""

from __future__ import annotations

import hmac
import logging
import secrets
import threading
import time
from collections import defaultdict, deque
from datetime import timedelta
from http import HTTPStatus
from pathlib import Path
from typing import Any, NoReturn

from flask import Flask, Response, current_app, g, redirect, request, session, url_for
from flask_smorest import abort

from pyedge.accounts import AccountStore, Identity
from pyedge.security import READ_METHODS, Role, view_role

logger = logging.getLogger(__name__)

EXTENSION = "pyedge.auth"
CSRF_HEADER = "X-CSRF-Token"
CSRF_FIELD = "csrf_token"
# A cookie scripts of our own pages can read (Swagger UI sends it back as CSRF_HEADER).
CSRF_COOKIE = "pyedge_csrf"
SESSION_HOURS = 12
# Failed logins allowed per client in the window before it must wait.
MAX_FAILURES = 5
FAILURE_WINDOW_S = 60.0
# Answered with a redirect to the login page instead of 401: pages for people.
PAGE_BLUEPRINT = "pages"
PAGE_ENDPOINTS = frozenset({"api-docs.openapi_swagger_ui"})


class LoginLimiter:
    """Failed login attempts per client address, in a sliding window."""

    def __init__(self, max_failures: int = MAX_FAILURES, window: float = FAILURE_WINDOW_S) -> None:
        self.max_failures = max_failures
        self.window = window
        self._failures: dict[str, deque[float]] = defaultdict(deque)
        self._lock = threading.Lock()

    def retry_after(self, client: str) -> float:
        """Seconds the client must wait before trying again (0: it may try now)."""
        with self._lock:
            failures = self._prune(client)
            if len(failures) < self.max_failures:
                return 0.0
            return max(0.0, failures[0] + self.window - time.monotonic())

    def failed(self, client: str) -> None:
        """Count a failed attempt."""
        with self._lock:
            self._prune(client).append(time.monotonic())

    def succeeded(self, client: str) -> None:
        """Forget the client's failures."""
        with self._lock:
            self._failures.pop(client, None)

    def _prune(self, client: str) -> deque[float]:
        failures = self._failures[client]
        while failures and failures[0] + self.window < time.monotonic():
            failures.popleft()
        if not failures:
            # Keep the table to clients that failed lately.
            self._failures.pop(client, None)
            failures = self._failures[client]
        return failures


class Auth:
    """Authentication, roles, CSRF and the audit log for one app."""

    def __init__(self) -> None:
        self.store: AccountStore | None = None
        self.limiter = LoginLimiter()

    def init_app(self, app: Flask) -> None:
        """Open the accounts in the data dir and guard every request of `app`."""
        data_dir = Path(app.config["EDGE_DATA_DIR"])
        self.store = AccountStore(data_dir / "accounts.db")
        app.secret_key = _secret_key(data_dir / "secret_key")
        app.config["SESSION_COOKIE_HTTPONLY"] = True
        # Lax: the cookie goes with links into the dashboard, not with other sites' posts.
        app.config["SESSION_COOKIE_SAMESITE"] = "Lax"
        app.config["PERMANENT_SESSION_LIFETIME"] = timedelta(hours=SESSION_HOURS)
        app.before_request(self._guard)
        app.after_request(self._after)
        app.extensions[EXTENSION] = self
        if not self.store.has_users():
            code = self.store.new_setup_code()
            logger.warning(
                "first run: no user yet. Create the first admin at /setup with the one-time "
                "setup code %s (or on the device: pyedge user add NAME --role admin)",
                code,
            )

    def close(self) -> None:
        """Close the accounts store."""
        if self.store is not None:
            self.store.close()

    # --- identity -------------------------------------------------------------------------

    def identify(self) -> Identity | None:
        """The caller: a valid Bearer token, else a logged-in session, else None.

        A request that presents a token is judged by the token alone.
        """
        store = self.accounts
        header = request.headers.get("Authorization", "")
        if header:
            scheme, _, token = header.partition(" ")
            if scheme.lower() != "bearer" or not token.strip():
                return None
            return store.verify_token(token.strip())
        name = session.get("user")
        if not isinstance(name, str):
            return None
        # Read afresh: a deleted user or a changed role takes effect at once.
        return store.user(name)

    def login(self, identity: Identity) -> str:
        """Start a session for a user; returns its CSRF token."""
        session.clear()
        session.permanent = True
        session["user"] = identity.name
        session[CSRF_FIELD] = secrets.token_urlsafe(32)
        g.identity = identity
        return str(session[CSRF_FIELD])

    def logout(self) -> None:
        """End the session."""
        session.clear()

    def csrf_token(self) -> str:
        """The session's CSRF token (made on first use, e.g. for the login form)."""
        if CSRF_FIELD not in session:
            session[CSRF_FIELD] = secrets.token_urlsafe(32)
        return str(session[CSRF_FIELD])

    def check_csrf(self) -> None:
        """403 unless the request carries the session's CSRF token (header or form field)."""
        expected = session.get(CSRF_FIELD)
        given = request.headers.get(CSRF_HEADER) or request.form.get(CSRF_FIELD, "")
        if not expected or not given or not hmac.compare_digest(str(expected), given):
            deny(
                HTTPStatus.FORBIDDEN,
                f"missing or wrong CSRF token: send {CSRF_HEADER} (from the {CSRF_COOKIE} "
                "cookie) with every change made through a login session",
            )

    # --- hooks ----------------------------------------------------------------------------

    def _guard(self) -> Any:
        """Authenticate the request and check its role (before_request)."""
        g.identity = None
        endpoint = request.endpoint
        if endpoint is None:
            return None  # no such route: Flask answers 404/405 itself
        role = view_role(current_app.view_functions[endpoint], request.method)
        identity = self.identify()
        g.identity = identity
        if role is Role.PUBLIC:
            return None
        if identity is None:
            if request.blueprint == PAGE_BLUEPRINT or endpoint in PAGE_ENDPOINTS:
                return redirect(url_for("pages.login_page", next=request.full_path.rstrip("?")))
            deny(
                HTTPStatus.UNAUTHORIZED,
                "authentication required: an API token (Authorization: Bearer ...) "
                "or a login session",
                headers={"WWW-Authenticate": 'Bearer realm="pyedge"'},
            )
        if identity.role < role:
            deny(
                HTTPStatus.FORBIDDEN,
                f"needs the {role.label} role; {identity.actor} is {identity.role.label}",
            )
        if identity.kind == "user" and request.method not in READ_METHODS:
            self.check_csrf()
        return None

    def _after(self, response: Response) -> Response:
        """Audit every change; give a login session's scripts their CSRF token."""
        if request.method not in READ_METHODS and request.endpoint is not None:
            role = view_role(current_app.view_functions[request.endpoint], request.method)
            # A POST that only reads (an operation's wait) changes nothing.
            if role >= Role.OPERATOR:
                identity: Identity | None = g.get("identity")
                self.record(
                    identity.actor if identity else "anonymous",
                    request.method,
                    request.path,
                    response.status_code,
                )
        if CSRF_FIELD in session:
            response.set_cookie(
                CSRF_COOKIE,
                str(session[CSRF_FIELD]),
                samesite="Lax",
                secure=bool(current_app.config.get("SESSION_COOKIE_SECURE")),
                httponly=False,  # read by our own page scripts, by design
            )
        return response

    def record(
        self, actor: str, action: str, target: str, status: int | None, detail: str = ""
    ) -> None:
        """Write an audit entry for the current request's client; never fails the request."""
        try:
            self.accounts.audit(actor, action, target, status, request.remote_addr, detail)
        except Exception:
            logger.exception("audit entry lost: %s %s %s", actor, action, target)

    @property
    def accounts(self) -> AccountStore:
        """The accounts store (after init_app)."""
        assert self.store is not None, "init_app first"
        return self.store


def deny(status: HTTPStatus, message: str, **kwargs: Any) -> NoReturn:
    """Answer with the API's error envelope (flask-smorest's abort always raises)."""
    abort(status, message=message, **kwargs)
    raise AssertionError("abort returned")


def current_auth() -> Auth:
    """The current app's Auth."""
    auth: Auth = current_app.extensions[EXTENSION]
    return auth


def _secret_key(path: Path) -> bytes:
    """The app's session-signing key, made on first run and kept owner-only."""
    try:
        return path.read_bytes()
    except FileNotFoundError:
        key = secrets.token_bytes(32)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_bytes(key)
        tmp.chmod(0o600)
        tmp.replace(path)
        return key
