"""FLUX.1-dev on one GPU: plain diffusers bf16 against Easel's optimized path.

A benchmark, not a test. It builds the real FLUX.1-dev architecture (transformer: 19 double
and 38 single blocks, 24 heads × 128, T5 width 4096, pooled 768, guidance embeddings; the
16-channel FLUX VAE) with random bf16 weights directly on the GPU, so nothing is downloaded:
the compute does not depend on the weight values. The text encoders are replaced by random
embeddings of their real shapes (512 T5 tokens × 4096, pooled 768); on an H100 they cost a
few tens of milliseconds per image, outside the figures.

Each configuration is built fresh, warmed up (this is where ``torch.compile`` happens; its
time is printed), then timed over ``--runs`` full pipeline calls (28 denoising steps plus the
VAE decode to a PIL image, as the worker does) with ``torch.cuda.synchronize`` around each:

* ``plain``: ``FluxPipeline`` in bf16, eager;
* ``easel``: the same pipeline after ``easel.backends._diffusers_load.optimize_pipeline``, the
  function the worker runs at load time (fused QKV, channels-last VAE, fp8 when torchao and
  an fp8 GPU are there, ``torch.compile``);
* ``easel+fbc`` (opt-in, ``--first-block-cache``): plus first-block step caching, which
  changes the pixels, so it is never a default.

Peak memory is ``torch.cuda.max_memory_allocated`` over the timed runs. The configs are in
``published_configs.py``; the timing loop and the options are shared with ``gpu_families.py``,
which times every family with whole pipelines (text encoders included). Usage::

    python bench/flux_gpu.py                        # 1024×1024, 28 steps, on CUDA
    python bench/flux_gpu.py --first-block-cache    # add the caching figure (threshold 0.12)
    python bench/flux_gpu.py --tiny --device cpu --steps 2 --size 64 --runs 1  # smoke run
"""

from __future__ import annotations

import argparse
import gc
import json
import statistics
import sys
import time
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from published_configs import (  # the sibling module, found through the line above
    FLUX_DEV_SCHEDULER,
    FLUX_DEV_TRANSFORMER,
    FLUX_DEV_VAE,
)

TINY_TRANSFORMER: dict[str, Any] = {
    "patch_size": 1, "in_channels": 4, "num_layers": 1, "num_single_layers": 1,
    "attention_head_dim": 16, "num_attention_heads": 2, "joint_attention_dim": 32,
    "pooled_projection_dim": 32, "guidance_embeds": True, "axes_dims_rope": (4, 4, 8),
}  # fmt: skip
TINY_VAE: dict[str, Any] = {
    "block_out_channels": (4,), "layers_per_block": 1, "latent_channels": 1,
    "norm_num_groups": 1, "use_quant_conv": False, "use_post_quant_conv": False,
    "scaling_factor": 1.5035, "shift_factor": 0.0609,
}  # fmt: skip
TEXT_TOKENS = 512


@dataclass
class Timing:
    """Pipeline calls timed after their warm-ups; peak memory over the timed calls."""

    seconds_mean: float
    seconds_min: float
    warm_up_s: float
    peak_gib: float


@dataclass
class Result:
    label: str
    seconds_mean: float
    seconds_min: float
    warm_up_s: float
    peak_gib: float
    applied: list[str] = field(default_factory=list)


@contextmanager
def on(device: str, dtype: torch.dtype) -> Iterator[None]:
    """Modules made inside are made on ``device`` in ``dtype``: random init straight in bf16
    on the GPU, with no fp32 copy of billions of parameters."""
    default = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            yield
    finally:
        torch.set_default_dtype(default)


def build(tiny: bool, device: str, dtype: torch.dtype) -> Any:
    """A FluxPipeline with random weights made on ``device`` and no text encoders."""
    from diffusers import (
        AutoencoderKL,
        FlowMatchEulerDiscreteScheduler,
        FluxPipeline,
        FluxTransformer2DModel,
    )

    torch.manual_seed(0)
    with on(device, dtype):
        config = TINY_TRANSFORMER if tiny else FLUX_DEV_TRANSFORMER
        transformer = FluxTransformer2DModel(**config)  # type: ignore[no-untyped-call]
        vae = AutoencoderKL(**(TINY_VAE if tiny else FLUX_DEV_VAE))  # type: ignore[no-untyped-call]
    scheduler = FlowMatchEulerDiscreteScheduler(**({} if tiny else FLUX_DEV_SCHEDULER))  # type: ignore[no-untyped-call]
    pipe: Any = FluxPipeline(  # type: ignore[no-untyped-call]
        scheduler=scheduler, vae=vae, text_encoder=None, tokenizer=None,
        text_encoder_2=None, tokenizer_2=None, transformer=transformer,
    )  # fmt: skip
    pipe.set_progress_bar_config(disable=True)
    return pipe


def embeddings(pipe: Any, device: str, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """Random stand-ins for the T5 and CLIP outputs, in their real shapes."""
    width = pipe.transformer.config.joint_attention_dim
    pooled = pipe.transformer.config.pooled_projection_dim
    generator = torch.Generator(device).manual_seed(1)
    return {
        "prompt_embeds": torch.randn(1, TEXT_TOKENS, width, generator=generator, device=device)
        .to(dtype),
        "pooled_prompt_embeds": torch.randn(1, pooled, generator=generator, device=device)
        .to(dtype),
    }  # fmt: skip


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def timed(call: Callable[[], object], device: str, warmups: int, runs: int) -> Timing:
    """``warmups`` untimed calls (compile happens there), then ``runs`` timed ones, each
    between two synchronizations."""
    started = time.perf_counter()
    for _ in range(warmups):
        call()
    sync(device)
    warm_up_s = time.perf_counter() - started
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    seconds = []
    for _ in range(runs):
        sync(device)
        started = time.perf_counter()
        call()
        sync(device)
        seconds.append(time.perf_counter() - started)
    peak = torch.cuda.max_memory_allocated() / 2**30 if device == "cuda" else 0.0
    return Timing(statistics.mean(seconds), min(seconds), warm_up_s, peak)


def free(device: str) -> None:
    """Give back what a dropped pipeline held: compiled graphs and cached GPU memory."""
    gc.collect()
    torch._dynamo.reset()
    if device == "cuda":
        torch.cuda.empty_cache()


def easel_settings(args: argparse.Namespace) -> tuple[str | None, bool | None]:
    """The compile mode (None: no compile) and fp8 choice (None: auto) of the easel path."""
    mode = None if args.compile_mode == "none" else args.compile_mode
    return mode, {"auto": None, "on": True, "off": False}[args.fp8]


def measure(pipe: Any, label: str, args: argparse.Namespace, applied: list[str]) -> Result:
    """Warm up (compile happens here), then time full pipeline calls."""
    dtype = torch.float32 if args.device == "cpu" else torch.bfloat16
    inputs = embeddings(pipe, args.device, dtype)

    def paint() -> None:
        pipe(
            **inputs, width=args.size, height=args.size, num_inference_steps=args.steps,
            guidance_scale=3.5, generator=torch.Generator("cpu").manual_seed(0),
        )  # fmt: skip

    t = timed(paint, args.device, args.warmups, args.runs)
    result = Result(label, **asdict(t), applied=applied)
    print(f"  {label}: {t.seconds_mean:.3f} s/image (min {t.seconds_min:.3f}), "
          f"peak {t.peak_gib:.2f} GiB, warm-up {t.warm_up_s:.1f} s", flush=True)  # fmt: skip
    return result


def run_one(label: str, args: argparse.Namespace, fbc: float | None = None) -> Result:
    from easel.backends._diffusers_load import optimize_pipeline

    dtype = torch.float32 if args.device == "cpu" else torch.bfloat16
    pipe = build(args.tiny, args.device, dtype)
    applied: list[str] = []
    if label != "plain":
        mode, fp8 = easel_settings(args)
        applied = optimize_pipeline(pipe, compile_mode=mode, fp8=fp8, first_block_cache=fbc)
    try:
        return measure(pipe, label, args, applied)
    finally:
        del pipe
        free(args.device)


def report(results: list[Result], args: argparse.Namespace) -> None:
    plain = next((r for r in results if r.label == "plain"), None)
    model = "FLUX.1-dev (tiny)" if args.tiny else "FLUX.1-dev"
    print(f"\n{model}, {args.size}×{args.size}, {args.steps} steps, batch 1, "
          f"mean of {args.runs} runs after {args.warmups} warm-ups")  # fmt: skip
    print(f"{'path':<12}{'s/image':>10}{'min':>9}{'vs plain':>10}{'peak GiB':>10}{'warm-up s':>11}")
    for r in results:
        ratio = f"{plain.seconds_mean / r.seconds_mean:.2f}×" if plain else "-"
        print(f"{r.label:<12}{r.seconds_mean:>10.3f}{r.seconds_min:>9.3f}{ratio:>10}"
              f"{r.peak_gib:>10.2f}{r.warm_up_s:>11.1f}  {' '.join(r.applied)}")  # fmt: skip
    print(
        "json:",
        json.dumps({"environment": environment_of(args), "results": [asdict(r) for r in results]}),
    )


def environment_of(args: argparse.Namespace) -> dict[str, Any]:
    return environment(args.device) | {"steps": args.steps, "size": args.size,
                                       "text_tokens": TEXT_TOKENS}  # fmt: skip


def environment(device: str) -> dict[str, Any]:
    """The versions and the GPU the figures come from."""
    import diffusers

    info: dict[str, Any] = {"torch": torch.__version__, "diffusers": diffusers.__version__}
    try:
        import torchao  # type: ignore[import-not-found, unused-ignore]

        info["torchao"] = torchao.__version__
    except ImportError:
        info["torchao"] = None
    if device == "cuda":
        properties = torch.cuda.get_device_properties(0)
        info |= {"gpu": properties.name, "gpu_memory_gib": properties.total_memory / 2**30,
                 "capability": torch.cuda.get_device_capability(0)}  # fmt: skip
    return info


def add_path_arguments(parser: argparse.ArgumentParser, runs: int) -> None:
    """The options both GPU benchmarks take: runs, warm-ups, the easel path, the device."""
    parser.add_argument("--runs", type=int, default=runs, help="timed runs per path")
    parser.add_argument("--warmups", type=int, default=2, help="untimed runs first (compile)")
    parser.add_argument(
        "--fp8", choices=["auto", "on", "off"], default="auto",
        help="fp8 in the easel path; auto: when torchao and an fp8 GPU exist",
    )  # fmt: skip
    parser.add_argument(
        "--compile-mode", default="max-autotune-no-cudagraphs",
        help="torch.compile mode for the easel path, or 'none'",
    )  # fmt: skip
    parser.add_argument("--skip-plain", action="store_true", help="do not time the plain path")
    parser.add_argument("--device", choices=["cuda", "cpu"], default="cuda")


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--steps", type=int, default=28)
    parser.add_argument("--size", type=int, default=1024, help="width and height (default 1024)")
    add_path_arguments(parser, runs=5)
    parser.add_argument(
        "--first-block-cache", type=float, nargs="?", const=0.12, default=None,
        metavar="THRESHOLD", help="also time easel+fbc (default threshold 0.12)",
    )  # fmt: skip
    parser.add_argument("--tiny", action="store_true", help="tiny random model (smoke run)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("CUDA is not available; use --tiny --device cpu for a smoke run")
    warnings.filterwarnings("ignore", "invalid value encountered in cast")  # random weights
    results = [] if args.skip_plain else [run_one("plain", args)]
    results.append(run_one("easel", args))
    if args.first_block_cache is not None:
        results.append(run_one("easel+fbc", args, fbc=args.first_block_cache))
    report(results, args)


if __name__ == "__main__":
    main()
