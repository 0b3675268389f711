"""Roles, and each endpoint's role declared once: enforced by the server, shown in OpenAPI.

A view method declares its role with `@requires(Role.OPERATOR)` (or `@public`). A method
that declares none gets the safe default: `viewer` to read (GET, HEAD), `admin` to change
anything. `Blueprint` (a flask-smorest Blueprint) writes each operation's role into the
OpenAPI document as its `security` and `x-pyedge-role`, from the same declaration the
server enforces, so that the two cannot differ.
"""

from __future__ import annotations

from collections.abc import Callable
from enum import IntEnum
from typing import Any, TypeVar

import flask_smorest

from pyedge.bodies import require_json_body

F = TypeVar("F", bound=Callable[..., Any])

ROLE_ATTRIBUTE = "_pyedge_role"
READ_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
# OpenAPI security schemes: an API token, or the dashboard's session cookie.
SECURITY_SCHEMES = {
    "bearerAuth": {"type": "http", "scheme": "bearer", "description": "an API token"},
    "cookieAuth": {
        "type": "apiKey",
        "in": "cookie",
        "name": "session",
        "description": "the dashboard's login session (unsafe methods also need X-CSRF-Token)",
    },
}


class Role(IntEnum):
    """What a caller may do; each role may do what the ones below it may."""

    PUBLIC = 0
    VIEWER = 1
    OPERATOR = 2
    ADMIN = 3

    @property
    def label(self) -> str:
        """The role's name as users write it: viewer, operator, admin (public)."""
        return self.name.lower()

    @classmethod
    def parse(cls, value: str) -> Role:
        """A role from its name; ValueError for anything but viewer, operator, admin."""
        try:
            role = cls[value.strip().upper()]
        except KeyError:
            role = cls.PUBLIC
        if role is cls.PUBLIC:
            raise ValueError(f"a role is viewer, operator or admin, not {value!r}")
        return role


USER_ROLES = (Role.VIEWER, Role.OPERATOR, Role.ADMIN)


def requires(role: Role) -> Callable[[F], F]:
    """Declare the role a view method (or view function) needs."""

    def decorate(func: F) -> F:
        setattr(func, ROLE_ATTRIBUTE, role)
        return func

    return decorate


def public(func: F) -> F:
    """Declare a view reachable without authentication (health, login, first run)."""
    return requires(Role.PUBLIC)(func)


def declared_role(func: Any, method: str) -> Role:
    """The role `func` declares, or the default for `method`."""
    role = getattr(func, ROLE_ATTRIBUTE, None)
    if isinstance(role, Role):
        return role
    return Role.VIEWER if method.upper() in READ_METHODS else Role.ADMIN


def view_role(view: Any, method: str) -> Role:
    """The role a Flask view function needs for `method` (MethodViews: their method's)."""
    view_class = getattr(view, "view_class", None)
    if view_class is not None:
        handler = getattr(view_class, method.lower(), None)
        if handler is None and method.upper() == "HEAD":
            handler = getattr(view_class, "get", None)
        if handler is not None:
            return declared_role(handler, method)
    return declared_role(view, method)


def operation_security(role: Role) -> dict[str, Any]:
    """The OpenAPI fields that document a role."""
    if role is Role.PUBLIC:
        return {"security": [], "x-pyedge-role": role.label}
    return {
        "security": [{"bearerAuth": []}, {"cookieAuth": []}],
        "x-pyedge-role": role.label,
    }


class Blueprint(flask_smorest.Blueprint):  # type: ignore[misc]
    """A flask-smorest Blueprint that documents each operation's role."""

    def arguments(self, schema: Any, *args: Any, **kwargs: Any) -> Any:
        """flask-smorest's, with one schema instance: webargs makes a new one from a class
        on every request (a marshmallow schema's set-up costs more than its load)."""
        instance = schema() if isinstance(schema, type) else schema
        decorate = super().arguments(instance, *args, **kwargs)
        if kwargs.get("location", "json") != "json" or not kwargs.get("required", True):
            return decorate
        # The document says the body is required: so does the server (pyedge.bodies).
        return lambda func: require_json_body(decorate(func))

    def _store_endpoint_docs(
        self, endpoint: str, obj: Any, parameters: Any, tags: Any, **options: Any
    ) -> None:
        super()._store_endpoint_docs(endpoint, obj, parameters, tags, **options)
        docs: dict[str, Any] = self._docs[endpoint]
        for method, doc in docs.items():
            if method == "parameters":
                continue
            handler = getattr(obj, method, obj) if isinstance(obj, type) else obj
            role = declared_role(handler, method)
            manual = doc.setdefault("manual_doc", {})
            manual.update(operation_security(role))
            if role is not Role.PUBLIC:
                responses = manual.setdefault("responses", {})
                responses.setdefault("401", {"description": "Not authenticated"})
                responses.setdefault("403", {"description": f"Needs the {role.label} role"})
