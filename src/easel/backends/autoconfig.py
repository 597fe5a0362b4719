"""Backends enabled from the environment when the configuration names none.

With no ``[backends]`` and no ``[models]`` tables, Easel serves what the machine can:

* an NVIDIA driver and the ``local`` extra: ``local-flux`` and ``local-kontext`` (diffusers on
  CUDA, bf16) for ``flux.1_dev`` and ``flux.1_kontext_pro``;
* ``BFL_API_KEY``: ``bfl`` for ``flux.1_kontext_pro`` and ``flux.1_dev``;
* ``OPENAI_API_KEY``: ``openai`` for ``gpt_4o``, ``gpt_image_1.5`` and ``gpt_image_2``;
* ``GEMINI_API_KEY``: ``gemini`` for the three ``gemini_*`` model_versions;
* ``MJ_PROXY_URL``: ``midjourney-proxy`` for ``midjourney``.

Local pipelines come first (the GPU is already paid for); a hosted provider is the fallback.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Mapping
from pathlib import Path
from typing import Any

_HOSTED: tuple[tuple[str, str, str, tuple[str, ...]], ...] = (
    ("BFL_API_KEY", "bfl", "bfl", ("flux.1_kontext_pro", "flux.1_dev")),
    ("OPENAI_API_KEY", "openai", "openai", ("gpt_4o", "gpt_image_1.5", "gpt_image_2")),
    ("GEMINI_API_KEY", "gemini", "gemini", (
        "gemini_2.5_flash_image_preview",
        "gemini_3_pro_image_preview",
        "gemini_3.1_flash_image_preview",
    )),
    ("MJ_PROXY_URL", "midjourney-proxy", "midjourney-proxy", ("midjourney",)),
)  # fmt: skip

_LOCAL: tuple[tuple[str, str, str, str], ...] = (
    ("local-flux", "flux", "black-forest-labs/FLUX.1-dev", "flux.1_dev"),
    ("local-kontext", "flux-kontext", "black-forest-labs/FLUX.1-Kontext-dev", "flux.1_kontext_pro"),
)


def has_local_gpu() -> bool:
    """An NVIDIA driver is loaded and the ``local`` extra is installed (torch not imported)."""
    return Path("/proc/driver/nvidia/version").exists() and (
        importlib.util.find_spec("diffusers") is not None
    )


def auto_tables(env: Mapping[str, str], local_gpu: bool) -> dict[str, Any]:
    """``backends`` and ``models`` tables for what ``env`` and the machine offer."""
    backends: dict[str, dict[str, Any]] = {}
    models: dict[str, list[str]] = {}
    if local_gpu:
        for name, pipeline, weights, version in _LOCAL:
            backends[name] = {"kind": "diffusers", "pipeline": pipeline, "weights": weights,
                              "device": "cuda", "dtype": "bfloat16"}  # fmt: skip
            models.setdefault(version, []).append(name)
    for variable, name, kind, versions in _HOSTED:
        if env.get(variable):
            backends[name] = {"kind": kind}
            for version in versions:
                models.setdefault(version, []).append(name)
    return {
        "backends": backends,
        "models": {version: {"backends": names} for version, names in models.items()},
    }
