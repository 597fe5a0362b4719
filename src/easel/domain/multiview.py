"""Multiview image tasks (``generate_multiview_image``, ``edit_multiview_image``): pure rules.

Tripo's multiview tasks give four views of one subject, in the order front, left, back,
right (``output.generate_multiview_image.{front,left,back,right}_view_url``):

- ``generate_multiview_image``: ``{"file": <File>}`` (one reference image) and, as an Easel
  extension, an optional ``prompt`` naming the subject; 10 credits.
- ``edit_multiview_image``: ``{"original_task_id": "<a finished multiview task>",
  "prompts": [{"view": "front|left|back|right", "prompt": "…"}]}``: 1 to 4 prompts, one per
  view at most; 5 credits per edited view. The views not named are the original's, copied.

Easel makes the views with an image editing model (the server's ``multiview_model``): one
generation per view, each from the one reference (the uploaded image, or the original's view
being edited) with a view prompt, all with the same seed (from the task id). How a task's
views are made is its :func:`plan`, computed from the task's ``input`` alone, so the worker and
this module agree on it without storing anything else. Whether the original of an edit exists,
is the caller's and is finished is checked by the submit service (it needs the database).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from easel.domain import prompts
from easel.domain.catalog import CATALOG, Catalog, ModelSpec
from easel.domain.errors import InvalidParameter
from easel.domain.parsing import FileRef, parse_file
from easel.domain.tasks import task_seed

GENERATE_MULTIVIEW = "generate_multiview_image"
EDIT_MULTIVIEW = "edit_multiview_image"
MULTIVIEW_TYPES = (GENERATE_MULTIVIEW, EDIT_MULTIVIEW)
VIEWS = ("front", "left", "back", "right")
GENERATE_CREDITS = 10  # Tripo's price of generate_multiview_image
EDIT_CREDITS_PER_VIEW = 5  # Tripo's price of edit_multiview_image, per edited view
OUTPUT_KEY = "generate_multiview_image"  # the output's key on both task types

_SEEN_FROM = {
    "front": "seen from the front, facing the viewer",
    "left": "seen from its left side, turned 90 degrees so that its left side faces the viewer",
    "back": "seen from behind, turned 180 degrees so that its back faces the viewer",
    "right": "seen from its right side, turned 90 degrees so that its right side faces the viewer",
}
_KEEP = (
    "Keep its identity, shape, proportions, colours, materials and details exactly as in "
    "image[1]; show the whole subject, centred, at the same scale and lighting, on a plain "
    "neutral background. Show only this one view."
)


def view_prompt(view: str, subject: str = "") -> str:
    """The prompt that makes ``view`` of the subject of image[1]."""
    text = f"The same subject as in image[1], {_SEEN_FROM[view]}. {_KEEP}"
    return f"{text}\nThe subject: {subject.strip()}" if subject.strip() else text


def edit_prompt(view: str, instruction: str) -> str:
    """The prompt that edits image[1], the task's ``view``, as ``instruction`` says."""
    return (
        f"Image[1] is the {view} view of a subject. Edit it: {instruction.strip()}\n"
        f"Keep the viewpoint ({_SEEN_FROM[view]}), the framing, the background and "
        "everything the edit does not ask to change."
    )


def view_seed(task_id: str) -> int:
    """The seed every view of a task is made with: 31 bits of :func:`task_seed`, as the
    providers that take a seed want a 32-bit integer."""
    return task_seed(task_id) >> 32


@dataclass(frozen=True, slots=True)
class ViewStep:
    """How one view of a task is made: generated from the task's image ``reference`` with
    ``prompt``, or (``prompt`` None) that image copied unchanged."""

    view: str
    reference: int  # index into the task's input images
    prompt: str | None


def plan(task_type: str, task_input: dict[str, Any]) -> tuple[ViewStep, ...]:
    """The four views of a multiview task, in :data:`VIEWS` order. A generate task's one
    image is its reference; an edit task's images are the original's four views."""
    if task_type == GENERATE_MULTIVIEW:
        subject = str(task_input.get("prompt", ""))
        return tuple(ViewStep(view, 0, view_prompt(view, subject)) for view in VIEWS)
    edits = {item["view"]: item["prompt"] for item in task_input["prompts"]}
    return tuple(
        ViewStep(view, index, edit_prompt(view, edits[view]) if view in edits else None)
        for index, view in enumerate(VIEWS)
    )


def generated(steps: tuple[ViewStep, ...]) -> int:
    """How many of ``steps`` run a generation (each is an equal share of the progress)."""
    return sum(step.prompt is not None for step in steps)


def output_json(urls: dict[str, str]) -> dict[str, str]:
    """``{front_view_url, left_view_url, back_view_url, right_view_url}`` from view → URL."""
    return {f"{view}_view_url": urls[view] for view in VIEWS if view in urls}


@dataclass(frozen=True, slots=True)
class MultiviewRequest:
    """A validated multiview request. ``file`` (generate) is its one reference; an edit's
    references are the original task's views, found by the submit service."""

    type: str
    model: ModelSpec
    files: tuple[FileRef, ...] = ()  # the one reference of generate; () for edit
    prompt: str = ""  # generate: the optional subject
    original_task_id: str = ""  # edit
    edits: tuple[tuple[str, str], ...] = ()  # edit: (view, instruction), in the order sent
    notes: tuple[str, ...] = field(default=())
    template: None = None  # no templates on multiview tasks

    @property
    def credits(self) -> int:
        if self.type == GENERATE_MULTIVIEW:
            return GENERATE_CREDITS
        return EDIT_CREDITS_PER_VIEW * len(self.edits)

    def input_echo(self) -> dict[str, Any]:
        if self.type == GENERATE_MULTIVIEW:
            echo: dict[str, Any] = {"file": self.files[0].to_json()}
            if self.prompt:
                echo["prompt"] = self.prompt
        else:
            echo = {
                "original_task_id": self.original_task_id,
                "prompts": [{"view": view, "prompt": text} for view, text in self.edits],
            }
        echo["model_version"] = self.model.version
        return echo

    @property
    def composed_prompt(self) -> str:
        """Every view's prompt, one block per generated view (a record; the worker makes
        each view's prompt from the plan)."""
        steps = plan(self.type, self.input_echo())
        return "\n\n".join(f"[{s.view}] {s.prompt}" for s in steps if s.prompt is not None)


def _model(models: Catalog, model_version: str | None) -> ModelSpec:
    return models.lookup(model_version or models.default)


def parse_generate_multiview(
    body: dict[str, Any], models: Catalog = CATALOG, model_version: str | None = None
) -> MultiviewRequest:
    """``generate_multiview_image``: exactly one reference image in ``file`` (``files`` with
    one File is taken too; more is refused), an optional ``prompt`` (≤1024)."""
    file, files = body.get("file"), body.get("files")
    if files is not None:
        if not isinstance(files, list):
            raise InvalidParameter("files must be a list of File objects.")
        if file is not None or len(files) != 1:
            count = len(files) + (file is not None)
            raise InvalidParameter(
                f"generate_multiview_image takes exactly one image; this request has {count}.",
                "Send the one image of the subject as file: {'type': 'png', 'file_token': '…'}.",
            )
        file = files[0]
    if file is None:
        raise InvalidParameter(
            "generate_multiview_image needs the image of the subject in file.",
            "Upload the image (POST /v2/openapi/upload) and send file: "
            "{'type': 'png', 'file_token': '<image_token>'}.",
        )
    ref = parse_file(file, "file")
    prompt = body.get("prompt")
    if prompt is None:
        prompt = ""
    if not isinstance(prompt, str):
        raise InvalidParameter("prompt must be a string naming the subject, or left out.")
    prompts.check_prompt(prompt)
    model = _model(models, model_version)
    return MultiviewRequest(GENERATE_MULTIVIEW, model, files=(ref,), prompt=prompt.strip())


def parse_edit_multiview(
    body: dict[str, Any], models: Catalog = CATALOG, model_version: str | None = None
) -> MultiviewRequest:
    """``edit_multiview_image``: ``original_task_id`` (a string) and ``prompts``, a list of 1
    to 4 ``{"view", "prompt"}`` objects with distinct views."""
    original = body.get("original_task_id")
    if not isinstance(original, str) or not original.strip():
        raise InvalidParameter(
            "original_task_id is required: the task_id of a finished multiview task.",
            "Send the task_id a generate_multiview_image (or edit_multiview_image) task "
            "returned, once it has succeeded.",
        )
    items = body.get("prompts")
    suggestion = "Send prompts: [{'view': 'left', 'prompt': 'make the jacket red'}], one to four."
    if not isinstance(items, list) or not 1 <= len(items) <= len(VIEWS):
        size = f"{len(items)} prompts" if isinstance(items, list) else "no list"
        raise InvalidParameter(
            f"prompts must be a list of 1 to {len(VIEWS)} view prompts (got {size}).", suggestion
        )
    edits: list[tuple[str, str]] = []
    for number, item in enumerate(items):
        where = f"prompts[{number}]"
        if not isinstance(item, dict):
            raise InvalidParameter(f"{where} must be an object {{view, prompt}}.", suggestion)
        view, text = item.get("view"), item.get("prompt")
        if view not in VIEWS:
            raise InvalidParameter(
                f"{where}.view must be one of {', '.join(VIEWS)}, not {view!r}.", suggestion
            )
        if any(view == seen for seen, _ in edits):
            raise InvalidParameter(
                f"{where}: the {view} view is named twice.",
                "Give one prompt per view; put both changes in that view's prompt.",
            )
        if not isinstance(text, str) or not text.strip():
            raise InvalidParameter(f"{where}.prompt must be a non-empty string.", suggestion)
        prompts.check_prompt(text)
        edits.append((view, text))
    model = _model(models, model_version)
    return MultiviewRequest(
        EDIT_MULTIVIEW, model, original_task_id=original.strip(), edits=tuple(edits)
    )
