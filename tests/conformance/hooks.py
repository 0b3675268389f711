"""schemathesis hooks of the conformance run (SCHEMATHESIS_HOOKS=tests.conformance.hooks).

OpenAPI 3.0 has no `propertyNames`: PyEdge's document says what a map's keys must be in
the `x-propertyNames` extension (pyedge.fields), which schemathesis does not read. This
hook hands schemathesis the same document in OpenAPI 3.1's words, whose schemas are JSON
Schema: `x-propertyNames` becomes `propertyNames`, `nullable` a "null" type, and a
boolean `exclusiveMinimum`/`exclusiveMaximum` the bound itself. Nothing else changes, so
schemathesis generates map keys the server takes, and checks that it refuses the others.

Three refusals are not failures, and `filter_failure` drops exactly them:
- an app whose `depends_on` names a service the app does not have, or goes round in a
  cycle (422), when that is the only error: JSON Schema cannot relate one value to the
  keys of another map, so no document can say it;
- a refusal of a body that the document itself does not allow (checked here with
  jsonschema): schemathesis 4.32's coverage phase sends `{"services": {"x": {}}}` as
  valid, though each service requires `image`;
- a 415 to a file upload (multipart): the media-player checks what the file holds (mpv
  must recognise audio or video), which no schema of a binary string can say.
"""

from __future__ import annotations

from typing import Any

import jsonschema
import schemathesis
from schemathesis.openapi.checks import RejectedPositiveData

EXTENSION = "x-propertyNames"


def to_json_schema(schema: dict[str, Any]) -> None:
    """Rewrite one OpenAPI 3.0 schema object (not its subschemas) as JSON Schema, in place."""
    if EXTENSION in schema:
        schema["propertyNames"] = schema.pop(EXTENSION)
    if schema.pop("nullable", False):
        kind = schema.get("type")
        if isinstance(kind, str):
            schema["type"] = [kind, "null"]
        elif "enum" not in schema:
            rest = {key: schema.pop(key) for key in list(schema)}
            schema["anyOf"] = [rest, {"type": "null"}]
    for bound, exclusive in (("minimum", "exclusiveMinimum"), ("maximum", "exclusiveMaximum")):
        if schema.get(exclusive) is True:
            schema[exclusive] = schema.pop(bound)
        elif schema.get(exclusive) is False:
            del schema[exclusive]


def convert(document: dict[str, Any]) -> None:
    """Every schema object of an OpenAPI 3.0 document as JSON Schema; the document 3.1."""
    document["openapi"] = "3.1.0"
    stack: list[Any] = [document]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            if "type" in item or EXTENSION in item or "nullable" in item:
                to_json_schema(item)
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)


@schemathesis.hook
def before_load_schema(context: Any, raw_schema: dict[str, Any]) -> None:
    """The served OpenAPI 3.0 document, read as 3.1 (see the module's docstring)."""
    convert(raw_schema)


# The app spec's cross-field errors (container_manager.app_schemas.AppSpecSchema).
CROSS_FIELD = ("is not a service of this app", "dependency cycle")


def messages(errors: Any) -> list[str]:
    """Every message of a webargs error tree."""
    if isinstance(errors, str):
        return [errors]
    if isinstance(errors, dict):
        return [text for value in errors.values() for text in messages(value)]
    if isinstance(errors, list):
        return [text for value in errors for text in messages(value)]
    return [str(errors)]


@schemathesis.hook
def filter_failure(context: Any, failure: Any, case: Any, response: Any) -> bool:
    """Keep every failure but the three refusals the module's docstring names."""
    if not isinstance(failure, RejectedPositiveData):
        return True
    if not body_is_valid(case):
        return False
    if response.status_code == 415 and (case.media_type or "").startswith("multipart/"):
        return False
    if response.status_code != 422:
        return True
    try:
        found = messages(response.json().get("errors"))
    except ValueError:
        return True
    return not found or not all(any(text in m for text in CROSS_FIELD) for m in found)


def body_is_valid(case: Any) -> bool:
    """Whether the case's JSON body is valid by the (converted) document; True if none."""
    document = case.operation.schema.raw_schema
    operation = document["paths"][case.operation.path][case.method.lower()]
    content = operation.get("requestBody", {}).get("content", {}).get("application/json")
    if content is None or case.body is None or not isinstance(case.body, dict | list):
        return True
    schema = {**content["schema"], "components": document.get("components", {})}
    return bool(jsonschema.Draft202012Validator(schema).is_valid(case.body))
