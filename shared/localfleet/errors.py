"""Typed errors a backend raises; the runtime maps each to one gRPC status.

A backend never builds gRPC statuses itself: it raises one of these with a message that says what was
wrong and what to do, and the dispatcher turns it into the status core shows the user.
"""

from __future__ import annotations

from grpclib.const import Status


class BackendError(Exception):
    """Base class: the message is shown to the user as the gRPC status message."""

    status: Status = Status.INTERNAL


class BadInput(BackendError):
    """The request is malformed or out of range (INVALID_ARGUMENT)."""

    status = Status.INVALID_ARGUMENT


class NotLoaded(BackendError):
    """A request arrived before a model was loaded (FAILED_PRECONDITION)."""

    status = Status.FAILED_PRECONDITION

    def __init__(self, message: str = "no model loaded; call LoadModel first") -> None:
        super().__init__(message)


class NotFound(BackendError):
    """A named thing (file, voice, model identity) does not exist here (NOT_FOUND)."""

    status = Status.NOT_FOUND


class Overloaded(BackendError):
    """The queue is full or a size cap was passed (RESOURCE_EXHAUSTED)."""

    status = Status.RESOURCE_EXHAUSTED


class Unavailable(BackendError):
    """The process is draining or shutting down (UNAVAILABLE)."""

    status = Status.UNAVAILABLE


class Unwritable(BackendError):
    """The backend cannot write where it was asked to (permissions, a read-only or virtual file system):
    the deployment's or the caller's to fix, not an engine fault (FAILED_PRECONDITION)."""

    status = Status.FAILED_PRECONDITION


class Unauthenticated(BackendError):
    """A remote engine refused this backend's credentials (UNAUTHENTICATED)."""

    status = Status.UNAUTHENTICATED


class TimedOut(BackendError):
    """A remote engine did not answer within the backend's timeout (DEADLINE_EXCEEDED)."""

    status = Status.DEADLINE_EXCEEDED


class EngineFailure(BackendError):
    """The engine failed on a valid request (INTERNAL); the process keeps serving."""

    status = Status.INTERNAL


class Cancelled(BackendError):
    """Work stopped because its caller went away or passed its deadline (CANCELLED)."""

    status = Status.CANCELLED


class Refused(Exception):
    """LoadModel of a model this backend cannot serve: answered success=false, fast."""
