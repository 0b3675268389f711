"""alerts REST resources: the rules (CRUD) and the history of events."""

from __future__ import annotations

import re
from http import HTTPStatus
from typing import Any

import marshmallow as ma
from flask import request
from flask.views import MethodView
from flask_smorest import abort

from alerts.engine import Engine, RuleConflict
from alerts.rules import ACTION_TARGET, KIND_FIELDS, RULE_NAME_RE, RuleBodySchema, RuleSchema
from alerts.schemas import EventSchema, HistoryArgs, RuleOutSchema
from alerts.service import ENGINE, service
from pyedge.bodies import require_json_body
from pyedge.schemas import json_schema
from pyedge.security import Role, requires

blp = service.blueprint


# The path's rule name, as a rule's `name` is: a PUT may create the rule.
NAME_PARAMETER = {
    "in": "path",
    "name": "name",
    "required": True,
    "schema": {"type": "string", "pattern": RULE_NAME_RE},
}


def body_doc(schema: type[ma.Schema]) -> dict[str, Any]:
    """A rule body's OpenAPI, with the cross-field rules that marshmallow's export leaves out.

    The schema is inlined rather than a component: a `$ref` takes no siblings in OpenAPI
    3.0, and the document must refuse what the API refuses.
    """
    document = json_schema(schema)
    document["anyOf"] = KIND_FIELDS
    items = document["properties"]["actions"]["items"]
    items["anyOf"] = ACTION_TARGET
    content = {"application/json": {"schema": document}}
    return {"requestBody": {"required": True, "content": content}}


def load_body(schema: ma.Schema) -> dict[str, Any]:
    """The request's JSON body loaded by `schema`; 422 with the usual envelope if invalid."""
    try:
        loaded: dict[str, Any] = schema.load(request.get_json())
    except ma.ValidationError as exc:
        abort(HTTPStatus.UNPROCESSABLE_ENTITY, errors={"json": exc.messages})
    return loaded


def current_engine() -> Engine:
    """The running engine, or 503 while the service is not started."""
    engine: Engine | None = service.runtime().extras.get(ENGINE)
    if engine is None:
        abort(HTTPStatus.SERVICE_UNAVAILABLE, message="alerts is not running")
    return engine


def shown(engine: Engine, rule: dict[str, Any]) -> dict[str, Any]:
    """A rule with its source and state."""
    return {**rule, "source": engine.source(rule["name"]), **engine.state_of(rule["name"])}


def find_rule(engine: Engine, name: str) -> dict[str, Any]:
    """The named rule, or 404."""
    rule = engine.rules().get(name)
    if rule is None:
        abort(HTTPStatus.NOT_FOUND, message=f"no rule {name!r}")
    return rule


@blp.route("/rules")
class Rules(MethodView):
    @blp.response(200, RuleOutSchema(many=True))
    def get(self) -> list[dict[str, Any]]:
        """Every rule, from the rules file and the API, with its current state."""
        engine = current_engine()
        return [shown(engine, rule) for _name, rule in sorted(engine.rules().items())]

    # Rules are the operators' daily work, as starting and stopping operations is.
    @requires(Role.OPERATOR)
    @blp.doc(**body_doc(RuleSchema))
    @blp.response(201, RuleOutSchema)
    @blp.alt_response(422, description="An invalid rule")
    @blp.alt_response(409, description="A rule of that name exists")
    @require_json_body
    def post(self) -> dict[str, Any]:
        """Create a rule; it is watched at once and kept across restarts."""
        rule = load_body(RuleSchema())
        engine = current_engine()
        try:
            engine.create(rule)
        except RuleConflict as exc:
            abort(HTTPStatus.CONFLICT, message=str(exc))
        return shown(engine, rule)


@blp.route("/rules/<name>", parameters=[NAME_PARAMETER])
class RuleResource(MethodView):
    @blp.response(200, RuleOutSchema)
    def get(self, name: str) -> dict[str, Any]:
        """One rule with its current state."""
        engine = current_engine()
        return shown(engine, find_rule(engine, name))

    @requires(Role.OPERATOR)
    @blp.doc(**body_doc(RuleBodySchema))
    @blp.response(200, RuleOutSchema)
    @blp.alt_response(422, description="An invalid rule")
    @blp.alt_response(409, description="The rule comes from the rules file (read-only here)")
    @require_json_body
    def put(self, name: str) -> dict[str, Any]:
        """Replace (or create) a rule named by the path; its state starts afresh."""
        if not re.fullmatch(RULE_NAME_RE, name):
            abort(HTTPStatus.NOT_FOUND, message=f"no rule {name!r}: not a rule name")
        rule = {**load_body(RuleBodySchema()), "name": name}
        engine = current_engine()
        try:
            engine.replace(rule)
        except RuleConflict as exc:
            abort(HTTPStatus.CONFLICT, message=str(exc))
        return shown(engine, rule)

    @requires(Role.OPERATOR)
    @blp.response(204)
    @blp.alt_response(404, description="No such rule")
    @blp.alt_response(409, description="The rule comes from the rules file (read-only here)")
    def delete(self, name: str) -> None:
        """Delete a rule, and its retained state (its history stays)."""
        engine = current_engine()
        find_rule(engine, name)
        try:
            engine.delete(name)
        except RuleConflict as exc:
            abort(HTTPStatus.CONFLICT, message=str(exc))


@blp.route("/history")
class History(MethodView):
    @blp.arguments(HistoryArgs, location="query")
    @blp.response(200, EventSchema(many=True))
    def get(self, args: dict[str, Any]) -> list[dict[str, Any]]:
        """Events of the rules, newest first (of one rule with `rule`)."""
        return current_engine().store.history(args["rule"], args["limit"])
