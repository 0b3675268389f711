"""Authentication resources: login, first run, users, tokens and the audit log."""

from __future__ import annotations

from http import HTTPStatus
from typing import Any, NoReturn

from flask import g, request
from flask.views import MethodView
from flask_smorest import abort

from edge_server.security.schemas import (
    AuditArgs,
    AuditEntrySchema,
    IdentitySchema,
    LoginSchema,
    NewTokenSchema,
    SetupSchema,
    TokenCreateSchema,
    TokenSchema,
    UserCreateSchema,
    UserSchema,
)
from pyedge.accounts import AccountError, Identity, NoSuchAccount
from pyedge.auth import Auth, LoginRefused, current_auth, deny
from pyedge.security import Blueprint, Role, public, requires

blp = Blueprint(
    "auth", __name__, url_prefix="/api", description="Login, users, API tokens, the audit log."
)


def describe(identity: Identity, csrf: str | None = None) -> dict[str, Any]:
    """An identity as the API shows it."""
    body: dict[str, Any] = {
        "name": identity.name,
        "role": identity.role.label,
        "kind": identity.kind,
    }
    if csrf is not None:
        body["csrf_token"] = csrf
    return body


def refused(exc: LoginRefused) -> NoReturn:
    """429 with Retry-After for an attempt the limiter refused."""
    deny(
        HTTPStatus.TOO_MANY_REQUESTS,
        str(exc),
        headers={"Retry-After": str(int(exc.retry_after) + 1)},
    )


def log_in(auth: Auth, name: str, password: str, remote: str) -> Identity:
    """A user's identity for a right password; 401 (a counted failure) or 429 otherwise."""
    try:
        identity = auth.attempt(remote, lambda: auth.accounts.verify_password(name, password))
    except LoginRefused as exc:
        refused(exc)
    if identity is None:
        auth.record(f"user:{name}", "login", "/api/auth/login", HTTPStatus.UNAUTHORIZED)
        deny(HTTPStatus.UNAUTHORIZED, "wrong name or password")
    auth.record(identity.actor, "login", "/api/auth/login", HTTPStatus.OK)
    return identity


@blp.route("/auth/login")
class Login(MethodView):
    @public
    @blp.arguments(LoginSchema)
    @blp.response(200, IdentitySchema)
    @blp.alt_response(401, description="Wrong name or password")
    @blp.alt_response(429, description="Too many failed attempts from this client")
    def post(self, body: dict[str, str]) -> dict[str, Any]:
        """Log in: starts a session cookie; answers the CSRF token for changes."""
        auth = current_auth()
        identity = log_in(auth, body["name"], body["password"], request.remote_addr or "")
        return describe(identity, auth.login(identity))


@blp.route("/auth/logout")
class Logout(MethodView):
    @public
    @blp.response(204)
    def post(self) -> None:
        """Log out: ends the session."""
        auth = current_auth()
        if g.identity is not None and g.identity.kind == "user":
            auth.check_csrf()  # a page elsewhere must not log the user out
        auth.logout()


@blp.route("/auth/setup")
class Setup(MethodView):
    @public
    @blp.arguments(SetupSchema)
    @blp.response(201, IdentitySchema)
    @blp.alt_response(403, description="Wrong or used setup code, or an admin exists")
    @blp.alt_response(429, description="Too many failed attempts from this client")
    def post(self, body: dict[str, str]) -> dict[str, Any]:
        """First run: create the first admin with the setup code from the server's log."""
        auth = current_auth()
        try:
            identity = auth.first_admin(
                request.remote_addr or "", body["code"], body["name"], body["password"]
            )
        except LoginRefused as exc:
            refused(exc)
        except AccountError as exc:
            auth.record(f"user:{body['name']}", "setup", "/api/auth/setup", 403, str(exc))
            deny(HTTPStatus.FORBIDDEN, str(exc))
        auth.record(identity.actor, "setup", "/api/auth/setup", HTTPStatus.CREATED)
        return describe(identity, auth.login(identity))


@blp.route("/auth/me")
class Me(MethodView):
    @requires(Role.VIEWER)
    @blp.response(200, IdentitySchema)
    def get(self) -> dict[str, Any]:
        """Who the caller is, and its role."""
        identity: Identity = g.identity
        return describe(identity)


def store_call(call: Any, *args: Any) -> Any:
    """Run an AccountStore call; its errors become 404 or 409/422 in the envelope."""
    try:
        return call(*args)
    except NoSuchAccount as exc:
        abort(HTTPStatus.NOT_FOUND, message=str(exc))
    except AccountError as exc:
        clash = "already exists" in str(exc) or "last admin" in str(exc)
        status = HTTPStatus.CONFLICT if clash else HTTPStatus.BAD_REQUEST
        abort(status, message=str(exc))


@blp.route("/auth/users")
class Users(MethodView):
    @requires(Role.ADMIN)
    @blp.response(200, UserSchema(many=True))
    def get(self) -> list[dict[str, Any]]:
        """List the users and their roles."""
        return current_auth().accounts.users()

    @requires(Role.ADMIN)
    @blp.arguments(UserCreateSchema)
    @blp.response(201, UserSchema)
    def post(self, body: dict[str, Any]) -> dict[str, Any]:
        """Create a user with a password and a role."""
        store = current_auth().accounts
        store_call(store.add_user, body["name"], body["password"], Role.parse(body["role"]))
        return next(user for user in store.users() if user["name"] == body["name"])


@blp.route("/auth/users/<name>")
class UserResource(MethodView):
    @requires(Role.ADMIN)
    @blp.response(204)
    def delete(self, name: str) -> None:
        """Delete a user (their sessions end at once)."""
        store = current_auth().accounts
        store_call(store.delete_user, name)


@blp.route("/auth/tokens")
class Tokens(MethodView):
    @requires(Role.ADMIN)
    @blp.response(200, TokenSchema(many=True))
    def get(self) -> list[dict[str, Any]]:
        """List the API tokens: name, role, created, last used, expiry (never the token)."""
        store = current_auth().accounts
        return store.tokens()

    @requires(Role.ADMIN)
    @blp.arguments(TokenCreateSchema)
    @blp.response(201, NewTokenSchema)
    def post(self, body: dict[str, Any]) -> dict[str, Any]:
        """Create an API token; the answer is the only time it can be read."""
        store = current_auth().accounts
        token = store_call(
            store.create_token, body["name"], Role.parse(body["role"]), body["expires_days"]
        )
        found = next(item for item in store.tokens() if item["name"] == body["name"])
        return {**found, "token": token}


@blp.route("/auth/tokens/<name>")
class TokenResource(MethodView):
    @requires(Role.ADMIN)
    @blp.response(204)
    def delete(self, name: str) -> None:
        """Revoke an API token: it stops working at once."""
        store = current_auth().accounts
        store_call(store.revoke_token, name)


@blp.route("/audit")
class Audit(MethodView):
    @requires(Role.ADMIN)
    @blp.arguments(AuditArgs, location="query")
    @blp.response(200, AuditEntrySchema(many=True))
    def get(self, args: dict[str, Any]) -> list[dict[str, Any]]:
        """The audit log, newest first: who changed what, when, from where."""
        store = current_auth().accounts
        return store.audit_log(args["limit"], args["before"])
