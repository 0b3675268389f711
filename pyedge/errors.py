"""One exception root for the SDK, so callers can catch everything PyEdge raises."""


class PyEdgeError(Exception):
    """Base of every error PyEdge raises on purpose."""


class UnknownOperation(PyEdgeError):
    """No operation of that name is registered on the service."""


class OperationConflict(PyEdgeError):
    """The request does not fit the operation's kind or current state."""


class OperationFailed(PyEdgeError):
    """Raised by an operation's code to end its session unsuccessfully with a message."""


class ShuttingDown(PyEdgeError):
    """The service is stopping and takes no new work."""
