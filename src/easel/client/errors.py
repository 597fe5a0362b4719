"""The client's one exception tree.

Every failure a caller can see is an :class:`EaselClientError` carrying the protocol
``code``, the server's ``message`` and ``suggestion`` (how to fix it), the HTTP ``status``
and the ``trace_id`` of the response. :func:`error_for` picks the subclass from the code (or,
for codes it does not know, from the HTTP status); transport failures are translated where
they enter into :class:`ConnectionFailed`.

::

    EaselClientError
    ├── ConnectionFailed            the server could not be reached (no code)
    ├── AuthenticationError         1002
    ├── PermissionDenied            1005
    ├── InvalidRequest              1003, 1004, 2002–2009, 2015, 2017, 2019
    ├── NotEnoughCredit             2010
    ├── TaskNotFound                2001
    ├── RateLimited                 1007, 2000 (``retry_after`` seconds)
    ├── ServerError                 1000, 1001 and any other 5xx
    ├── TaskFailed                  raised by ``wait``: the task ended without an image
    └── WaitTimeout                 raised by ``wait``: the timeout passed first
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from easel.client.models import Task


class EaselClientError(Exception):
    """Base of every error the client raises."""

    default_suggestion = "Check the message; if the problem persists, ask the server's operator."

    def __init__(
        self,
        message: str,
        *,
        code: int | None = None,
        suggestion: str | None = None,
        status: int | None = None,
        trace_id: str | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.code = code
        self.suggestion = suggestion or self.default_suggestion
        self.status = status
        self.trace_id = trace_id

    def __str__(self) -> str:
        prefix = f"[{self.code}] " if self.code is not None else ""
        return f"{prefix}{self.message}"


class ConnectionFailed(EaselClientError):
    default_suggestion = "Check the server URL and that the server is running."


class AuthenticationError(EaselClientError):
    default_suggestion = "Pass api_key=… (or set EASEL_API_KEY) to a key from 'easel keys create'."


class PermissionDenied(EaselClientError):
    pass


class InvalidRequest(EaselClientError):
    default_suggestion = "Fix the parameter named in the message and send the request again."


class NotEnoughCredit(EaselClientError):
    default_suggestion = "Ask the operator to grant credits ('easel credits grant KEY N')."


class TaskNotFound(EaselClientError):
    default_suggestion = "Check the task_id; a task is visible only to the key that created it."


class RateLimited(EaselClientError):
    """Too many requests or unfinished tasks; ``retry_after`` is the server's advice."""

    default_suggestion = "Wait for a task to finish, then try again."
    retry_after: float | None = None


class ServerError(EaselClientError):
    default_suggestion = "Try again later; if it persists, contact the server's operator."


class TaskFailed(EaselClientError):
    """The task ended failed, banned, expired, cancelled or unknown; ``task`` is its state."""

    def __init__(self, task: Task) -> None:
        status = task.status.value
        super().__init__(
            f"task {task.task_id} ended {status}: {task.error_msg or 'no image was made'}",
            code=task.error_code,
            suggestion=_TASK_ADVICE.get(status),
        )
        self.task = task


class WaitTimeout(EaselClientError, TimeoutError):
    """``wait`` gave up ``timeout`` seconds in, before the task ended; ``task`` is the last
    state seen."""

    default_suggestion = "Wait longer (timeout=…), or check the queue with get_task."

    def __init__(self, task: Task, timeout: float) -> None:
        super().__init__(
            f"task {task.task_id} is still {task.status.value} after {timeout:g} s",
        )
        self.task, self.timeout = task, timeout


_TASK_ADVICE = {
    "failed": "The credits were refunded; try again, or another model_version.",
    "banned": "The provider refused the input; rephrase the prompt or use other images.",
    "expired": "The task waited too long in the queue; submit it again.",
    "cancelled": "The task was cancelled; the credits were refunded.",
}

_BY_CODE: dict[int, type[EaselClientError]] = {
    1000: ServerError,
    1001: ServerError,
    1002: AuthenticationError,
    1003: InvalidRequest,
    1004: InvalidRequest,
    1005: PermissionDenied,
    1007: RateLimited,
    2000: RateLimited,
    2001: TaskNotFound,
    2010: NotEnoughCredit,
    **{code: InvalidRequest for code in range(2002, 2020) if code not in (2010,)},
}
_BY_STATUS: dict[int, type[EaselClientError]] = {
    400: InvalidRequest,
    401: AuthenticationError,
    403: PermissionDenied,
    429: RateLimited,
}


def error_for(
    status: int,
    code: int | None,
    message: str,
    suggestion: str | None = None,
    *,
    trace_id: str | None = None,
    retry_after: float | None = None,
) -> EaselClientError:
    """The exception for an error response: by protocol code, else by HTTP status."""
    cls = _BY_CODE.get(code) if code is not None else None
    if cls is None:
        cls = ServerError if status >= 500 else _BY_STATUS.get(status, EaselClientError)
    error = cls(message, code=code, suggestion=suggestion, status=status, trace_id=trace_id)
    if isinstance(error, RateLimited):
        error.retry_after = retry_after
    return error
