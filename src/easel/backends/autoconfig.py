"""Backends enabled from the environment when the configuration names none.

With no ``[backends]`` and no ``[models]`` tables, Easel serves what the machine can: each
catalog model whose entry names a kind (its ``provider_models``) gets a backend of that kind
when the kind can run here:

* an NVIDIA driver and the ``local`` extra: ``diffusers`` on CUDA (bf16), one backend per
  pipeline (``local-flux``, ``local-kontext``), today for ``flux.1_dev`` and
  ``flux.1_kontext_pro``; an entry naming a pipeline the ``diffusers`` kind does not run
  (yet) is left to the hosted kinds;
* a hosted kind when its variable in :data:`HOSTED` is set (``OPENAI_API_KEY`` for the
  ``gpt_*`` models, ``ARK_API_KEY`` for ``seedream_*``, and so on), under the kind's own
  name.

A model whose ``model_version`` is an alias (``retired``) gets no backend: its requests run
on the model it stands for.

Local pipelines come first (the GPU is already paid for); a hosted provider is the fallback.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Collection, Mapping
from pathlib import Path
from typing import Any, get_args

from easel.domain.catalog import CATALOG, Catalog

# Hosted kind → the environment variable that enables it (each kind's own key or URL).
HOSTED: dict[str, str] = {
    "openai": "OPENAI_API_KEY",
    "gemini": "GEMINI_API_KEY",
    "bfl": "BFL_API_KEY",
    "midjourney-proxy": "MJ_PROXY_URL",
    "modelark": "ARK_API_KEY",
}
LOCAL = "diffusers"


def has_local_gpu() -> bool:
    """An NVIDIA driver is loaded and the ``local`` extra is installed (torch not imported)."""
    return Path("/proc/driver/nvidia/version").exists() and (
        importlib.util.find_spec("diffusers") is not None
    )


def local_pipelines() -> tuple[str, ...]:
    """The pipelines the ``diffusers`` kind runs (its ``pipeline`` option's values)."""
    from easel.backends.diffusers import Options

    return get_args(Options.model_fields["pipeline"].annotation)


def _backend(kind: str, provider_model: str | None) -> tuple[str, dict[str, Any]]:
    """The name and table of the backend of ``kind`` that serves a model: one per hosted
    kind, and one per diffusers pipeline (``local-flux``, ``local-kontext``), which models
    that run on the same pipeline share."""
    if kind != LOCAL:
        return kind, {"kind": kind}
    pipeline = provider_model or ""
    table = {"kind": LOCAL, "pipeline": pipeline, "device": "cuda", "dtype": "bfloat16"}
    return f"local-{pipeline.removeprefix('flux-')}", table


def auto_tables(
    env: Mapping[str, str],
    local_gpu: bool,
    models: Catalog = CATALOG,
    retired: Collection[str] = (),
) -> dict[str, Any]:
    """``backends`` and ``models`` tables for what ``env`` and the machine offer, for the
    models not in ``retired`` (the aliased ones)."""
    kinds = [LOCAL] if local_gpu else []
    kinds += [kind for kind, variable in HOSTED.items() if env.get(variable)]
    pipelines = local_pipelines() if local_gpu else ()
    backends: dict[str, dict[str, Any]] = {}
    chains: dict[str, dict[str, Any]] = {}
    for spec in models.values():
        if spec.version in retired:
            continue
        names = []
        for kind in kinds:
            if kind == LOCAL and spec.provider_models.get(kind) not in pipelines:
                continue
            if kind in spec.provider_models:
                name, backends[name] = _backend(kind, spec.provider_models[kind])
                names.append(name)
        if names:
            chains[spec.version] = {"backends": names}
    return {"backends": backends, "models": chains}
