"""Every diffusers family Easel serves, on one GPU: plain diffusers bf16 beside Easel's path.

A benchmark, not a test. For each family (the diffusers backend's ``pipeline``) it builds the
whole pipeline at full size with random bf16 weights directly on the GPU (transformer, VAE
and text encoders, from the published configs in ``published_configs.py``: nothing is
downloaded, and the compute does not depend on the weight values), then prints, per case,
seconds per image, peak GPU memory, load time and swap time:

* FLUX.1-dev at 28 steps; Z-Image-Turbo at 9; FLUX.2 [klein] 4B at 4, from text and with
  one reference; Qwen-Image-Edit-2511 with one reference at its 40 steps under true CFG
  (4.0), and as its Lightning LoRAs run it: 8 and 4 steps, no CFG. Easel fuses a LoRA into
  the weights, so a Lightning step costs what a base step costs and the base weights stand in
  for it; a diffusers user who keeps the LoRA unfused pays its adapter layers on top, which
  is not timed here.
* ``plain``: the pipeline called as diffusers documents it, bf16, eager.
* ``easel``: what the worker does: ``optimize_pipeline`` (fused QKV, channels-last 2-D VAE,
  fp8 where torchao and the GPU allow, ``torch.compile``) and one warm-up image at load,
  then ``paint`` (the diffusers backend's call: its size, steps, references, true CFG,
  seed and step hook). The PNG encoding of the worker comes on top of both.

``s/image`` is the mean over ``--runs`` calls after ``--warmups`` more (each between CUDA
synchronizations; the text encoders, the denoising steps and the VAE decode to a PIL image);
``peak GiB`` is ``torch.cuda.max_memory_allocated`` over the timed calls. ``load s`` is the
pipeline's move from host memory to the GPU (what loading costs beyond reading the weight
files: their size is printed, for the disk's share), plus, for easel, the optimization and
the warm-up image the worker paints before its first task. ``swap s`` is ``pipe.to("cpu")``
then back, as a worker that keeps idle pipelines in host memory does; ``after swap s`` the
first easel image after it (a recompile would show there).

Tokenizers are the tiny demo pipelines' (``easel demo-weights``): byte-level, so Qwen's and
Z-Image's prompts are a few hundred tokens longer than the real tokenizers make them (FLUX
and klein pad to a fixed length anyway): at most a few percent of the transformer's tokens.

``--tiny`` runs the same code on the CPU with the tiny demo configs (float32, no compile): a
check that the benchmark works, not a figure. Usage::

    python bench/gpu_families.py                                  # every family, on CUDA
    python bench/gpu_families.py --families z-image,flux2-klein --runs 2 --warmups 1
    python bench/gpu_families.py --tiny --families z-image --runs 1 --warmups 1
"""

from __future__ import annotations

import argparse
import io
import json
import sys
import time
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
from flux_gpu import (  # the sibling scripts, found through the line above
    Timing,
    add_path_arguments,
    easel_settings,
    environment,
    free,
    on,
    sync,
    timed,
)
from published_configs import PUBLISHED, SCHEDULERS

from easel.backends._diffusers_families import FAMILIES
from easel.backends._diffusers_load import optimize_pipeline
from easel.backends._diffusers_paint import paint, warm_up_job
from easel.backends.base import InputImage, Job
from easel.backends.demo_weights import tiny_pipeline
from easel.backends.diffusers import Options

PROMPT = "a red fox in fresh snow, make its fur blue"


@dataclass(frozen=True)
class Case:
    family: str
    label: str
    steps: int | None = None  # None: the family's published count
    true_cfg: float | None = None  # the pipeline's true_cfg_scale, with " " as negative prompt
    references: int = 0


CASES = (
    Case("flux", "FLUX.1-dev"),
    Case("z-image", "Z-Image-Turbo"),
    Case("flux2-klein", "FLUX.2 klein 4B"),
    Case("flux2-klein", "klein 4B, 1 reference", references=1),
    Case("qwen-image-edit-plus", "Qwen-Image-Edit-2511", true_cfg=4.0, references=1),
    Case("qwen-image-edit-plus", "Edit-2511 Lightning 8", steps=8, true_cfg=1.0, references=1),
    Case("qwen-image-edit-plus", "Edit-2511 Lightning 4", steps=4, true_cfg=1.0, references=1),
)


@dataclass
class Row:
    case: str
    family: str
    path: str
    steps: int
    timing: Timing | None = None
    load_s: float | None = None  # on the family's first case of each path
    swap_s: float | None = None
    after_swap_s: float | None = None
    applied: list[str] = field(default_factory=list)
    error: str | None = None


def build(family: str, tiny: bool, device: str, dtype: torch.dtype) -> Any:
    """The family's pipeline with random weights on ``device``: the tiny demo pipeline's
    tokenizers and processor, every model rebuilt from its published config (``tiny``: from
    the demo's own), the published scheduler."""
    demo = tiny_pipeline(family)
    parts: dict[str, Any] = {
        "scheduler": type(demo.scheduler).from_config(SCHEDULERS[family]),
    }
    torch.manual_seed(0)
    with on(device, dtype):
        for name, config in PUBLISHED[family].items():
            parts[name] = random_model(getattr(demo, name), None if tiny else config)
    pipe = type(demo).from_pipe(demo, dtype=dtype, **parts)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def random_model(like: Any, config: dict[str, Any] | None) -> Any:
    """A model of ``like``'s class with random weights, of ``config`` (``like``'s own when
    None). A transformers config keeps ``like``'s token ids: they are its tokenizer's."""
    cls = type(like)
    if hasattr(cls, "config_class"):  # transformers
        if config is None:
            return cls(like.config)
        ids = {k: v for k, v in like.config.to_dict().items() if k.endswith("token_id")}
        return cls(cls.config_class(**{**config, **ids}))
    return cls.from_config(like.config if config is None else config)


def weights_gib(pipe: Any) -> float:
    modules = [m for m in pipe.components.values() if isinstance(m, torch.nn.Module)]
    return float(sum(p.numel() * p.element_size() for m in modules for p in m.parameters()) / 2**30)


def swap(pipe: Any, device: str) -> tuple[float, float]:
    """Seconds of ``pipe.to("cpu")`` and of the move back to ``device``."""
    sync(device)
    started = time.perf_counter()
    pipe.to("cpu")
    out = time.perf_counter() - started
    started = time.perf_counter()
    pipe.to(device)
    sync(device)
    return out, time.perf_counter() - started


def reference(size: int) -> Image.Image:
    """A reference image of the output's size (noise, so the encoders have work)."""
    pixels = np.random.default_rng(0).integers(0, 256, (size, size, 3), dtype=np.uint8)
    return Image.fromarray(pixels)


def plain_call(pipe: Any, case: Case, size: int, image: Image.Image) -> Callable[[], object]:
    """The pipeline called as diffusers documents it."""
    family = FAMILIES[case.family]
    arguments: dict[str, Any] = {
        "prompt": PROMPT, "width": size, "height": size,
        "num_inference_steps": case.steps or family.steps, "guidance_scale": family.guidance,
        "generator": torch.Generator("cpu").manual_seed(0),
    }  # fmt: skip
    if case.references:
        arguments["image"] = [image] * case.references
    if case.true_cfg is not None:
        arguments |= {"negative_prompt": " ", "true_cfg_scale": case.true_cfg}
    return lambda: pipe(**arguments)


def easel_options(case: Case, size: int, device: str) -> Options:
    dtype = "float32" if device == "cpu" else "bfloat16"
    return Options.model_validate(
        {"pipeline": case.family, "device": device, "dtype": dtype, "steps": case.steps,
         "true_cfg": case.true_cfg, "width": size, "height": size}
    )  # fmt: skip


def easel_call(pipe: Any, case: Case, size: int, image: Image.Image, device: str) -> Any:
    """The diffusers backend's call (``paint``) for a task with the case's references."""
    png = io.BytesIO()
    image.save(png, "PNG")
    references = (InputImage(png.getvalue(), "png", size, size),) * case.references
    job, options = Job("bench", "bench", PROMPT, references), easel_options(case, size, device)
    return lambda: paint(pipe, options, job, None)


def run_family(family: str, args: argparse.Namespace) -> tuple[list[Row], dict[str, float]]:
    """Build the family once; time its cases plain, then optimize and time them easel."""
    dtype = torch.float32 if args.device == "cpu" else torch.bfloat16
    started = time.perf_counter()
    pipe = build(family, args.tiny, args.device, dtype)
    sync(args.device)
    info = {"weights_gib": weights_gib(pipe), "build_s": time.perf_counter() - started}
    out_s, in_s = swap(pipe, args.device)  # the first move in from host memory: the load
    print(f"{family}: {info['weights_gib']:.1f} GiB of weights, built in "
          f"{info['build_s']:.1f} s", flush=True)  # fmt: skip
    cases = [case for case in CASES if case.family == family]
    rows = [] if args.skip_plain else run_path(pipe, "plain", cases, args, (in_s, out_s + in_s))
    rows += run_path(pipe, "easel", cases, args, (in_s, out_s + in_s))
    del pipe
    free(args.device)
    return rows, info


def run_path(
    pipe: Any, path: str, cases: list[Case], args: argparse.Namespace, moves: tuple[float, float]
) -> list[Row]:
    """Every case of one family on one path; ``moves``: the load from host memory and the
    swap, timed on the plain pipeline."""
    load_s, swap_s = moves
    image, applied = reference(args.size), []
    if path == "easel":  # what the worker does at load, after from_pretrained
        try:
            started = time.perf_counter()
            mode, fp8 = easel_settings(args)
            applied = optimize_pipeline(pipe, compile_mode=mode, fp8=fp8)
            options = easel_options(cases[0], args.size, args.device)
            paint(pipe, options, warm_up_job(options), None)
            sync(args.device)
            load_s += time.perf_counter() - started
        except Exception as exc:  # one broken path must not cost the other families
            return [Row(case.label, case.family, path, 0, error=_short(exc)) for case in cases]
    rows = []
    for index, case in enumerate(cases):
        row = Row(case.label, case.family, path, case.steps or FAMILIES[case.family].steps)
        row.applied = applied
        try:
            if path == "plain":
                call = plain_call(pipe, case, args.size, image)
            else:
                call = easel_call(pipe, case, args.size, image, args.device)
            row.timing = timed(call, args.device, args.warmups, args.runs)
            if index == 0:
                row.load_s, row.swap_s = load_s, swap_s
                if path == "easel":  # again, compiled: and the first image after it
                    row.swap_s = sum(swap(pipe, args.device))
                    row.after_swap_s = timed(call, args.device, 0, 1).seconds_mean
        except Exception as exc:
            row.error = _short(exc)
        rows.append(row)
        done = f"{row.timing.seconds_mean:.3f} s/image" if row.timing else ""
        print(f"  {path} {case.label}: {done} {row.error or ''}", flush=True)
    return rows


def _short(exc: Exception) -> str:
    first = str(exc).splitlines()[0] if str(exc) else ""
    return f"{type(exc).__name__}: {first}"[:160]


def report(rows: list[Row], built: dict[str, Any], args: argparse.Namespace) -> None:
    plain = {r.case: r.timing.seconds_mean for r in rows if r.path == "plain" and r.timing}
    mode = "tiny, CPU" if args.tiny else f"{args.device}, bf16"
    print(f"\n{args.size}×{args.size}, batch 1, {mode}, mean of {args.runs} runs after "
          f"{args.warmups} warm-ups")  # fmt: skip
    head = f"{'case':<24}{'path':<7}{'steps':>6}{'s/image':>9}{'min':>8}{'vs plain':>9}"
    print(head + f"{'peak GiB':>9}{'load s':>8}{'swap s':>8}{'after swap s':>13}")
    for r in rows:
        line = f"{r.case:<24}{r.path:<7}{r.steps:>6}"
        if r.timing is not None:
            t, base = r.timing, plain.get(r.case)
            ratio = f"{base / t.seconds_mean:.2f}×" if base else "-"
            line += (f"{t.seconds_mean:>9.3f}{t.seconds_min:>8.3f}{ratio:>9}{t.peak_gib:>9.2f}"
                     f"{_maybe(r.load_s):>8}{_maybe(r.swap_s):>8}{_maybe(r.after_swap_s):>13}"
                     f"  {' '.join(r.applied)}")  # fmt: skip
        print(line + (f"  error: {r.error}" if r.error else ""))
    settings = {"size": args.size, "runs": args.runs, "warmups": args.warmups, "tiny": args.tiny}
    body = {"environment": environment(args.device) | settings, "families": built}
    print("json:", json.dumps(body | {"rows": [asdict(r) for r in rows]}))


def _maybe(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    names = sorted({case.family for case in CASES})
    parser.add_argument(
        "--families", default=",".join(names), help=f"comma-separated, of {', '.join(names)}"
    )
    parser.add_argument("--size", type=int, default=None, help="side (1024; --tiny: 64)")
    add_path_arguments(parser, runs=3)
    parser.add_argument(
        "--tiny", action="store_true", help="the tiny demo configs on the CPU (a smoke run)"
    )
    args = parser.parse_args(argv)
    args.families = [name.strip() for name in args.families.split(",") if name.strip()]
    unknown = set(args.families) - set(names)
    if unknown:
        parser.error(f"unknown families: {', '.join(sorted(unknown))}")
    if args.tiny:  # the same code, small: no GPU, no compile, no fp8
        args.device, args.compile_mode, args.fp8 = "cpu", "none", "off"
    args.size = args.size or (64 if args.tiny else 1024)
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("CUDA is not available; use --tiny for a smoke run on the CPU")
    warnings.filterwarnings("ignore", "invalid value encountered in cast")  # random weights
    rows: list[Row] = []
    built: dict[str, dict[str, float]] = {}
    for family in args.families:
        family_rows, built[family] = run_family(family, args)
        rows += family_rows
    report(rows, built, args)


if __name__ == "__main__":
    main()
