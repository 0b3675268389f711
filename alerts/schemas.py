"""alerts schemas: REST payloads and operation parameters (the rule is in rules.py)."""

import marshmallow as ma

from alerts.rules import RULE_NAME_RE, RuleSchema
from pyedge.fields import FullMatch


class RuleOutSchema(RuleSchema):
    """A rule as the API shows it: with its source and current state."""

    source = ma.fields.String(required=True, metadata={"description": "the rules file, or api"})
    state = ma.fields.String(
        required=True, metadata={"description": "ok, firing, or off (disabled, not watched)"}
    )
    value = ma.fields.Float(required=True, allow_none=True)
    since = ma.fields.String(required=True, allow_none=True)


class HistoryArgs(ma.Schema):
    """Query of GET /history."""

    rule = ma.fields.String(load_default=None, validate=FullMatch(RULE_NAME_RE))
    limit = ma.fields.Integer(load_default=100, validate=ma.validate.Range(min=1, max=1000))


class EventSchema(ma.Schema):
    """An event: a rule fired or cleared."""

    rule = ma.fields.String(required=True)
    state = ma.fields.String(required=True, metadata={"description": "firing or ok"})
    value = ma.fields.Float(required=True, allow_none=True)
    sensor = ma.fields.String(required=True)
    node = ma.fields.String(required=True)
    severity = ma.fields.String(required=True)
    message = ma.fields.String(required=True)
    ts = ma.fields.String(required=True)
    test = ma.fields.Boolean(metadata={"description": "true for an event of the test Task"})


class TestParams(ma.Schema):
    """Parameters of the test Task."""

    class Meta:
        unknown = ma.RAISE

    rule = ma.fields.String(required=True, validate=FullMatch(RULE_NAME_RE))
    value = ma.fields.Float(
        load_default=None,
        allow_none=True,
        allow_nan=False,
        metadata={"description": "the value the event reports (default: the last reading)"},
    )
