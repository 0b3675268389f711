"""Schemas of the authentication resources."""

from __future__ import annotations

import marshmallow as ma

from pyedge import fields
from pyedge.accounts import NAME_PATTERN, NAME_RULE

ROLES = ("viewer", "operator", "admin")
ACCOUNT_NAME_RE = NAME_PATTERN


class LoginSchema(ma.Schema):
    """A user's name and password."""

    name = ma.fields.String(required=True, validate=ma.validate.Length(min=1, max=64))
    password = ma.fields.String(
        required=True, load_only=True, validate=ma.validate.Length(min=1, max=1024)
    )


class SetupSchema(LoginSchema):
    """The first admin, with the one-time setup code from the server's log."""

    code = ma.fields.String(required=True, validate=ma.validate.Length(min=1, max=64))


class IdentitySchema(ma.Schema):
    """Who the caller is."""

    name = ma.fields.String(required=True)
    role = ma.fields.String(required=True)
    kind = ma.fields.String(required=True, metadata={"description": "user or token"})
    csrf_token = ma.fields.String(
        metadata={"description": "send as X-CSRF-Token with changes made through the session"}
    )


class UserSchema(ma.Schema):
    """A user."""

    name = ma.fields.String(required=True)
    role = ma.fields.String(required=True)
    created_at = ma.fields.String()


class UserCreateSchema(ma.Schema):
    """A new user."""

    name = ma.fields.String(
        required=True, validate=fields.FullMatch(ACCOUNT_NAME_RE, error=NAME_RULE)
    )
    password = ma.fields.String(
        required=True, load_only=True, validate=ma.validate.Length(min=8, max=1024)
    )
    role = ma.fields.String(required=True, validate=ma.validate.OneOf(ROLES))


class TokenSchema(ma.Schema):
    """An API token as listed (never the token itself)."""

    name = ma.fields.String(required=True)
    role = ma.fields.String(required=True)
    created_at = ma.fields.String()
    last_used_at = ma.fields.String(allow_none=True)
    expires_at = ma.fields.String(allow_none=True)


class TokenCreateSchema(ma.Schema):
    """A new API token."""

    name = ma.fields.String(
        required=True, validate=fields.FullMatch(ACCOUNT_NAME_RE, error=NAME_RULE)
    )
    role = ma.fields.String(required=True, validate=ma.validate.OneOf(ROLES))
    expires_days = ma.fields.Float(
        load_default=None, allow_none=True, validate=ma.validate.Range(min=0.001, max=36500)
    )


class NewTokenSchema(TokenSchema):
    """A token just created: the only answer that holds it."""

    token = ma.fields.String(required=True)


class AuditArgs(ma.Schema):
    """Query of GET /api/audit."""

    limit = ma.fields.Integer(load_default=100, validate=ma.validate.Range(min=1, max=1000))
    before = ma.fields.Integer(
        load_default=None, metadata={"description": "entries older than this id (paging)"}
    )


class AuditEntrySchema(ma.Schema):
    """One change: who, what, on what, with which outcome, when, from where."""

    id = ma.fields.Integer()
    ts = ma.fields.String()
    actor = ma.fields.String()
    action = ma.fields.String()
    target = ma.fields.String()
    status = ma.fields.Integer(allow_none=True)
    remote = ma.fields.String(allow_none=True)
    detail = ma.fields.String(allow_none=True)
