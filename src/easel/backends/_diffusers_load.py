"""Loading a ``diffusers`` pipeline: where its weights are, ``from_pretrained``, and Easel's
fast GPU path (:func:`optimize_pipeline`).

A local weights directory is checked without loading it (:func:`weights_problem`), so an API
process, which never loads, can refuse a model whose weights are missing. torch, diffusers
and torchao are imported only inside functions (``pip install 'easel[local]'``).
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from easel.backends.diffusers import Options

_PIPELINES = {"flux": "FluxPipeline", "flux-kontext": "FluxKontextPipeline"}


def optimize_pipeline(
    pipe: Any,
    *,
    compile_mode: str | None = "max-autotune-no-cudagraphs",
    fp8: bool | None = None,
    first_block_cache: float | None = None,
) -> list[str]:
    """Easel's fast GPU path; returns the names of what it applied, in order.

    Fused QKV projections, a channels-last VAE, fp8 dynamic per-row quantization of the
    transformer (``fp8=None``: when torchao is installed, the GPU has fp8 tensor cores and
    the weights are bf16; fp8 only pays together with compile), an opt-in first-block cache
    (it skips steps and changes pixels), then ``torch.compile`` of the transformer and the VAE
    decoder. No CUDA graphs: inference runs in worker threads and cudagraph trees are
    per-thread. Call it before the warm-up image; recompiles happen once per new shape.
    """
    import torch

    applied = ["fused-qkv", "channels-last-vae"]
    pipe.transformer.fuse_qkv_projections()
    pipe.vae.to(memory_format=torch.channels_last)
    if fp8 is None:
        fp8 = pipe.transformer.dtype == torch.bfloat16 and _fp8_supported()
    if fp8:
        from torchao.quantization import (  # type: ignore[import-not-found, unused-ignore]
            Float8DynamicActivationFloat8WeightConfig,
            PerRow,
            quantize_,
        )

        quantize_(pipe.transformer, Float8DynamicActivationFloat8WeightConfig(granularity=PerRow()))
        applied.append("fp8-rowwise")
    if first_block_cache is not None:
        from diffusers import FirstBlockCacheConfig

        cache = FirstBlockCacheConfig(threshold=first_block_cache)  # type: ignore[no-untyped-call]
        pipe.transformer.enable_cache(cache)
        applied.append(f"first-block-cache@{first_block_cache}")
    if compile_mode:
        import torch._inductor.config as inductor

        inductor.conv_1x1_as_mm = True  # the flags of huggingface/flux-fast
        inductor.coordinate_descent_tuning = True
        inductor.coordinate_descent_check_all_directions = True
        inductor.epilogue_fusion = False
        whole_graph = first_block_cache is None  # the cache decides per step in Python
        pipe.transformer.compile(mode=compile_mode, fullgraph=whole_graph)
        pipe.vae.decode = torch.compile(pipe.vae.decode, mode=compile_mode, fullgraph=True)
        applied.append(f"compile:{compile_mode}")
    return applied


def _fp8_supported() -> bool:
    import torch

    has_torchao = importlib.util.find_spec("torchao") is not None
    return (
        has_torchao and torch.cuda.is_available() and torch.cuda.get_device_capability() >= (8, 9)
    )


def _is_path(source: str) -> bool:
    """A local path rather than a hub id (``owner/name``)."""
    return Path(source).expanduser().exists() or source.startswith(("/", ".", "~"))


def weights_problem(source: str) -> str | None:
    """Why a local weights directory cannot be loaded, found without loading it: it is
    missing or holds no ``model_index.json`` (which every saved pipeline has). Hub ids are
    only checked by loading them."""
    if not _is_path(source):
        return None
    path = Path(source).expanduser()
    if not path.is_dir():
        return "no such directory"
    if not (path / "model_index.json").is_file():
        return "no saved pipeline there (no model_index.json)"
    return None


def _weights(source: str) -> tuple[str, bool]:
    """``(where, local_files_only)``; a path that is not a directory fails before the Hub."""
    if not _is_path(source):
        return source, False
    problem = weights_problem(source)
    if problem:
        raise FileNotFoundError(problem)
    return str(Path(source).expanduser()), True


def load_pipeline(options: Options) -> Any:
    """The configured pipeline from its weights, on its device, without a progress bar."""
    import diffusers
    import torch

    where, local = _weights(options.weights_source)
    pipeline_class = getattr(diffusers, _PIPELINES[options.pipeline])
    pipe = pipeline_class.from_pretrained(
        where,
        dtype=getattr(torch, options.dtype),
        local_files_only=local,
        token=os.environ.get("HF_TOKEN") or None,
    )
    pipe.to(options.device)
    pipe.set_progress_bar_config(disable=True)
    return pipe
