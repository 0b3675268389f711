"""The container-manager's one exception root, and the translation of docker-py's into it.

`translated()` is the one place where docker-py's and requests' exceptions become ours, so
that the views answer each with its HTTP status and no docker-py type leaks out.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from http import HTTPStatus
from typing import Any

import docker.errors
import requests

from pyedge import PyEdgeError


class ContainerManagerError(PyEdgeError):
    """Base of the container-manager's errors; `status` is the HTTP answer."""

    status = HTTPStatus.INTERNAL_SERVER_ERROR

    def __init__(self, message: str, errors: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.errors = errors


class EngineUnavailable(ContainerManagerError):
    """The engine cannot be reached (not running, socket missing, too slow)."""

    status = HTTPStatus.SERVICE_UNAVAILABLE


class EngineTimeout(EngineUnavailable):
    """The engine took longer than the call's timeout to answer (hung, or overloaded)."""


class NotFound(ContainerManagerError):
    """No such container, image, volume or network."""

    status = HTTPStatus.NOT_FOUND


class Conflict(ContainerManagerError):
    """The object's state forbids the request (in use, already exists, running)."""

    status = HTTPStatus.CONFLICT


class InvalidRequest(ContainerManagerError):
    """The engine refused the request's values."""

    status = HTTPStatus.BAD_REQUEST


class Forbidden(ContainerManagerError):
    """The security policy, or the engine, refuses the request."""

    status = HTTPStatus.FORBIDDEN


class PolicyDenied(ContainerManagerError):
    """The security policy denies a spec; `errors["violations"]` lists every reason."""

    status = HTTPStatus.FORBIDDEN

    def __init__(self, violations: list[dict[str, str]]) -> None:
        reasons = "; ".join(f"{v['field']}: {v['reason']}" for v in violations)
        super().__init__(f"denied by the security policy: {reasons}", {"violations": violations})
        self.violations = violations


class EngineFailed(ContainerManagerError):
    """The engine failed on its side."""

    status = HTTPStatus.BAD_GATEWAY


_BY_STATUS: dict[int, type[ContainerManagerError]] = {
    400: InvalidRequest,
    403: Forbidden,
    404: NotFound,
    409: Conflict,
}


# What the engine answers with 500 or 403 although the request only clashes with the
# state of things (a port taken, a network in use): a conflict, for the API.
CONFLICT_HINTS = ("port is already allocated", "address already in use", "has active endpoints")


@contextmanager
def translated() -> Iterator[None]:
    """Turn docker-py and requests exceptions into ContainerManagerError, in one place."""
    try:
        yield
    except ContainerManagerError:
        raise
    except docker.errors.APIError as exc:
        status = exc.status_code or 500
        message = str(exc.explanation or exc)
        if any(hint in message for hint in CONFLICT_HINTS):
            raise Conflict(message) from exc
        raise _BY_STATUS.get(status, EngineFailed)(message) from exc
    except requests.ConnectionError as exc:
        raise EngineUnavailable(f"Docker engine unreachable: {_reason(exc)}") from exc
    except requests.Timeout as exc:
        raise EngineTimeout(f"Docker engine unreachable: no answer in time ({exc})") from exc
    except docker.errors.DockerException as exc:
        # docker-py raises its own for a failed version negotiation (the engine is away)
        # and for values it refuses before sending anything (the request is bad).
        cause = exc.__context__
        if isinstance(cause, requests.ConnectionError | requests.Timeout):
            raise EngineUnavailable(f"Docker engine unreachable: {_reason(cause)}") from exc
        raise InvalidRequest(str(exc)) from exc


def _reason(exc: BaseException) -> str:
    """The innermost OS error's text: requests nests it several levels deep."""
    pending: list[Any] = [exc]
    while pending:
        item = pending.pop()
        if isinstance(item, OSError) and item.strerror:
            return item.strerror
        if isinstance(item, BaseException):
            pending.extend(item.args)
    return str(exc) or type(exc).__name__
