"""Backends are found by ``kind`` in this explicit registry and imported lazily.

Each kind's module defines ``Options`` (a pydantic model of its settings, extra keys
forbidden) and ``create(name, options, outbound) -> ImageBackend``, ``outbound`` being the
address rules every connection it opens on a provider's say-so must follow. Importing a
module never imports its vendor SDK or torch; that happens when the backend first runs.
"""

from __future__ import annotations

import importlib
from typing import Any

from pydantic import ValidationError

from easel.backends.base import ImageBackend
from easel.config import BackendTable, ConfigError
from easel.outbound import OutboundPolicy

KINDS: dict[str, str] = {
    "placeholder": "easel.backends.placeholder",
    "bfl": "easel.backends.bfl",
    "midjourney-proxy": "easel.backends.midjourney",
    "openai": "easel.backends.openai",
    "gemini": "easel.backends.gemini",
    "modelark": "easel.backends.modelark",
    "diffusers": "easel.backends.diffusers",
}


def create_backend(
    name: str, table: BackendTable, outbound: OutboundPolicy | None = None
) -> ImageBackend:
    module_name = KINDS.get(table.kind)
    if module_name is None:
        raise ConfigError(
            f"[backends.{name}] has unknown kind {table.kind!r}; known kinds: {', '.join(KINDS)}"
        )
    module: Any = importlib.import_module(module_name)
    try:
        options = module.Options.model_validate(table.options)
    except ValidationError as exc:
        problems = "; ".join(
            ("unknown key " if e["type"] == "extra_forbidden" else "")
            + ".".join(str(p) for p in e["loc"])
            + ("" if e["type"] == "extra_forbidden" else f": {e['msg']}")
            for e in exc.errors()
        )
        raise ConfigError(f"[backends.{name}] (kind {table.kind!r}): {problems}") from None
    backend = module.create(name, options, outbound or OutboundPolicy())
    if not isinstance(backend, ImageBackend):
        raise TypeError(
            f"{module_name}.create made a {type(backend).__name__}, not an ImageBackend"
        )
    return backend
