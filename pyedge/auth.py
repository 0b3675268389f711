"""Auth: the Flask extension that authenticates every request and enforces its role.

Callers prove who they are with an API token (`Authorization: Bearer pye_...`) or with
the dashboard's session cookie. Each endpoint's role comes from its declaration
(pyedge.security), read from the view the request is routed to, so that no endpoint can
be forgotten: one without a declaration needs `viewer` to read and `admin` to change.
Cookie sessions also need a CSRF token on every unsafe request (a token is not sent by a
browser on its own, so token requests need none). Every change is written to the audit
log; failed logins are rate-limited per client. A request proxied by the hub carries its
caller signed by the hub (pyedge.identity), trusted by a process serving its services on
its own (`pyedge serve`) when it holds the hub's key.
"""

from __future__ import annotations

import hmac
import logging
import os
import secrets
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import timedelta
from http import HTTPStatus
from pathlib import Path
from typing import Any, NoReturn

from flask import Flask, Response, current_app, g, redirect, request, session, url_for
from flask_smorest import abort

from pyedge.accounts import AccountError, AccountStore, Identity
from pyedge.errors import PyEdgeError
from pyedge.host import EXTENSION as HOST_EXTENSION
from pyedge.host import ServiceHost
from pyedge.identity import (
    CALLER_HEADER,
    SIGNATURE_HEADER,
    CallerRefused,
    HubKey,
    audiences,
    check_caller,
)
from pyedge.security import READ_METHODS, Role, view_role
from pyedge.sessions import CookieSessionInterface

logger = logging.getLogger(__name__)

EXTENSION = "pyedge.auth"
CSRF_HEADER = "X-CSRF-Token"
CSRF_FIELD = "csrf_token"
SESSION_HOURS = 12
# Failed logins allowed per client in the window before it must wait.
MAX_FAILURES = 5
FAILURE_WINDOW_S = 60.0
# Passwords checked at once, and how long a check waits for a slot before giving up.
VERIFY_SLOTS = 2
VERIFY_WAIT_S = 10.0
# Answered with a redirect to the login page instead of 401: pages for people.
PAGE_BLUEPRINT = "pages"
PAGE_ENDPOINTS = frozenset({"api-docs.openapi_swagger_ui"})
# Refused forwarded callers are logged at most once in this many seconds (anyone can send
# the header); the others are counted, and logged at DEBUG.
REFUSAL_LOG_INTERVAL_S = 60.0


class LoginRefused(PyEdgeError):
    """A login or first-run attempt refused before its check: too many, or too busy."""

    def __init__(self, message: str, retry_after: float) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class LoginLimiter:
    """Failed login attempts per client address, in a sliding window.

    An attempt is reserved before the password is checked, so parallel guesses count at
    once; a success does not wipe the client's failures (one good login of another
    account must not buy more guesses). At most VERIFY_SLOTS hashes are checked at once:
    each Argon2 check takes tens of MiB, which a Pi cannot give to a flood.
    """

    def __init__(self, max_failures: int = MAX_FAILURES, window: float = FAILURE_WINDOW_S) -> None:
        self.max_failures = max_failures
        self.window = window
        self._failures: dict[str, deque[float]] = {}
        self._pending: dict[str, int] = {}
        self._lock = threading.Lock()
        self._verifying = threading.BoundedSemaphore(VERIFY_SLOTS)

    def begin(self, client: str) -> float:
        """Reserve an attempt: 0 when the client may try now, else the seconds to wait."""
        with self._lock:
            failures = self._prune(client)
            pending = self._pending.get(client, 0)
            if len(failures) + pending >= self.max_failures:
                oldest = failures[0] if failures else time.monotonic()
                return max(1.0, oldest + self.window - time.monotonic())
            self._pending[client] = pending + 1
            return 0.0

    def end(self, client: str, ok: bool) -> None:
        """Close a reserved attempt; a failure counts for the window."""
        with self._lock:
            pending = self._pending.get(client, 1) - 1
            if pending:
                self._pending[client] = pending
            else:
                self._pending.pop(client, None)
            if not ok:
                self._failures.setdefault(client, deque()).append(time.monotonic())

    @contextmanager
    def verifying(self) -> Iterator[bool]:
        """A slot to check a password in; False when every slot stayed busy."""
        acquired = self._verifying.acquire(timeout=VERIFY_WAIT_S)
        try:
            yield acquired
        finally:
            if acquired:
                self._verifying.release()

    def _prune(self, client: str) -> deque[float]:
        failures = self._failures.get(client, deque())
        while failures and failures[0] + self.window < time.monotonic():
            failures.popleft()
        if not failures:
            # Only clients that failed lately are kept: the table stays small.
            self._failures.pop(client, None)
        return failures


class RefusalLog:
    """Warnings about refused forwarded callers, at most one per interval; the rest counted."""

    def __init__(self, interval: float = REFUSAL_LOG_INTERVAL_S) -> None:
        self.interval = interval
        self._last: float | None = None
        self._skipped = 0
        self._lock = threading.Lock()

    def refused(self, message: str, *args: Any) -> None:
        """Log one refusal: a warning, unless one was logged within the interval."""
        now = time.monotonic()
        with self._lock:
            if self._last is not None and now - self._last < self.interval:
                self._skipped += 1
                skipped = -1
            else:
                skipped, self._skipped, self._last = self._skipped, 0, now
        if skipped < 0:
            logger.debug(message, *args)
        elif skipped:
            logger.warning(
                "%s (and %d more refused in the last %.0f s)",
                message % args,
                skipped,
                self.interval,
            )
        else:
            logger.warning(message, *args)


# Where WSGI puts the hub's caller header.
CALLER_ENVIRON = "HTTP_" + CALLER_HEADER.upper().replace("-", "_")
# What every answer carries unless its view set its own (the pages set a stricter policy).
FRAME_HEADERS = (
    ("X-Frame-Options", "DENY"),
    ("Content-Security-Policy", "frame-ancestors 'none'"),
)
# Under TLS: HSTS too.
SECURE_HEADERS = (*FRAME_HEADERS, ("Strict-Transport-Security", "max-age=31536000"))


class Auth:
    """Authentication, roles, CSRF and the audit log for one app."""

    def __init__(self) -> None:
        self.store: AccountStore | None = None
        self.limiter = LoginLimiter()
        self.hub_key: HubKey | None = None
        self.refusals = RefusalLog()
        # The role each (endpoint, method) needs: views are fixed once the app serves.
        self._roles: dict[tuple[str, str], Role] = {}

    def init_app(self, app: Flask, setup_code: bool = True) -> None:
        """Open the accounts in the data dir and guard every request of `app`."""
        data_dir = Path(app.config["EDGE_DATA_DIR"])
        self.store = AccountStore(data_dir / "accounts.db")
        self.hub_key = HubKey(data_dir, app.config.get("EDGE_HUB_PUBLIC_KEY"))
        app.secret_key = _secret_key(data_dir / "secret_key")
        app.session_interface = CookieSessionInterface()
        app.config["SESSION_COOKIE_HTTPONLY"] = True
        # Lax: the cookie goes with links into the dashboard, not with other sites' posts.
        app.config["SESSION_COOKIE_SAMESITE"] = "Lax"
        app.config["PERMANENT_SESSION_LIFETIME"] = timedelta(hours=SESSION_HOURS)
        # Our pages (and Swagger UI's) embed the session's CSRF token for their scripts.
        app.context_processor(lambda: {"csrf_token": self.csrf_token()})
        app.before_request(self._guard)
        app.after_request(self._after)
        app.extensions[EXTENSION] = self
        if self.store.has_users():
            return
        if not setup_code:
            logger.info("no user here: callers come through the edge-server that signs them")
        else:
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
        """The caller: one the hub vouches for, else a valid Bearer token, else a logged-in
        session, else None.

        A request that presents a token is judged by the token alone. A forwarded caller
        that does not verify is ignored (the hub strips the client's own credentials, so
        such a request ends as one without any).
        """
        store = self.accounts
        # Straight from the WSGI environ: the headers' mapping costs more (a miss raises).
        environ = request.environ
        if CALLER_ENVIRON in environ:
            forwarded = self.forwarded_caller()
            if forwarded is not None:
                return forwarded
        header = environ.get("HTTP_AUTHORIZATION", "")
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

    def forwarded_caller(self) -> Identity | None:
        """The caller the hub signed for this request, if this process serves its services on
        its own, trusts a hub, and the claim verifies and is meant for one of its services."""
        host: ServiceHost | None = current_app.extensions.get(HOST_EXTENSION)
        client = request.remote_addr
        if host is None or not host.serves_alone:
            # An edge-server signs forwarded callers; it never takes one (its hub.pub may
            # be its own key, or a joined hub's).
            self.refusals.refused(
                "%s from %s ignored: only a service served on its own takes forwarded callers",
                CALLER_HEADER,
                client,
            )
            return None
        key = self.hub_key.get() if self.hub_key is not None else None
        if key is None:
            self.refusals.refused(
                "%s from %s ignored: this node trusts no hub (no hub.pub)", CALLER_HEADER, client
            )
            return None
        signed = {name: request.headers.get(name, "") for name in (CALLER_HEADER, SIGNATURE_HEADER)}
        path = request.path
        try:
            identity = check_caller(
                key,
                signed,
                request.method,
                path,
                audience=audiences(path, host.node, host.runtimes),
            )
        except CallerRefused as exc:
            self.refusals.refused("%s from %s ignored: %s", CALLER_HEADER, client, exc)
            return None
        # Not a browser session: the hub checked its CSRF token, if it had one.
        g.forwarded = True
        return identity

    def login(self, identity: Identity) -> str:
        """Start a session for a user; returns its CSRF token."""
        session.clear()
        session.permanent = True
        session["user"] = identity.name
        session[CSRF_FIELD] = secrets.token_urlsafe(32)
        g.identity = identity
        return str(session[CSRF_FIELD])

    def attempt(self, client: str, check: Callable[[], Identity | None]) -> Identity | None:
        """Run a credential check for a client under the limiter; None (or an error) fails.

        Raises LoginRefused while the client has failed too often, or every slot is busy.
        """
        wait = self.limiter.begin(client)
        if wait > 0:
            raise LoginRefused(f"too many failed attempts: try again in {wait:.0f} s", wait)
        identity = None
        try:
            with self.limiter.verifying() as slot:
                if not slot:
                    raise LoginRefused("busy checking other logins: try again shortly", 5.0)
                identity = check()
            return identity
        finally:
            self.limiter.end(client, identity is not None)

    def first_admin(self, client: str, code: str, name: str, password: str) -> Identity:
        """Create the first admin with the setup code, under the limiter.

        Raises AccountError (a counted failure: wrong code, an admin exists, a bad name or
        password) or LoginRefused.
        """
        errors: list[AccountError] = []

        def create() -> Identity | None:
            try:
                return self.accounts.first_admin(code, name, password)
            except AccountError as exc:
                errors.append(exc)
                return None

        identity = self.attempt(client, create)
        if identity is None:
            raise errors[0]
        return identity

    def logout(self) -> None:
        """End the session."""
        session.clear()

    def csrf_token(self) -> str:
        """The session's CSRF token (made on first use, e.g. for the login form)."""
        if CSRF_FIELD not in session:
            session[CSRF_FIELD] = secrets.token_urlsafe(32)
        return str(session[CSRF_FIELD])

    def check_csrf(self) -> None:
        """403 unless a session's unsafe request carries its CSRF token and comes from here.

        The API takes the token only in the X-CSRF-Token header: a cross-origin page cannot
        set a header without a preflight, which is never granted. The form field is for our
        own pages' forms. A browser's Origin, when sent, must be this server's.
        """
        origin = request.headers.get("Origin")
        if origin and origin.rstrip("/") != request.host_url.rstrip("/"):
            deny(HTTPStatus.FORBIDDEN, f"cross-origin request from {origin} refused")
        expected = session.get(CSRF_FIELD)
        given = request.headers.get(CSRF_HEADER, "")
        if not given and request.blueprint == PAGE_BLUEPRINT:
            given = request.form.get(CSRF_FIELD, "")
        if not expected or not given or not hmac.compare_digest(str(expected), given):
            deny(
                HTTPStatus.FORBIDDEN,
                f"missing or wrong CSRF token: send {CSRF_HEADER} with every change made "
                "through a login session (the login answer and the pages carry it)",
            )

    # --- hooks ----------------------------------------------------------------------------

    def _guard(self) -> Any:
        """Authenticate the request and check its role (before_request)."""
        g.identity = None
        g.forwarded = False
        endpoint = request.endpoint
        if endpoint is None:
            return None  # no such route: Flask answers 404/405 itself
        role = self.role_for(endpoint, request.method)
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
        forwarded = g.get("forwarded", False)
        if identity.kind == "user" and not forwarded and request.method not in READ_METHODS:
            self.check_csrf()
        return None

    def role_for(self, endpoint: str, method: str) -> Role:
        """The role the view at `endpoint` needs for `method` (looked up once)."""
        key = (endpoint, method)
        role = self._roles.get(key)
        if role is None:
            role = self._roles[key] = view_role(current_app.view_functions[endpoint], method)
        return role

    def _after(self, response: Response) -> Response:
        """Audit every change; forbid framing (clickjacking); HSTS under TLS."""
        # No page of the node may be framed by another site's page ("Execute", "Log out").
        # One pass over the headers (setdefault scans them twice per header it adds).
        headers = response.headers
        present = {name.lower() for name, _value in headers}
        secure = current_app.config.get("SESSION_COOKIE_SECURE")
        for name, value in SECURE_HEADERS if secure else FRAME_HEADERS:
            if name.lower() not in present:
                headers.add(name, value)
        if request.method not in READ_METHODS and request.endpoint is not None:
            role = self.role_for(request.endpoint, request.method)
            # A POST that only reads (an operation's wait) changes nothing.
            if role >= Role.OPERATOR:
                identity: Identity | None = g.get("identity")
                self.record(
                    identity.actor if identity else "anonymous",
                    request.method,
                    request.path,
                    response.status_code,
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
    """The app's session-signing key, made on first run, owner-only from its first byte."""
    try:
        if path.stat().st_mode & 0o077:
            logger.warning("%s was readable by others: made owner-only", path)
            path.chmod(0o600)
        return path.read_bytes()
    except FileNotFoundError:
        pass
    key = secrets.token_bytes(32)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.unlink(missing_ok=True)
    # Created 0600 by open() itself: a chmod afterwards would leave a window to read it.
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(key)
    tmp.replace(path)
    return key
