"""Tripo API v3 image routes mapped onto the one ``generate_image`` domain. Pure, no I/O.

The official ``tripo3d`` SDK 1.x speaks v3: ``POST /v3/generation/text-to-image`` and
``/image-to-image`` with string ``input``/``inputs`` (a URL, a ``file_token`` or the
``task_id`` of an earlier image task) and a ``model`` name, and reads tasks with ISO times
and ``*_url`` outputs. This module turns such a request into the v2 body that
:func:`easel.domain.parsing.parse_generate_image` validates, so both versions share every rule,
price and backend, and renders a stored task in the v3 shape.

Choices where v3 and this server differ (also in docs/protocol.md):

- ``model`` takes this server's ``model_version`` names and the v3 names of the same models
  (``banana`` is ``gemini_2.5_flash_image_preview``, and so on: each catalog entry's
  ``v3_names``), and the operator's ``[aliases]``.
- A string input that is neither a URL nor an uploaded file's token is read as the task id
  of one of the key's successful tasks, whose image becomes the reference.
- v3's image options (``size``, ``aspect_ratio``, ``quality``, ``background``,
  ``output_format``, ``watermark``, ``negative_prompt``) pass through to the body, where
  :func:`easel.domain.parsing.parse_generate_image` (``v3=True``) checks them against the
  model (:mod:`easel.domain.options`): honoured, or refused with 1004.
- ``/generation/image-to-multiview`` (one ``input``) and ``/generation/edit-multiview``
  (``input``: the task id of a multiview task, and ``prompts``) become the v2
  ``generate_multiview_image`` and ``edit_multiview_image`` bodies (:func:`to_multiview`).
  Their tasks keep those type names, and their output carries the four view URLs both under
  ``generate_multiview_image`` (what ``tripo3d`` 1.x reads) and at the top of ``output``
  (what the Rust SDK documents).
- ``POST /v3/tasks/list`` answers ``tasks`` keyed by task id (hosted Tripo's shape, which
  ``tripo3d`` 1.x reads), or as a list for the official Go, JS and Rust SDKs, whose types
  declare one; see :func:`task_list`.
- ``/generation/text-to-image`` makes a ``text_to_image`` task (:func:`parse_text_to_image`):
  without ``model`` v2's text_to_image (the server's text-to-image model, Tripo's flat price);
  with one, that model at that model's price.

Where v3 answers differently from v2 (v3 routes follow v3, v2 routes stay v2): the error codes
of :func:`error_code`, and a task's status among :data:`STATUSES` only (:func:`status_of`).
"""

from __future__ import annotations

import uuid
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any, Literal

from easel.domain.catalog import CATALOG, REQUEST_OPTIONS, Catalog
from easel.domain.errors import (
    AuthenticationFailed,
    ContentPolicy,
    EaselError,
    FileNotFound,
    InvalidParameter,
    ModelVersionInvalid,
    UnknownServerError,
)
from easel.domain.multiview import EDIT_MULTIVIEW, GENERATE_MULTIVIEW, MULTIVIEW_TYPES, OUTPUT_KEY
from easel.domain.options import OPTION_NAMES
from easel.domain.parsing import (
    TASK_TYPE,
    TEXT_TO_IMAGE,
    GenerateImageRequest,
    parse_generate_image,
)
from easel.domain.tasks import WITH_ERROR, Status, Task

Route = Literal["text-to-image", "image-to-image"]
MultiviewRoute = Literal["image-to-multiview", "edit-multiview"]

MAX_LISTED_TASKS = 100
# The User-Agent product names of the official v3 SDKs whose list call decodes ``tasks`` as an
# array (Go ``[]Task``, Rust ``Vec<Task>``, the JS SDK's ``{tasks: Task[]}``); each sends its
# name by default, e.g. ``tripo3d-sdk-go/0.1.0`` or ``@vastai/tripo-sdk/0.2.0``.
TASK_ARRAY_CLIENTS = ("tripo3d-sdk-go", "@vastai/tripo-sdk", "tripo3d-sdk-rust")

# v3's codes where they differ from v2's: a failed authentication is ``code: 2`` (v2: 1002).
AUTHENTICATION_FAILED = 2
# A task on v3 is in one of five statuses; the others read as ``failed`` with a code.
STATUSES = (Status.QUEUED, Status.RUNNING, Status.SUCCESS, Status.FAILED, Status.CANCELLED)
EXPIRED_CODE = 2018  # a task that waited in the queue too long (v2: status ``expired``)
_FAILED_AS = {
    Status.BANNED: ContentPolicy.code,  # moderation: 2008
    Status.EXPIRED: EXPIRED_CODE,
    Status.UNKNOWN: UnknownServerError.code,
}


def error_code(error: EaselError | type[EaselError]) -> tuple[int, int]:
    """The v3 ``code`` and HTTP status of a refusal: 2 / 401 for a failed authentication, and
    1004 / 400 for a file token (or URL) that names no usable image (v2: 2019 / 404); other
    refusals keep their v2 code and status."""
    cls = error if isinstance(error, type) else type(error)
    if issubclass(cls, AuthenticationFailed):
        return AUTHENTICATION_FAILED, cls.status
    if issubclass(cls, FileNotFound):
        return InvalidParameter.code, InvalidParameter.status
    return cls.code, cls.status


def status_of(task: Task) -> tuple[Status, int | None]:
    """The task's v3 status and the error code that replaces v2's extra statuses (banned:
    ``failed`` + 2008, expired: ``failed`` + 2018); None where the v2 code stands."""
    if task.status in _FAILED_AS:
        return Status.FAILED, _FAILED_AS[task.status]
    return task.status, None


def model_version(name: object, models: Catalog = CATALOG) -> str:
    """The ``model_version`` a v3 ``model`` names; 2017 for a name this server does not know."""
    if not isinstance(name, str):
        raise InvalidParameter(f"model must be a string such as {models.default!r}.")
    spec = models.named(name)
    if spec is None:
        raise ModelVersionInvalid(
            f"model {name!r} is not a model of this server.",
            f"Use one of: {', '.join(models.names)}.",
        )
    return spec.version


def _file(value: object, where: str) -> dict[str, Any]:
    """A v3 input as a v2 File object. A string is a URL or a token (a task id is resolved
    later, when the token names no uploaded file); an object passes through unchanged."""
    if isinstance(value, dict):
        return value
    if not isinstance(value, str) or not value.strip():
        raise InvalidParameter(
            f"{where} must be a non-empty string: a URL, a file_token or a task_id.",
            "Upload the image with POST /v3/files and pass its file_token.",
        )
    text = value.strip()
    return {"url": text} if text.startswith(("http://", "https://")) else {"file_token": text}


def to_generate_image(
    body: dict[str, Any], route: Route, models: Catalog = CATALOG
) -> dict[str, Any]:
    """The v2 body for a v3 generation request (``model`` read in ``models``): of type
    ``generate_image`` for image-to-image, ``text_to_image`` for text-to-image (which
    :func:`parse_text_to_image` reads)."""
    has_input, has_inputs = body.get("input") is not None, body.get("inputs") is not None
    out: dict[str, Any] = {"type": TEXT_TO_IMAGE if route == "text-to-image" else TASK_TYPE}
    if route == "text-to-image":
        if has_input or has_inputs:
            raise InvalidParameter(
                "text-to-image takes no reference images (input/inputs).",
                "Send reference images to /v3/generation/image-to-image.",
            )
    elif has_input == has_inputs:
        raise InvalidParameter(
            "image-to-image needs exactly one of input (one image) or inputs (a list)."
            if has_input
            else "image-to-image needs a reference image: input or inputs.",
            "Pass input: '<file_token, URL or task_id>' or inputs: ['…', '…'].",
        )
    elif has_input:
        out["file"] = _file(body["input"], "input")
    else:
        inputs = body["inputs"]
        if not isinstance(inputs, list) or not inputs:
            raise InvalidParameter("inputs must be a non-empty list of images.")
        out["files"] = [_file(item, f"inputs[{i}]") for i, item in enumerate(inputs)]
    model = body.get("model", body.get("model_version"))
    if model is not None:
        out["model_version"] = model_version(model, models)
    for name in ("prompt", "negative_prompt", *sorted(REQUEST_OPTIONS), *OPTION_NAMES):
        if name in body:
            out[name] = body[name]
    return out


def to_multiview(body: dict[str, Any], route: MultiviewRoute) -> dict[str, Any]:
    """The v2 multiview body for a v3 ``image-to-multiview`` or ``edit-multiview`` request."""
    if route == "image-to-multiview":
        if body.get("inputs") is not None or body.get("input") is None:
            raise InvalidParameter(
                "image-to-multiview takes exactly one image, in input.",
                "Pass input: '<file_token, URL or task_id>' (one image of the subject).",
            )
        out = {"type": GENERATE_MULTIVIEW, "file": _file(body["input"], "input")}
        if "prompt" in body:
            out["prompt"] = body["prompt"]
        return out
    original = body.get("input", body.get("original_task_id"))
    if isinstance(original, dict) and set(original) == {"task_id"}:
        original = original["task_id"]
    if not isinstance(original, str):
        raise InvalidParameter(
            "edit-multiview takes, in input, the task_id of a finished multiview task "
            "(a file_token or URL is not accepted, as on Tripo's own service).",
            "Pass input: '<task_id of an image-to-multiview task>' and prompts.",
        )
    return {"type": EDIT_MULTIVIEW, "original_task_id": original, "prompts": body.get("prompts")}


def parse_text_to_image(
    body: dict[str, Any], models: Catalog = CATALOG, text_to_image_model: str | None = None
) -> GenerateImageRequest:
    """A v3 text-to-image request (:func:`to_generate_image`'s body) as a ``text_to_image``
    task, with v3's rules for a generation (its prompt limit, its options, ``negative_prompt``
    where the model takes one) and a ``template`` that makes ``prompt`` optional, as the SDKs
    say. Without a ``model`` it runs on ``text_to_image_model`` (else the catalog's default)
    at text_to_image's flat price, as v2's text_to_image; with one it runs on that model at
    that model's price: v3 lets the client pick any model here, and their prices differ."""
    named = body.get("model_version") is not None
    generation = {**body, "type": TASK_TYPE}
    if not named:
        generation["model_version"] = text_to_image_model or models.default
    request = parse_generate_image(generation, models, v3=True)
    return replace(request, type=TEXT_TO_IMAGE, priced_by_model=named)


def new_file_token() -> str:
    return str(uuid.uuid4())


def iso(timestamp: float) -> str:
    """A unix time as RFC 3339 UTC with a ``Z``, as v3 writes times."""
    return (
        datetime.fromtimestamp(timestamp, UTC).isoformat(timespec="seconds").replace("+00:00", "Z")
    )


def task_type(task: Task) -> str:
    """The v3 type of a task: a v2 text_to_image stays one (its style_image is no input
    image); a generate_image is image-to-image when it has reference images; multiview tasks
    keep their type names, as on Tripo's v3."""
    if task.type == TEXT_TO_IMAGE or task.type in MULTIVIEW_TYPES:
        return task.type
    return "image_to_image" if task.refs else TEXT_TO_IMAGE


def render_task(task: Task, v2: dict[str, Any]) -> dict[str, Any]:
    """The v3 task object, from the task and its v2 rendering (same ETA, same signed link)."""
    status, code = status_of(task)
    data: dict[str, Any] = {
        "task_id": task.id,
        "type": task_type(task),
        "status": status.value,
        "progress": v2["progress"],
        "input": task.input,
        "output": {},
        "model": task.model_version,
        "credits_consumed": float(task.consumed_credit),
        "created_at": iso(task.created_at),
        "running_left_time": v2["running_left_time"],
        "queuing_num": v2["queuing_num"],
    }
    image, views = v2["output"].get("generated_image"), v2["output"].get(OUTPUT_KEY)
    if image:
        data["output"] = {"generated_image_url": image}
    elif views:
        data["output"] = {OUTPUT_KEY: views, **views}
    if task.finished_at is not None and task.is_final:
        data["completed_at"] = iso(task.finished_at)
    if task.status in WITH_ERROR or code is not None:
        data["error_code"] = code or v2["error_code"]
        data["error_message"] = v2.get("error_msg") or "the task failed"
    if "running_left_basis" in v2:
        data["running_left_basis"] = v2["running_left_basis"]
    if "output_note" in v2:
        data["output_note"] = v2["output_note"]
    if "served_by" in v2:  # an extension: what made the image (a local stand-in says so)
        data["served_by"] = v2["served_by"]
    return data


def usage_item(task: Task) -> dict[str, Any]:
    """One row of ``GET /v3/account/usage``."""
    return {
        "task_id": task.id,
        "type": task_type(task),
        "status": status_of(task)[0].value,
        "model": task.model_version,
        "created_at": iso(task.created_at),
        "credits_consumed": float(task.consumed_credit),
    }


def wants_task_array(user_agent: str | None) -> bool:
    """Whether a User-Agent names one of :data:`TASK_ARRAY_CLIENTS` among its product tokens.

    The request is the same from every SDK (``{"task_ids": […]}``): only the product token says
    which answer the client can decode. A token anywhere in the header counts, so an app that
    sets its own User-Agent keeps the list by adding the SDK's token after its own.
    """
    tokens = (user_agent or "").split()
    return any(
        token == name or token.startswith(f"{name}/")
        for token in tokens
        for name in TASK_ARRAY_CLIENTS
    )


def task_list(
    found: dict[str, dict[str, Any]], missed: list[str], *, as_array: bool
) -> dict[str, Any]:
    """The ``POST /v3/tasks/list`` data: ``tasks`` keyed by id, or in the order asked.

    The two shapes cannot share one answer: ``tripo3d`` 1.x iterates ``tasks.items()`` and the
    Go, Rust and JS SDKs decode ``tasks`` as an array (Go and Rust fail on an object), so the
    array goes to those three and the object, hosted Tripo's shape, to everyone else.
    ``missed`` is in both: the array clients ignore fields they do not know.
    """
    return {"tasks": list(found.values()) if as_array else found, "missed": missed}
