"""Marshmallow fields and validators whose OpenAPI says exactly what they accept.

marshmallow is more lenient than the JSON Schema apispec writes for it, and apispec leaves
some constraints out; a client that trusts the document would be refused, or a value it
thinks invalid accepted (schemathesis checks both ways, tests/test_conformance.py):

- `Boolean` takes only JSON's true and false (marshmallow's also takes 1, "yes", "on"...);
- `FullMatch` matches the whole value, as a JSON Schema `pattern` between ^ and $ does
  (Python's `$` also matches before a trailing newline);
- `document_field` (an apispec attribute function) adds `exclusiveMinimum` /
  `exclusiveMaximum` for a Range that excludes its bounds, `x-propertyNames` for a Dict
  whose keys are validated by patterns, and makes a nullable Nested's null branch null
  alone (apispec's takes any object). OpenAPI 3.0 has no `propertyNames`: the
  extension carries it in JSON Schema's words for the tools that read it.
"""

from __future__ import annotations

import re
from typing import Any

import marshmallow as ma
from apispec.ext.marshmallow.field_converter import FieldConverterMixin


class Boolean(ma.fields.Boolean):
    """A JSON boolean: true or false, nothing else (for bodies; queries parse text)."""

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> bool:
        if not isinstance(value, bool):
            raise self.make_error("invalid", input=value)
        return value


class FullMatch(ma.validate.Regexp):
    """marshmallow's Regexp, matching the whole value (no trailing newline slips through)."""

    def __call__(self, value: Any) -> Any:
        regex: re.Pattern[str] = self.regex  # type: ignore[assignment]  # made from a str
        if not isinstance(value, str) or regex.fullmatch(value) is None:
            raise ma.ValidationError(self._format_error(value))
        return value


NULL_OBJECT = {"type": "object", "nullable": True}
ONLY_NULL = {"type": "object", "nullable": True, "enum": [None]}


def _patterns(field: ma.fields.Field[Any]) -> list[str]:
    return [str(v.regex.pattern) for v in field.validators if isinstance(v, ma.validate.Regexp)]


def document_field(
    self: FieldConverterMixin, field: ma.fields.Field[Any], ret: dict[str, Any], **kwargs: Any
) -> dict[str, Any]:
    """The constraints apispec leaves out of a field's schema (OpenAPI 3.0's words)."""
    extra: dict[str, Any] = {}
    for validator in field.validators:
        if isinstance(validator, ma.validate.Range):
            if validator.min is not None and not validator.min_inclusive:
                extra["exclusiveMinimum"] = True
            if validator.max is not None and not validator.max_inclusive:
                extra["exclusiveMaximum"] = True
    if isinstance(field, ma.fields.Dict) and field.key_field is not None:
        patterns = _patterns(field.key_field)
        if len(patterns) == 1:
            extra["x-propertyNames"] = {"pattern": patterns[0]}
        elif patterns:
            extra["x-propertyNames"] = {"allOf": [{"pattern": p} for p in patterns]}
    # apispec writes a nullable Nested as anyOf [its schema, {"type": "object", "nullable":
    # true}], which any object matches: the second branch is meant as null alone.
    any_of = ret.get("anyOf")
    if isinstance(any_of, list) and NULL_OBJECT in any_of:
        extra["anyOf"] = [ONLY_NULL if item == NULL_OBJECT else item for item in any_of]
    return extra


def register(converter: FieldConverterMixin) -> None:
    """Add `document_field` to an apispec converter (an Api's `ma_plugin.converter`)."""
    converter.add_attribute_function(document_field)  # type: ignore[no-untyped-call]
