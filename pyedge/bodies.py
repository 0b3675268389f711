"""Request bodies as their OpenAPI says: a required JSON body must be there, and be JSON.

webargs reads a missing or non-JSON body as `{}`, so a PATCH without one would change
nothing and answer 200, and a PUT would apply every default, while the document says the
body is required. `require_json_body` answers such a request 422 (no body) or 415 (not
JSON) before webargs runs.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from http import HTTPStatus
from typing import Any, TypeVar

from flask import request
from flask_smorest import abort

F = TypeVar("F", bound=Callable[..., Any])

MISSING = "a JSON body is required"


def require_json_body(view: F) -> F:
    """Wrap a view whose JSON body is required: 422 without one, 415 if it is not JSON."""

    @functools.wraps(view)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        # Content-Length first: the body itself is read only when that says nothing.
        if not request.content_length and not request.get_data(cache=True):
            abort(
                HTTPStatus.UNPROCESSABLE_ENTITY,
                message=MISSING,
                errors={"json": {"_schema": [MISSING]}},
            )
        if not request.is_json:
            abort(HTTPStatus.UNSUPPORTED_MEDIA_TYPE, message="send the body as application/json")
        return view(*args, **kwargs)

    return wrapper  # type: ignore[return-value]
