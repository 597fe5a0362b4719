"""Loading a ``diffusers`` pipeline: where its weights are, ``from_pretrained`` with the
family's class and an optional LoRA fused in, and Easel's fast GPU path
(:func:`optimize_pipeline`). What stays in memory, and where, is decided by
:data:`easel.backends._diffusers_memory.LOADER`.

A local weights directory is checked without loading it (:func:`weights_problem`), so an API
process, which never loads, can refuse a model whose weights are missing. torch, diffusers
and torchao are imported only inside functions (``pip install 'easel[local]'``).
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from easel.backends import _vl_processor

if TYPE_CHECKING:
    from easel.backends.diffusers import Options


def optimize_pipeline(
    pipe: Any,
    *,
    compile_mode: str | None = "max-autotune-no-cudagraphs",
    fp8: bool | None = None,
    first_block_cache: float | None = None,
) -> list[str]:
    """Easel's fast GPU path; returns the names of what it applied, in order.

    Fused QKV projections (where the transformer has them), a channels-last VAE (a 2-D one:
    Qwen-Image's is 3-D), fp8 dynamic per-row quantization of the
    transformer (``fp8=None``: when torchao is installed, the GPU has fp8 tensor cores and
    the weights are bf16; fp8 only pays together with compile), an opt-in first-block cache
    (it skips steps and changes pixels), then ``torch.compile`` of the transformer and the VAE
    decoder. No CUDA graphs: inference runs in worker threads and cudagraph trees are
    per-thread. Call it before the warm-up image; recompiles happen once per new shape.
    """
    import torch

    applied = []
    if hasattr(pipe.transformer, "fuse_qkv_projections"):  # not Z-Image's
        pipe.transformer.fuse_qkv_projections()
        applied.append("fused-qkv")
    if all(parameter.dim() != 5 for parameter in pipe.vae.parameters()):  # not a 3-D VAE
        pipe.vae.to(memory_format=torch.channels_last)
        applied.append("channels-last-vae")
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


def is_path(source: str) -> bool:
    """A local path rather than a hub id (``owner/name``)."""
    return Path(source).expanduser().exists() or source.startswith(("/", ".", "~"))


def weights_problem(source: str) -> str | None:
    """Why a local weights directory cannot be loaded, found without loading it: it is
    missing or holds no ``model_index.json`` (which every saved pipeline has). Hub ids are
    only checked by loading them."""
    if not is_path(source):
        return None
    path = Path(source).expanduser()
    if not path.is_dir():
        return "no such directory"
    if not (path / "model_index.json").is_file():
        return "no saved pipeline there (no model_index.json)"
    return None


def _weights(source: str) -> tuple[str, bool]:
    """``(where, local_files_only)``; a path that is not a directory fails before the Hub."""
    if not is_path(source):
        return source, False
    problem = weights_problem(source)
    if problem:
        raise FileNotFoundError(problem)
    return str(Path(source).expanduser()), True


def _lora(source: str) -> tuple[str, bool]:
    """``(where, local_files_only)`` of a LoRA: a local file or directory, else a hub id."""
    if not is_path(source):
        return source, False
    path = Path(source).expanduser()
    if not path.exists():
        raise FileNotFoundError(f"LoRA {source!r}: no such file or directory")
    return str(path), True


def load_pipeline(options: Options) -> Any:
    """The configured pipeline from its weights (with its LoRA fused in), on its device,
    without a progress bar."""
    pipe = read_pipeline(options)
    pipe.to(options.device)
    return pipe


def read_pipeline(options: Options) -> Any:
    """The configured pipeline from its weights (with its LoRA fused in), in CPU memory
    (where ``from_pretrained`` puts it), without a progress bar: measured there before it
    takes room on its device. Where torchvision is missing, a Qwen2-VL processor is loaded
    without its video half (:mod:`._vl_processor`); elsewhere every part is as published."""
    import diffusers
    import torch

    where, local = _weights(options.weights_source)
    token = os.environ.get("HF_TOKEN") or None
    pipeline_class = getattr(diffusers, options.family.pipeline_class)
    hub = {"local_files_only": local, "token": token}
    parts = {}
    if options.family.vl_processor and _vl_processor.torchvision_missing():
        parts["processor"] = _vl_processor.load(where, **hub)  # else it cannot be built
    dtype = getattr(torch, options.dtype)
    pipe = pipeline_class.from_pretrained(where, dtype=dtype, **hub, **parts)
    if options.lora:
        lora, lora_local = _lora(options.lora)
        pipe.load_lora_weights(
            lora,
            weight_name=options.lora_weight_name,
            adapter_name="easel",
            local_files_only=lora_local,
            token=token,
        )
        pipe.fuse_lora(lora_scale=options.lora_scale)
        pipe.unload_lora_weights()  # the fused weights stay; the adapter layers go
    pipe.set_progress_bar_config(disable=True)
    return pipe
