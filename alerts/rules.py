"""The rule model: its marshmallow schema and the TOML rules file."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path
from typing import Any

import marshmallow as ma

from pyedge import ConfigError
from pyedge.fields import FullMatch

RULE_NAME_RE = r"^[a-z0-9][a-z0-9_-]{0,63}$"
NODE_RE = r"^[A-Za-z0-9_.-]{1,64}$"
# http(s), an optional user:password@, a host name or IPv4 address, a port, the rest.
WEBHOOK_RE = r"^https?://([^\s/?#@]+@)?[A-Za-z0-9._-]+(:[0-9]{1,5})?([/?#]\S*)?$"
KINDS = ("above", "below", "outside", "stale")
SEVERITIES = ("info", "warning", "critical")
# Bounds that keep every number finite and every duration sleepable.
MAX_VALUE = 1e12
MAX_SECONDS = 7 * 24 * 3600.0


def _number(**kwargs: Any) -> ma.fields.Float:
    return ma.fields.Float(
        allow_nan=False, validate=ma.validate.Range(-MAX_VALUE, MAX_VALUE), **kwargs
    )


class ActionSchema(ma.Schema):
    """One action: switch an actuator of this node, or call a webhook."""

    class Meta:
        unknown = ma.RAISE

    actuator = ma.fields.String(
        load_default=None,
        allow_none=True,
        validate=FullMatch(RULE_NAME_RE),
        metadata={"description": "a device-service actuator of this node"},
    )
    state = ma.fields.String(
        load_default=None, allow_none=True, validate=ma.validate.OneOf(["ON", "OFF"])
    )
    webhook = ma.fields.String(
        load_default=None,
        allow_none=True,
        validate=[FullMatch(WEBHOOK_RE), ma.validate.Length(max=2000)],
        metadata={"description": "URL the event is POSTed to as JSON"},
    )
    on = ma.fields.String(load_default="fire", validate=ma.validate.OneOf(["fire", "clear"]))

    @ma.validates_schema
    def one_target(self, data: dict[str, Any], **kwargs: Any) -> None:
        """Exactly one of actuator (with a state) or webhook."""
        if (data.get("actuator") is None) == (data.get("webhook") is None):
            raise ma.ValidationError("give either actuator (with state) or webhook", "actuator")
        if data.get("actuator") is not None and data.get("state") is None:
            raise ma.ValidationError("an actuator action needs state ON or OFF", "state")


class RuleSchema(ma.Schema):
    """A rule on one sensor's readings."""

    class Meta:
        unknown = ma.RAISE
        ordered = True

    name = ma.fields.String(required=True, validate=FullMatch(RULE_NAME_RE))
    sensor = ma.fields.String(required=True, validate=FullMatch(RULE_NAME_RE))
    node = ma.fields.String(
        load_default=None,
        allow_none=True,
        validate=FullMatch(NODE_RE),
        metadata={"description": "the sensor's node (default: this node)"},
    )
    field = ma.fields.String(
        load_default="value",
        validate=FullMatch(r"^[A-Za-z0-9_]{1,64}$"),
        metadata={"description": "the reading's key: value, or a quantity's name"},
    )
    kind = ma.fields.String(required=True, validate=ma.validate.OneOf(KINDS))
    threshold = _number(load_default=None, allow_none=True)
    low = _number(load_default=None, allow_none=True)
    high = _number(load_default=None, allow_none=True)
    hysteresis = ma.fields.Float(
        load_default=0.0, allow_nan=False, validate=ma.validate.Range(0, MAX_VALUE)
    )
    duration = ma.fields.Float(
        load_default=0.0,
        allow_nan=False,
        validate=ma.validate.Range(0, MAX_SECONDS),
        metadata={"description": "seconds the condition must hold before it fires"},
    )
    stale_after = ma.fields.Float(
        load_default=None,
        allow_none=True,
        allow_nan=False,
        validate=ma.validate.Range(0.1, MAX_SECONDS),
        metadata={"description": "seconds without a reading before a stale rule fires"},
    )
    severity = ma.fields.String(load_default="warning", validate=ma.validate.OneOf(SEVERITIES))
    actions = ma.fields.List(
        ma.fields.Nested(ActionSchema), load_default=list, validate=ma.validate.Length(max=10)
    )
    enabled = ma.fields.Boolean(load_default=True)

    @ma.validates_schema
    def kind_fields(self, data: dict[str, Any], **kwargs: Any) -> None:
        """Each kind's own fields are given, and make sense together."""
        kind = data.get("kind")
        if kind in ("above", "below") and data.get("threshold") is None:
            raise ma.ValidationError(f"an {kind} rule needs a threshold", "threshold")
        # Only what the OpenAPI document can say too (views.py): a band with low >= high
        # is accepted, and fires on every reading.
        if kind == "outside" and (data.get("low") is None or data.get("high") is None):
            raise ma.ValidationError("an outside rule needs low and high", "low")
        if kind == "stale" and data.get("stale_after") is None:
            raise ma.ValidationError("a stale rule needs stale_after", "stale_after")


class RuleBodySchema(RuleSchema):
    """A rule as PUT /rules/<name> takes it: the name comes from the path."""

    class Meta(RuleSchema.Meta):
        exclude = ("name",)


# The cross-field rules of RuleSchema and ActionSchema in JSON Schema's words, for the
# OpenAPI document (views.py): what it accepts, the API accepts.
KIND_FIELDS = [
    {
        "properties": {"kind": {"enum": ["above", "below"]}, "threshold": {"type": "number"}},
        "required": ["kind", "threshold"],
    },
    {
        "properties": {
            "kind": {"enum": ["outside"]},
            "low": {"type": "number"},
            "high": {"type": "number"},
        },
        "required": ["kind", "low", "high"],
    },
    {
        "properties": {"kind": {"enum": ["stale"]}, "stale_after": {"type": "number"}},
        "required": ["kind", "stale_after"],
    },
]
ACTION_TARGET = [
    {
        "properties": {
            "actuator": {"type": "string"},
            "state": {"type": "string"},
            "webhook": {"enum": [None]},
        },
        "required": ["actuator", "state"],
    },
    {
        "properties": {"webhook": {"type": "string"}, "actuator": {"enum": [None]}},
        "required": ["webhook"],
    },
]


def load_rules_file(file: Path) -> dict[str, dict[str, Any]]:
    """The rules of a TOML file of [rules.<name>] tables; ConfigError names key and file."""
    source = str(file)
    try:
        with file.open("rb") as handle:
            data = tomllib.load(handle)
    except FileNotFoundError:
        raise ConfigError("EDGE_ALERTS_RULES", source, "file not found") from None
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError("EDGE_ALERTS_RULES", source, f"cannot read: {exc}") from exc
    unknown = set(data) - {"rules"}
    if unknown:
        raise ConfigError(", ".join(sorted(unknown)), source, "expected only [rules.<name>]")
    tables = data.get("rules", {})
    if not isinstance(tables, dict):
        raise ConfigError("rules", source, "expected [rules.<name>] tables")
    rules = {}
    schema = RuleSchema()
    for name, table in tables.items():
        if not isinstance(table, dict):
            raise ConfigError(f"rules.{name}", source, "expected a table")
        if not re.fullmatch(RULE_NAME_RE, name):
            raise ConfigError(
                f"rules.{name}", source, "a rule name is lowercase letters, digits, '_', '-'"
            )
        if "name" in table:
            raise ConfigError(f"rules.{name}.name", source, "the table's key is the name")
        try:
            rules[name] = schema.load({**table, "name": name})
        except ma.ValidationError as exc:
            key, problem = first_error(exc.messages)
            raise ConfigError(f"rules.{name}.{key}", source, problem) from exc
    return rules


def first_error(messages: Any, prefix: str = "") -> tuple[str, str]:
    """The first (dotted key, problem) of marshmallow's nested messages."""
    if isinstance(messages, dict) and messages:
        key, value = next(iter(messages.items()))
        key = "" if key == "_schema" else str(key)
        dotted = f"{prefix}.{key}" if prefix and key else (prefix or key)
        if isinstance(value, dict):
            return first_error(value, dotted)
        text = "; ".join(map(str, value)) if isinstance(value, list) else str(value)
        return dotted or "?", text
    return prefix or "?", str(messages)
