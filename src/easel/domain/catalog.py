"""The model catalog: one entry per model holds everything Easel knows about it. Pure data.

An entry (:class:`ModelSpec`) gives a model's ``model_version`` and the other names v3
accepts for it, its price, what it does with reference images (how many, which formats),
the optional request fields it takes, and, per backend kind, the provider's id for it. The
request rules, the v3 names, ``GET /v2/openapi/models``, the backends' model ids and the
backends enabled from the environment all read it; adding a model is one entry here (plus an
adapter under ``easel.backends`` when no existing kind serves it). Rules from the seed page:
``flux.1_dev`` is upgraded when images are sent, ``midjourney`` refuses images and
``flux.1_kontext_pro`` refuses WebP.

:data:`CATALOG` is the catalog a server runs with; :meth:`Catalog.with_model` makes one with
one more entry (``Settings.catalog`` takes it, so a test serves a model the code does not list).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from enum import Enum

from easel.domain.errors import ModelVersionInvalid

# The optional fields of a generate_image request (besides the images); every model takes all.
REQUEST_OPTIONS = frozenset({"template", "t_pose", "sketch_to_render"})
# Tripo's flat price of a text_to_image task, whatever model the server runs it on.
TEXT_TO_IMAGE_CREDITS = 5
ALL_FORMATS = frozenset({"png", "jpeg", "webp"})
PNG_JPEG = frozenset({"png", "jpeg"})


class ImageRule(Enum):
    """What a model does with reference images."""

    ACCEPTS = "accepts"
    UPGRADE = "upgrade"  # no images: a request with images runs on the default model
    REFUSES = "refuses"  # no images: a request with images is refused (1004)


@dataclass(frozen=True, slots=True)
class ModelSpec:
    """Everything about one model.

    ``provider_models`` maps a backend kind that serves the model to the id that provider
    knows it by (``[models."…"].provider_model`` overrides it per backend): the OpenAI or
    Gemini model id, the BFL endpoint, the ``diffusers`` pipeline that runs it; None for a
    kind that takes no id (the Midjourney proxy). A kind listed here is enabled for the model
    when its key is in the environment (:mod:`easel.backends.autoconfig`).
    """

    version: str  # the model_version of v2 (and a name v3 takes)
    credits: int
    description: str
    images: ImageRule = ImageRule.ACCEPTS
    max_files: int = 10  # reference images, the template's included
    formats: frozenset[str] = ALL_FORMATS  # reference image formats it takes
    v3_names: tuple[str, ...] = ()  # the names v3's ``model`` also takes for it
    options: frozenset[str] = REQUEST_OPTIONS  # the optional request fields it takes
    provider_models: Mapping[str, str | None] = field(default_factory=dict, hash=False)

    @property
    def accepts_webp(self) -> bool:
        return "webp" in self.formats


class Catalog(Mapping[str, ModelSpec]):
    """The models a server knows, by ``model_version``, in the order clients see them."""

    __slots__ = ("_by_v3_name", "_models", "default")

    def __init__(self, models: Iterable[ModelSpec], default: str) -> None:
        specs = list(models)
        self._models = {spec.version: spec for spec in specs}
        self._by_v3_name = {name: spec for spec in specs for name in spec.v3_names}
        self.default = default
        names = [name for spec in specs for name in (spec.version, *spec.v3_names)]
        twice = sorted({name for name in names if names.count(name) > 1})
        if twice:
            raise ValueError(f"names given to two catalog entries (or twice): {twice}")
        if default not in self._models or self._models[default].images is not ImageRule.ACCEPTS:
            raise ValueError(f"the default model {default!r} must be an entry that takes images")

    def __getitem__(self, version: str) -> ModelSpec:
        return self._models[version]

    def __iter__(self) -> Iterator[str]:
        return iter(self._models)

    def __len__(self) -> int:
        return len(self._models)

    def lookup(self, version: str) -> ModelSpec:
        """The spec of ``version``, or 2017 naming the valid versions."""
        try:
            return self._models[version]
        except KeyError:
            raise ModelVersionInvalid(
                f"model_version {version!r} is not a valid version.",
                f"Use one of: {', '.join(self)}.",
            ) from None

    def named(self, name: str) -> ModelSpec | None:
        """The model a v3 ``model`` names: a model_version or one of its v3 names."""
        return self._models.get(name) or self._by_v3_name.get(name)

    @property
    def v3_names(self) -> tuple[str, ...]:
        return tuple(self._by_v3_name)

    def with_model(self, spec: ModelSpec) -> Catalog:
        """This catalog plus ``spec``, listed last."""
        return Catalog([*self._models.values(), spec], self.default)


DEFAULT_MODEL = "flux.1_kontext_pro"

CATALOG = Catalog(
    [
        ModelSpec(
            "flux.1_kontext_pro", 5, "FLUX.1 Kontext [pro]", max_files=4, formats=PNG_JPEG,
            provider_models={"bfl": "flux-kontext-pro", "diffusers": "flux-kontext"},
        ),
        ModelSpec(
            "flux.1_dev", 5, "FLUX.1 [dev], text only", images=ImageRule.UPGRADE, max_files=0,
            provider_models={"bfl": "flux-dev", "diffusers": "flux"},
        ),
        ModelSpec(
            "gpt_4o", 5, "OpenAI gpt-image-1",
            provider_models={"openai": "gpt-image-1"},
        ),
        ModelSpec(
            "gpt_image_1.5", 10, "OpenAI gpt-image-1.5",
            provider_models={"openai": "gpt-image-1.5"},
        ),
        ModelSpec(
            "gpt_image_2", 10, "OpenAI gpt-image-2", v3_names=("chat_image_2",),
            provider_models={"openai": "gpt-image-2"},
        ),
        ModelSpec(
            "midjourney", 10, "Midjourney, text only", images=ImageRule.REFUSES, max_files=0,
            provider_models={"midjourney-proxy": None},
        ),
        ModelSpec(
            "gemini_2.5_flash_image_preview", 5, "Nano Banana", v3_names=("banana",),
            provider_models={"gemini": "gemini-2.5-flash-image"},  # the preview ids are retired
        ),
        ModelSpec(
            "gemini_3_pro_image_preview", 10, "Nano Banana Pro", v3_names=("banana_pro",),
            provider_models={"gemini": "gemini-3-pro-image"},
        ),
        ModelSpec(
            "gemini_3.1_flash_image_preview", 10, "Nano Banana 2", v3_names=("banana2",),
            provider_models={"gemini": "gemini-3.1-flash-image"},
        ),
    ],
    default=DEFAULT_MODEL,
)  # fmt: skip
