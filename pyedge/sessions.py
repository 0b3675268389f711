"""Flask's signed-cookie sessions, without their cost for a request that has no cookie.

Flask opens the session of every request, building a signing serializer first, and saves it
after. An API client with a token sends no cookie: its session is empty, never read and never
written, so there is nothing to verify or to save.
"""

from __future__ import annotations

from flask import Flask, Request, Response
from flask.sessions import SecureCookieSession, SecureCookieSessionInterface, SessionMixin


class CookieSessionInterface(SecureCookieSessionInterface):
    """Flask's cookie sessions; a request without the cookie skips the signing machinery."""

    def open_session(self, app: Flask, request: Request) -> SecureCookieSession | None:
        """An empty session when there is no cookie (and a key to sign a new one with)."""
        # No Cookie header at all (an API client): not even the cookies to parse.
        if app.secret_key and (
            "HTTP_COOKIE" not in request.environ or self.get_cookie_name(app) not in request.cookies
        ):
            return self.session_class()
        return super().open_session(app, request)

    def save_session(self, app: Flask, session: SessionMixin, response: Response) -> None:
        """Flask's save, unless the session is empty and was neither read nor changed."""
        if not session and not session.accessed and not session.modified:
            return
        super().save_session(app, session, response)
