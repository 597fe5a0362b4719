"""The task types this server runs, and which parser reads each. Pure.

``generate_image`` and ``text_to_image`` (:mod:`easel.domain.parsing`) make one image;
``generate_multiview_image`` and ``edit_multiview_image`` (:mod:`easel.domain.multiview`) make
four views. Any other ``type`` is 2002.
"""

from __future__ import annotations

from typing import Any

from easel.domain import v3 as v3_rules
from easel.domain.catalog import CATALOG, Catalog
from easel.domain.errors import TaskTypeNotSupported
from easel.domain.multiview import (
    EDIT_MULTIVIEW,
    GENERATE_MULTIVIEW,
    MultiviewRequest,
    parse_edit_multiview,
    parse_generate_multiview,
)
from easel.domain.parsing import (
    TASK_TYPE,
    TEXT_TO_IMAGE,
    GenerateImageRequest,
    parse_generate_image,
    parse_text_to_image,
)

TASK_TYPES = (TASK_TYPE, TEXT_TO_IMAGE, GENERATE_MULTIVIEW, EDIT_MULTIVIEW)
TaskRequest = GenerateImageRequest | MultiviewRequest


def parse_task(
    body: dict[str, Any],
    models: Catalog = CATALOG,
    text_to_image_model: str | None = None,
    multiview_model: str | None = None,
    *,
    v3: bool = False,
) -> TaskRequest:
    """Validate a body of any task type this server runs; 2002 for any other type.
    ``text_to_image_model`` and ``multiview_model`` are the models those types run on (None:
    the catalog's default). ``v3``: a body made from a v3 route's request (a generate_image
    or text_to_image one then takes v3's prompt limit and image options)."""
    task_type = body.get("type")
    if task_type == TEXT_TO_IMAGE:
        if v3:  # v3's text-to-image: its model, template and options (easel.domain.v3)
            return v3_rules.parse_text_to_image(body, models, text_to_image_model)
        return parse_text_to_image(body, models, text_to_image_model)
    if task_type == GENERATE_MULTIVIEW:
        return parse_generate_multiview(body, models, multiview_model)
    if task_type == EDIT_MULTIVIEW:
        return parse_edit_multiview(body, models, multiview_model)
    if task_type != TASK_TYPE:
        raise TaskTypeNotSupported(f"task type {task_type!r} is not supported.")
    return parse_generate_image(body, models, v3=v3)
