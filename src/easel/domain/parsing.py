"""Validation of a task body (``generate_image`` or ``text_to_image``): pure rules, no I/O.

:func:`parse_generate_image` and :func:`parse_text_to_image` turn the JSON object a client
sent into a :class:`GenerateImageRequest` (both types run as one image generation) or raise
the protocol error that names the problem (:mod:`easel.domain.task_types` picks the parser by
``type``). What
needs the database or the network (does a ``file_token`` exist, what format are its bytes)
is checked afterwards by the submit service.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any, Literal
from urllib.parse import urlsplit

from easel.domain import prompts, templates
from easel.domain.catalog import (
    CATALOG,
    REQUEST_OPTIONS,
    TEXT_TO_IMAGE_CREDITS,
    Catalog,
    ImageRule,
    ModelSpec,
)
from easel.domain.errors import InvalidParameter, TaskTypeNotSupported
from easel.domain.options import ImageOptions

TASK_TYPE = "generate_image"
TEXT_TO_IMAGE = "text_to_image"
MAX_NEGATIVE_PROMPT_CHARS = 255
# Appended to a text_to_image prompt that has a style_image (image[1]).
STYLE_IMAGE_HINT = "Render it in the style of image[1]."
_SOURCES = ("file_token", "url", "object")

SourceKind = Literal["file_token", "url", "object"]


@dataclass(frozen=True, slots=True)
class FileRef:
    """One File object: exactly one source, plus the advisory ``type``."""

    source: SourceKind
    value: str  # the token, the URL or the object key
    bucket: str | None = None
    type: str | None = None

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {} if self.type is None else {"type": self.type}
        if self.source == "object":
            out["object"] = {"bucket": self.bucket, "key": self.value}
        else:
            out[self.source] = self.value
        return out


@dataclass(frozen=True, slots=True)
class GenerateImageRequest:
    prompt: str
    model: ModelSpec  # the effective model (after the flux.1_dev upgrade)
    files: tuple[FileRef, ...] = ()
    template: templates.Template | None = None
    t_pose: bool = False
    sketch_to_render: bool = False
    notes: tuple[str, ...] = field(default=())
    type: str = TASK_TYPE
    negative_prompt: str = ""  # text_to_image's or a v3 request's; backends that take one use it
    options: ImageOptions = field(default_factory=ImageOptions)  # v3's; v2 sends none
    priced_by_model: bool = False  # a text_to_image whose client chose the model (v3 ``model``)

    @property
    def credits(self) -> int:
        """The price: text_to_image costs Tripo's flat price whatever model runs it, unless
        the client chose the model (v3), which then sets the price as for generate_image."""
        if self.type == TEXT_TO_IMAGE and not self.priced_by_model:
            return TEXT_TO_IMAGE_CREDITS
        return self.model.credits

    @property
    def image_count(self) -> int:
        return len(self.files) + (len(self.template.images) if self.template else 0)

    @property
    def composed_prompt(self) -> str:
        if self.type == TEXT_TO_IMAGE and not (
            self.template or self.t_pose or self.sketch_to_render  # v3's text-to-image takes them
        ):
            return f"{self.prompt}\n\n{STYLE_IMAGE_HINT}" if self.files else self.prompt
        return prompts.compose_prompt(
            self.template.prompt if self.template else None,
            self.prompt,
            t_pose=self.t_pose,
            sketch_to_render=self.sketch_to_render,
        )

    def input_echo(self) -> dict[str, Any]:
        """The accepted request as the task's ``input``, with the effective model_version."""
        if self.type == TEXT_TO_IMAGE:
            return self._text_to_image_echo()
        echo: dict[str, Any] = {"prompt": self.prompt, "model_version": self.model.version}
        if self.files:
            echo["files"] = [ref.to_json() for ref in self.files]
        if self.template:
            echo["template"] = self.template.slug
        echo["t_pose"] = self.t_pose
        echo["sketch_to_render"] = self.sketch_to_render
        if self.negative_prompt:
            echo["negative_prompt"] = self.negative_prompt
        return echo | self.options.to_json()

    def _text_to_image_echo(self) -> dict[str, Any]:
        echo: dict[str, Any] = {"prompt": self.prompt, "model_version": self.model.version}
        if self.negative_prompt:
            echo["negative_prompt"] = self.negative_prompt
        if self.files:
            echo["style_image"] = self.files[0].to_json()
        if self.template:
            echo["template"] = self.template.slug
        echo.update({name: True for name in ("t_pose", "sketch_to_render") if getattr(self, name)})
        return echo | self.options.to_json()


def _bool(body: dict[str, Any], name: str) -> bool:
    value = body.get(name, False)
    if not isinstance(value, bool):
        raise InvalidParameter(f"{name} must be true or false, not {value!r}.")
    return value


def parse_file(value: object, where: str) -> FileRef:
    """One File object with exactly one of ``file_token``, ``url`` or ``object``."""
    if not isinstance(value, dict):
        raise InvalidParameter(
            f"{where} must be an object like {{'type': 'png', 'file_token': '…'}}."
        )
    present = [name for name in _SOURCES if value.get(name) is not None]
    if len(present) != 1:
        raise InvalidParameter(
            f"{where} must have exactly one of file_token, url, object"
            f" (it has {', '.join(present) if present else 'none'}).",
            "Give one source per File object: an upload's image_token as file_token, an "
            "http(s) url, or an object {bucket, key}.",
        )
    source: SourceKind = present[0]  # type: ignore[assignment]
    file_type = value.get("type")
    if file_type is not None and not isinstance(file_type, str):
        raise InvalidParameter(f"{where}.type must be a string such as 'png'.")
    raw = value[source]
    if source == "object":
        if not (
            isinstance(raw, dict)
            and isinstance(raw.get("bucket"), str)
            and isinstance(raw.get("key"), str)
            and raw["key"]
        ):
            raise InvalidParameter(f"{where}.object must be {{'bucket': '…', 'key': '…'}}.")
        return FileRef("object", raw["key"], bucket=raw["bucket"], type=file_type)
    if not isinstance(raw, str) or not raw.strip():
        raise InvalidParameter(f"{where}.{source} must be a non-empty string.")
    if source == "url":
        try:
            parts = urlsplit(raw.strip())  # what is kept: "http://\u3000" has no host
            valid = parts.scheme in ("http", "https") and bool(parts.hostname)
        except ValueError:  # e.g. an unclosed or malformed IPv6 host: "http://[::1"
            valid = False
        if not valid:
            raise InvalidParameter(
                f"{where}.url must be an http(s) URL, not {raw[:100]!r}.",
                "Give a public http:// or https:// link to a JPEG or PNG image, or upload it.",
            )
    return FileRef(source, raw.strip(), type=file_type)


def _parse_files(body: dict[str, Any]) -> list[FileRef]:
    refs: list[FileRef] = []
    if body.get("file") is not None:
        refs.append(parse_file(body["file"], "file"))
    files = body.get("files")
    if files is not None:
        if not isinstance(files, list):
            raise InvalidParameter("files must be a list of File objects.")
        refs.extend(parse_file(item, f"files[{i}]") for i, item in enumerate(files))
    return refs


def _check_options(body: dict[str, Any], model: ModelSpec) -> None:
    """Refuse an optional field set for a model whose catalog entry does not take it."""
    refused = sorted(name for name in REQUEST_OPTIONS - model.options if body.get(name))
    if refused:
        raise InvalidParameter(
            f"{model.version} does not take {', '.join(refused)}.",
            "Leave it out, or pick a model that takes it (GET /v2/openapi/models).",
        )


def parse_generate_image(
    body: dict[str, Any], models: Catalog = CATALOG, *, v3: bool = False
) -> GenerateImageRequest:
    """Validate a task body against the catalog ``models``; raise the protocol error for the
    first problem found. ``v3``: a v3 route's body, with its 1,800-character prompt and its
    image options, checked against what the model takes (v2 ignores them, as it ignores any
    field it does not know)."""
    task_type = body.get("type")
    if task_type != TASK_TYPE:
        raise TaskTypeNotSupported(f"task type {task_type!r} is not supported.")

    template_slug = body.get("template")
    if template_slug is not None and not isinstance(template_slug, str):
        raise InvalidParameter("template must be a string.")
    template = templates.lookup(template_slug) if template_slug else None

    prompt = body.get("prompt")
    if prompt is None:
        prompt = ""
    if not isinstance(prompt, str):
        raise InvalidParameter("prompt must be a string.")
    if not prompt.strip() and template is None:
        raise InvalidParameter(
            "prompt is required.", "Describe the image in the prompt, or choose a template."
        )
    prompts.check_prompt(prompt, prompts.V3_MAX_PROMPT_CHARS if v3 else prompts.MAX_PROMPT_CHARS)

    version = body.get("model_version")
    if version is None:
        version = models.default
    if not isinstance(version, str):
        raise InvalidParameter("model_version must be a string.")
    model = models.lookup(version)
    _check_options(body, model)

    files = _parse_files(body)
    # text_to_image's fields mean nothing here, but the one published body schema documents
    # them for both types: a value it calls invalid is refused on either (1004), not ignored.
    negative = _negative_prompt(body)
    _style_image(body)
    request = GenerateImageRequest(
        prompt=prompt,
        model=model,
        files=tuple(files),
        template=template,
        t_pose=_bool(body, "t_pose"),
        sketch_to_render=_bool(body, "sketch_to_render"),
    )
    request = _check_images(request, models)
    return _with_options(request, body, negative) if v3 else request


def _with_options(
    request: GenerateImageRequest, body: dict[str, Any], negative: str
) -> GenerateImageRequest:
    """A v3 request's options, for the model that runs it (after an upgrade): 1004 with the
    accepted values for what it cannot take."""
    rules, name = request.model.image_options, request.model.version
    if negative and not rules.negative_prompt:
        raise InvalidParameter(
            f"{name} does not take negative_prompt.",
            "Say what the image must not show in the prompt, or pick a model that takes a "
            "negative prompt (flux.1_dev, flux.1_kontext_pro, midjourney).",
        )
    return replace(request, options=rules.parse(body, name), negative_prompt=negative)


def _check_images(request: GenerateImageRequest, models: Catalog) -> GenerateImageRequest:
    """The model's image rules for the request's images: upgrade, refuse, or too many."""
    model, files, template, notes = request.model, request.files, request.template, []
    count = request.image_count
    if count and model.images is ImageRule.UPGRADE:
        default = models[models.default]
        notes.append(f"{model.version} takes no images; upgraded to {default.version}.")
        model = default
    elif count and model.images is ImageRule.REFUSES:
        source = "your files" if files else f"the template {template.slug!r}" if template else ""
        raise InvalidParameter(
            f"{model.version} cannot use image input, and {source} adds {count} image(s).",
            "Remove the images (file, files or a template with images), or pick a model that "
            f"takes images such as {models.default}.",
        )
    if count > model.max_files:
        raise InvalidParameter(
            f"{model.version} takes at most {model.max_files} images; this request has {count} "
            "(your files plus the template's).",
            "Send fewer images or pick a model that takes more (gpt_4o, gemini_*: 10).",
        )
    prompts.check_image_references(request.prompt, count)
    return replace(request, model=model, notes=tuple(notes))


def _negative_prompt(body: dict[str, Any]) -> str:
    """``negative_prompt``: a string of at most 255 characters of the prompt's characters."""
    negative = body.get("negative_prompt")
    if negative is None:
        return ""
    if not isinstance(negative, str):
        raise InvalidParameter("negative_prompt must be a string.")
    if len(negative) > MAX_NEGATIVE_PROMPT_CHARS:
        raise InvalidParameter(
            f"negative_prompt is {len(negative)} characters long; the limit is "
            f"{MAX_NEGATIVE_PROMPT_CHARS}.",
            "Shorten the negative prompt to what the image must not show.",
        )
    prompts.check_characters(negative, "negative_prompt")
    return negative


def _style_image(body: dict[str, Any]) -> tuple[FileRef, ...]:
    style = body.get("style_image")
    return () if style is None else (parse_file(style, "style_image"),)


def parse_text_to_image(
    body: dict[str, Any], models: Catalog = CATALOG, model_version: str | None = None
) -> GenerateImageRequest:
    """Validate a ``text_to_image`` body: ``prompt`` (required, ≤1024), ``negative_prompt``
    (≤255) and an optional ``style_image`` File. It runs on ``model_version`` (the
    server's ``text_to_image_model``, else the catalog's default); a ``model_version`` in the
    body is ignored, as Tripo's v2 ignored it on this type."""
    if body.get("type") != TEXT_TO_IMAGE:
        raise TaskTypeNotSupported(f"task type {body.get('type')!r} is not supported.")
    prompt = body.get("prompt")
    if not isinstance(prompt, str) or not prompt.strip():
        raise InvalidParameter(
            "prompt is required and must be a non-empty string.",
            "Describe the image in the prompt (at most 1024 characters).",
        )
    prompts.check_prompt(prompt)
    negative = _negative_prompt(body)
    files = _style_image(body)
    model = models.lookup(model_version or models.default)
    request = GenerateImageRequest(
        prompt=prompt, model=model, files=files, type=TEXT_TO_IMAGE, negative_prompt=negative
    )
    return _check_images(request, models)
