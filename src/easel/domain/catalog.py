"""The model catalog: one entry per model holds everything Easel knows about it. Pure data.

An entry (:class:`ModelSpec`) gives a model's ``model_version`` and the other names v3
accepts for it, its price, what it does with reference images (how many, which formats),
the optional request fields it takes, the v3 image options it takes (``image_options``, a
preset of :mod:`easel.domain.options`), and, per backend kind, the provider's id for it. The
request rules, the v3 names, ``GET /v2/openapi/models``, the backends' model ids and the
backends enabled from the environment all read it; adding a model is one entry here (plus an
adapter under ``easel.backends`` when no existing kind serves it). Rules from the seed page:
``flux.1_dev`` is upgraded when images are sent, ``midjourney`` refuses images and
``flux.1_kontext_pro`` refuses WebP.

:data:`CATALOG` is the catalog a server runs with; :meth:`Catalog.with_model` makes one with
one more entry (``Settings.catalog`` takes it, so a test serves a model the code does not list).
:meth:`Catalog.configured` applies the operator's ``[aliases]`` and prices: an alias sends
every request naming it to another entry (a model retired upstream is remapped in the
configuration, never in code), and a price replaces the entry's default ``credits``.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from enum import Enum

from easel.domain import options as opt
from easel.domain.errors import ModelVersionInvalid

# The optional fields of a generate_image request (besides the images); every model takes all.
REQUEST_OPTIONS = frozenset({"template", "t_pose", "sketch_to_render"})
# Tripo's flat price of a text_to_image task, whatever model the server runs it on.
TEXT_TO_IMAGE_CREDITS = 5
ALL_FORMATS = frozenset({"png", "jpeg", "webp"})
PNG_JPEG = frozenset({"png", "jpeg"})
# What an alias may be called: the characters of the catalog's own names.
ALIAS_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.\-]{0,63}")


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
    # the v3 image options and values it takes (a preset of easel.domain.options)
    image_options: opt.OptionRules = opt.NO_OPTIONS
    provider_models: Mapping[str, str | None] = field(default_factory=dict, hash=False)

    @property
    def accepts_webp(self) -> bool:
        return "webp" in self.formats


class Catalog(Mapping[str, ModelSpec]):
    """The models a server knows, by ``model_version``, in the order clients see them.

    Iterating gives the entries a request can reach; an entry whose ``model_version`` is an
    alias (``aliases``) is left out, though ``catalog[version]`` still finds it, for the
    tasks stored under it before the alias was set. :meth:`lookup` (v2) and :meth:`named`
    (v3) follow aliases.
    """

    __slots__ = ("_aliases", "_by_v3_name", "_default", "_models", "default")

    def __init__(
        self, models: Iterable[ModelSpec], default: str, aliases: Mapping[str, str] | None = None
    ) -> None:
        specs = list(models)
        self._models = {spec.version: spec for spec in specs}
        self._by_v3_name = {name: spec for spec in specs for name in spec.v3_names}
        names = [name for spec in specs for name in (spec.version, *spec.v3_names)]
        twice = sorted({name for name in names if names.count(name) > 1})
        if twice:
            raise ValueError(f"names given to two catalog entries (or twice): {twice}")
        self._aliases = self._resolve(dict(aliases or {}))
        self._default = default  # the entry's own name; ``default`` follows an alias of it
        self.default = self._aliases.get(default, default)
        if (
            default not in self._models
            or self._models[self.default].images is not ImageRule.ACCEPTS
        ):
            raise ValueError(
                f"the default model {self.default!r} must be an entry that takes images"
                + (f" (it is what {default!r} is an alias of)" if default != self.default else "")
            )

    def _resolve(self, aliases: dict[str, str]) -> dict[str, str]:
        """Each alias with the ``model_version`` it names; ValueError saying which is wrong."""
        resolved: dict[str, str] = {}
        for name, target in aliases.items():
            where = f"[aliases] {name} = {target!r}"
            if not ALIAS_NAME.fullmatch(name):
                raise ValueError(
                    f"{where}: an alias is a name of letters, digits, '_', '.' and '-' "
                    "(at most 64), such as chat_image_1"
                )
            spec = self._models.get(target) or self._by_v3_name.get(target)
            if spec is not None and name in (spec.version, *spec.v3_names):
                raise ValueError(f"{where}: a name cannot be an alias of its own model")
            chained = target if target in aliases or spec is None else spec.version
            if chained in aliases:
                raise ValueError(
                    f"{where}: {chained!r} is an alias itself; name the model it stands for "
                    f"({aliases[chained]!r}) directly"
                )
            if spec is None:
                known = ", ".join([*self._models, *self._by_v3_name])
                raise ValueError(
                    f"{where}: {target!r} is not a model of this server; known: {known}"
                )
            resolved[name] = spec.version
        return resolved

    def __getitem__(self, version: str) -> ModelSpec:
        return self._models[version]

    def __iter__(self) -> Iterator[str]:
        return (version for version in self._models if version not in self._aliases)

    def __len__(self) -> int:
        return sum(1 for _ in self)

    def __contains__(self, version: object) -> bool:
        return version in self._models and version not in self._aliases

    def lookup(self, version: str) -> ModelSpec:
        """The spec of ``version`` (an alias: the spec it stands for), or 2017 naming the
        valid versions."""
        spec = self._models.get(self._aliases.get(version, version))
        if spec is None:
            raise ModelVersionInvalid(
                f"model_version {version!r} is not a valid version.",
                f"Use one of: {', '.join([*self, *self._aliases])}.",
            )
        return spec

    def named(self, name: str) -> ModelSpec | None:
        """The model a v3 ``model`` names: a model_version, one of its v3 names, or an alias."""
        spec = self._models.get(self._aliases.get(name, name)) or self._by_v3_name.get(name)
        if spec is not None and spec.version in self._aliases:
            return self._models[self._aliases[spec.version]]
        return spec

    @property
    def v3_names(self) -> tuple[str, ...]:
        return tuple(self._by_v3_name)

    @property
    def names(self) -> tuple[str, ...]:
        """Every name a request may give: the entries' versions and v3 names, and the aliases."""
        return tuple(dict.fromkeys([*self, *self._by_v3_name, *self._aliases]))

    @property
    def aliases(self) -> Mapping[str, str]:
        """Each alias with the ``model_version`` it stands for."""
        return dict(self._aliases)

    def with_model(self, spec: ModelSpec) -> Catalog:
        """This catalog plus ``spec``, listed last."""
        return Catalog([*self._models.values(), spec], self._default, self._aliases)

    def configured(
        self, aliases: Mapping[str, str], credits: Mapping[str, int] | None = None
    ) -> Catalog:
        """This catalog's entries with ``credits`` replacing their prices (by model_version),
        and ``aliases`` (name → a model_version or v3 name) in place of its own. ValueError
        names an alias that cannot be, or a price for a model the catalog lacks."""
        prices = dict(credits or {})
        unknown = sorted(set(prices) - set(self._models))
        if unknown:
            raise ValueError(f"a price for models this server does not have: {unknown}")
        specs = [
            replace(spec, credits=prices[spec.version]) if spec.version in prices else spec
            for spec in self._models.values()
        ]
        return Catalog(specs, self._default, aliases)


DEFAULT_MODEL = "flux.1_kontext_pro"

CATALOG = Catalog(
    [
        ModelSpec(
            "flux.1_kontext_pro", 5, "FLUX.1 Kontext [pro]", max_files=4, formats=PNG_JPEG,
            image_options=opt.FLUX_KONTEXT,
            provider_models={"bfl": "flux-kontext-pro", "diffusers": "flux-kontext"},
        ),
        ModelSpec(
            "flux.1_dev", 5, "FLUX.1 [dev], text only", images=ImageRule.UPGRADE, max_files=0,
            image_options=opt.FLUX_DEV,
            provider_models={"bfl": "flux-dev", "diffusers": "flux"},
        ),
        # Tripo publishes no price for z_image: 5, as flux.1_dev, its text-only peer.
        ModelSpec(
            "z_image", 5, "Z-Image, text only", images=ImageRule.REFUSES, max_files=0,
            image_options=opt.FLUX_DEV, provider_models={"diffusers": "z-image"},
        ),
        # gpt-image-1 and gpt-image-1.5 are retired at OpenAI (2026-10-23, 2026-12-01): an
        # operator remaps their names in [aliases] (docs/configuration.md).
        ModelSpec(
            "gpt_4o", 5, "OpenAI gpt-image-1", v3_names=("chat_image_1",),
            image_options=opt.GPT_IMAGE_1, provider_models={"openai": "gpt-image-1"},
        ),
        ModelSpec(
            "gpt_image_1.5", 10, "OpenAI gpt-image-1.5", v3_names=("chat_image_1.5",),
            image_options=opt.GPT_IMAGE_1,
            provider_models={"openai": "gpt-image-1.5"},
        ),
        ModelSpec(
            "gpt_image_2", 10, "OpenAI gpt-image-2", v3_names=("chat_image_2",),
            image_options=opt.GPT_IMAGE_2,
            provider_models={"openai": "gpt-image-2"},
        ),
        # v3 names with no v2 name before them: the name is the model_version on both
        # protocols. No published Tripo price: chat_image_2's 10; up to 16 references (v3).
        ModelSpec(
            "chat_image_2.5_flare", 10, "OpenAI gpt-image-2.5-flare (speed tier)", max_files=16,
            image_options=opt.CHAT_IMAGE_2_5, provider_models={"openai": "gpt-image-2.5-flare"},
        ),
        ModelSpec(
            "chat_image_2.5_sunburst", 10, "OpenAI gpt-image-2.5-sunburst (fidelity tier)",
            max_files=16, image_options=opt.CHAT_IMAGE_2_5,
            provider_models={"openai": "gpt-image-2.5-sunburst"},
        ),
        ModelSpec(
            "midjourney", 10, "Midjourney, text only", images=ImageRule.REFUSES, max_files=0,
            image_options=opt.MIDJOURNEY,
            provider_models={"midjourney-proxy": None},
        ),
        ModelSpec(
            "gemini_2.5_flash_image_preview", 5, "Nano Banana", v3_names=("banana",),
            image_options=opt.GEMINI_2_5_FLASH,
            provider_models={"gemini": "gemini-2.5-flash-image"},  # the preview ids are retired
        ),
        ModelSpec(
            "gemini_3_pro_image_preview", 10, "Nano Banana Pro", v3_names=("banana_pro",),
            image_options=opt.GEMINI_3_PRO,
            provider_models={"gemini": "gemini-3-pro-image"},
        ),
        ModelSpec(
            "gemini_3.1_flash_image_preview", 10, "Nano Banana 2", v3_names=("banana2",),
            image_options=opt.GEMINI_3_1_FLASH,
            provider_models={"gemini": "gemini-3.1-flash-image"},
        ),
        # Seedream on BytePlus ModelArk; 5 credits, as hosted Tripo was seen charging for
        # seedream_v4. v3 calls seedream_v4 text-to-image only and caps seedream_v5 at 4 refs.
        ModelSpec(
            "seedream_v4", 5, "Seedream 4.0, text only", images=ImageRule.REFUSES, max_files=0,
            image_options=opt.SEEDREAM, provider_models={"modelark": "seedream-4-0-250828"},
        ),
        ModelSpec(
            "seedream_v5", 5, "Seedream 5.0: editing, multi-image fusion", max_files=4,
            image_options=opt.SEEDREAM, provider_models={"modelark": "seedream-5-0-260128"},
        ),
    ],
    default=DEFAULT_MODEL,
)  # fmt: skip
