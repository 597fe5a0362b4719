"""The one exception tree of the protocol.

Every refusal the API can give is a subclass of :class:`EaselError` carrying the Tripo
error ``code``, the HTTP ``status`` and a ``suggestion`` that teaches the fix. The API
renders them to the error envelope in exactly one handler (``easel.api.app``); the worker
stores ``code`` and the message on a failed task.
"""

from __future__ import annotations


class EaselError(Exception):
    """Base of every error with a protocol code."""

    code: int = 1000
    status: int = 500
    default_suggestion: str = "Try again later; if it persists, contact the server's operator."

    def __init__(self, message: str, suggestion: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.suggestion = suggestion or self.default_suggestion


class UnknownServerError(EaselError):
    code, status = 1000, 500


class FatalServerError(EaselError):
    code, status = 1001, 500


class ServiceUnavailable(EaselError):
    """The database or the object store cannot be reached for now (HTTP 503, code 1000:
    the protocol's unknown server error, with a status that tells clients to retry)."""

    code, status = 1000, 503
    retry_after_s = 2
    default_suggestion = "The server cannot reach its storage right now; try again shortly."


class StoreUnavailable(ServiceUnavailable):
    """The database is away for now: what :mod:`easel.store` raises in place of a driver's
    outage error (the driver's error is its ``__cause__``). Callers above the store see one
    type; the API answers it like any :class:`ServiceUnavailable`."""


class AuthenticationFailed(EaselError):
    code, status = 1002, 401
    default_suggestion = (
        "Send 'Authorization: Bearer tsk_…' with a key created by 'easel keys create'."
    )


class MalformedBody(EaselError):
    code, status = 1003, 400
    default_suggestion = "Send a JSON object as the request body."


class MethodNotAllowed(MalformedBody):
    """v3: a method the route does not take (HTTP 405, code 1003; v2 answers 1005)."""

    code, status = 1003, 405
    default_suggestion = "Use the method the route takes (the Allow header lists it)."


class UnsupportedContentType(MalformedBody):
    """v3: a body whose ``Content-Type`` the route does not read (HTTP 415, code 1003)."""

    code, status = 1003, 415
    default_suggestion = (
        "Send 'Content-Type: application/json' with a JSON body "
        "(multipart/form-data to upload a file)."
    )


class InvalidParameter(EaselError):
    code, status = 1004, 400
    default_suggestion = "Fix the parameter named in the message and send the request again."


class NotAllowed(EaselError):
    code, status = 1005, 403


class IdempotencyConflict(EaselError):
    """An ``Idempotency-Key`` reused with another body (an extension: HTTP 409)."""

    code, status = 1004, 409
    default_suggestion = "Use a new Idempotency-Key for a different request."


class RequestTooLarge(InvalidParameter):
    """A request body over the server's size limit, refused before it is parsed (HTTP 413)."""

    code, status = 1004, 413
    default_suggestion = "Send a smaller request body."


class RateLimited(EaselError):
    code, status = 1007, 429
    default_suggestion = "Slow down and try again after the `Retry-After` header's seconds."

    def __init__(self, message: str, retry_after_s: int = 1, suggestion: str | None = None) -> None:
        super().__init__(message, suggestion)
        self.retry_after_s = retry_after_s


class TooManyUnfinishedTasks(EaselError):
    code, status = 2000, 429
    default_suggestion = (
        "Wait for a task to finish, then try again. You can also check the `Retry-After` header."
    )

    def __init__(self, message: str, retry_after_s: int, suggestion: str | None = None) -> None:
        super().__init__(message, suggestion)
        self.retry_after_s = retry_after_s


class TaskNotFound(EaselError):
    code, status = 2001, 404
    default_suggestion = "Check the task_id; a task is visible only to the key that created it."


class TaskTypeNotSupported(EaselError):
    code, status = 2002, 400
    default_suggestion = (
        "This server runs task types 'generate_image', 'text_to_image', "
        "'generate_multiview_image' and 'edit_multiview_image' only."
    )


class EmptyImage(EaselError):
    code, status = 2003, 400
    default_suggestion = "Send a non-empty PNG or JPEG image."


class ImageTypeNotSupported(EaselError):
    code, status = 2004, 400
    default_suggestion = "Send a PNG or JPEG image (WebP only where the model accepts it)."


class ContentPolicy(EaselError):
    code, status = 2008, 400
    default_suggestion = "Rephrase the prompt or use other images."


class InvalidPromptCharacters(EaselError):
    code, status = 2009, 400
    default_suggestion = "Remove emoji and special Unicode characters from the prompt."


class NotEnoughCredit(EaselError):
    code, status = 2010, 403
    default_suggestion = "Ask the operator to grant credits ('easel credits grant KEY N')."


class ModelVersionDeprecated(EaselError):
    code, status = 2015, 400


class ModelVersionInvalid(EaselError):
    code, status = 2017, 400


class FileNotFound(EaselError):
    code, status = 2019, 404
    default_suggestion = (
        "Upload the image first ('POST /v2/openapi/upload') and use its image_token."
    )


class RouteNotSupported(EaselError):
    """A route of the Tripo API that this server does not serve (v3 3D generation and the
    like): code 2002 like an unsupported task type, HTTP 501."""

    code, status = 2002, 501
    default_suggestion = "This server generates images only."


class UnknownRoute(EaselError):
    """v3: a path that is no route of the API (HTTP 404, code 4001; v2 answers 1005)."""

    code, status = 4001, 404
    default_suggestion = "Check the path: this server's v3 routes are listed at /docs."


def first_line(exc: BaseException, *, named: bool = True, limit: int = 200) -> str:
    """The exception's first line, at most ``limit`` characters, after its type's name unless
    ``named`` is false: enough for a client or a log to report, and no SQL statement or
    parameters (SQLAlchemy puts them on the following lines)."""
    text = str(exc).strip()
    line = text.splitlines()[0] if text else ""
    if len(line) > limit:
        line = line[: limit - 1] + "…"
    if not line:
        return type(exc).__name__
    return f"{type(exc).__name__}: {line}" if named else line
