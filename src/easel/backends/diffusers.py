"""Backend kind ``diffusers``: FLUX.1-dev and FLUX.1-Kontext-dev on this machine's GPU (or CPU).

One backend holds one pipeline, loaded once per process and kept resident: ahead of time by
:meth:`DiffusersBackend.load` (the worker calls it at start), or on first use. Its
:class:`LoadState` says where it stands. Before loading, a local weights directory that is
missing or holds no saved pipeline already makes the backend unavailable (so an API process,
which never loads, refuses its model too). Loading and inference run in threads, never on the
event loop; one inference runs at a time per pipeline (a thread lock, so a coroutine cancelled
while waiting cannot start a second run beside the first). A load failure is sticky
(``FAILED``): the backend reports itself unavailable with the reason and every task raises
:class:`BackendUnavailable`, so the worker falls back or fails the model's tasks with a refund
instead of reloading tens of gigabytes per task.

Inputs. ``flux`` is text to image: reference images are ignored (the catalog sends editing
models elsewhere). ``flux-kontext`` edits: Kontext-dev takes ONE conditioning image, so
several references are scaled to a common height and concatenated left to right in
``image[N]`` order (the prompt keeps its ``image 1``/``image 2`` words, which now mean left and
right). The reference (or that strip) is resized, aspect kept, to the output's pixel area and
passed with ``max_area=width*height`` and ``_auto_resize=False``: the configured size is
honoured and a small configuration never pays for a one-megapixel reference.

Progress comes from ``callback_on_step_end``; a cancelled task sets the pipeline's
``_interrupt`` flag (diffusers skips the remaining steps) and raises :class:`JobCancelled`.
The seed derives from the task id, so a re-run of an attempt paints the same image.
``seconds_per_step`` keeps the pace of the last run for ETAs.

On CUDA the pipeline goes through :func:`optimize_pipeline` and one warm-up image at load time,
so ``torch.compile`` pays its cost at worker start, not on the first task. torch, diffusers
and transformers are imported only inside functions (``pip install 'easel[local]'``).
"""

from __future__ import annotations

import asyncio
import hashlib
import importlib.util
import io
import logging
import os
import threading
import time
from pathlib import Path
from typing import Any, Literal

from PIL import Image
from pydantic import BaseModel, ConfigDict, Field

from easel.backends.base import (
    BackendFailed,
    BackendUnavailable,
    GeneratedImage,
    InputImage,
    Job,
    JobCancelled,
    JobControl,
    LoadState,
)
from easel.outbound import OutboundPolicy

INSTALL_HINT = "pip install 'easel[local]'"
_REQUIRED = ("torch", "diffusers", "transformers")
_PIPELINES = {"flux": "FluxPipeline", "flux-kontext": "FluxKontextPipeline"}
_DEFAULT_WEIGHTS = {
    "flux": "black-forest-labs/FLUX.1-dev",
    "flux-kontext": "black-forest-labs/FLUX.1-Kontext-dev",
}
_DEFAULT_GUIDANCE = {"flux": 3.5, "flux-kontext": 2.5}
log = logging.getLogger(__name__)


class Options(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    pipeline: Literal["flux", "flux-kontext"]
    weights: str | None = Field(default=None, min_length=1)  # hub id or local directory
    device: Literal["cuda", "cpu"] = "cuda"
    dtype: Literal["bfloat16", "float16", "float32"] = "bfloat16"
    steps: int = Field(default=28, ge=1, le=200)
    guidance: float | None = Field(default=None, ge=0)  # 3.5 for flux, 2.5 for flux-kontext
    width: int = Field(default=1024, ge=16, le=4096, multiple_of=16)
    height: int = Field(default=1024, ge=16, le=4096, multiple_of=16)

    @property
    def weights_source(self) -> str:
        return self.weights or _DEFAULT_WEIGHTS[self.pipeline]

    @property
    def guidance_scale(self) -> float:
        return self.guidance if self.guidance is not None else _DEFAULT_GUIDANCE[self.pipeline]


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


def _missing_extra() -> str | None:
    missing = [name for name in _REQUIRED if importlib.util.find_spec(name) is None]
    if not missing:
        return None
    return f"the diffusers backend needs {', '.join(missing)}: {INSTALL_HINT}"


def _is_path(source: str) -> bool:
    """A local path rather than a hub id (``owner/name``)."""
    return Path(source).expanduser().exists() or source.startswith(("/", ".", "~"))


def _weights_problem(source: str) -> str | None:
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
    problem = _weights_problem(source)
    if problem:
        raise FileNotFoundError(problem)
    return str(Path(source).expanduser()), True


def _load(options: Options) -> Any:
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


def reference_canvas(images: tuple[InputImage, ...], area: int, multiple: int) -> Image.Image:
    """One Kontext reference: the images side by side, scaled to ``area`` pixels, aspect kept.

    Sides are multiples of ``multiple`` (VAE scale × 2: 16 for FLUX), at least one each.
    """
    decoded = [Image.open(io.BytesIO(image.data)).convert("RGB") for image in images]
    tall = max(image.height for image in decoded)
    scaled = [
        image.resize((max(1, round(image.width * tall / image.height)), tall)) for image in decoded
    ]
    strip = Image.new("RGB", (sum(image.width for image in scaled), tall))
    left = 0
    for image in scaled:
        strip.paste(image, (left, 0))
        left += image.width
    return strip.resize(_fit(strip.width / strip.height, area, multiple), Image.Resampling.LANCZOS)


def _fit(ratio: float, area: int, multiple: int) -> tuple[int, int]:
    """The ``(width, height)`` nearest ``ratio``: multiples of ``multiple``, at most ``area``."""
    if ratio < 1:
        height, width = _fit(1 / ratio, area, multiple)
        return width, height
    height = max(multiple, round((area / ratio) ** 0.5 / multiple) * multiple)
    width = min(round(height * ratio / multiple), area // height // multiple) * multiple
    return max(multiple, width), height


def task_seed(task_id: str) -> int:
    """A 63-bit seed from the task id: the same task paints the same image on a re-run."""
    return int.from_bytes(hashlib.sha256(task_id.encode()).digest()[:8], "big") >> 1


class DiffusersBackend:
    kind = "diffusers"

    def __init__(self, name: str, options: Options) -> None:
        self.name = name
        self.options = options
        self.seconds_per_step: float | None = None  # pace of the last run, for ETAs
        self.optimizations: list[str] = []
        self.load_state = LoadState.NOT_LOADED
        self._pipe: Any = None
        self._load_error: str | None = None  # why the load failed (FAILED)
        self._setup_error: str | None = None  # a missing extra, no CUDA
        self._checked = False
        self._load_lock = threading.Lock()
        self._run_lock = threading.Lock()

    def unavailable_reason(self) -> str | None:
        """Missing extra, no CUDA for ``device = "cuda"``, the load failure, or (before the
        load) a weights directory that is not there; None if usable.

        The CUDA check imports torch (seconds, once); :meth:`load` does it in a thread.
        Once loaded, the weights on disk no longer matter: the pipeline is in memory.
        """
        if self.load_state is LoadState.FAILED:
            return self._load_error
        if self.load_state is not LoadState.NOT_LOADED:
            return None
        source, weights = self.options.weights_source, _weights_problem(self.options.weights_source)
        if weights:
            weights = f"cannot load the {self.options.pipeline} pipeline from {source!r}: {weights}"
        return self._setup_problem() or weights

    def _setup_problem(self) -> str | None:
        """A missing extra or no CUDA: checked once (the packages and the GPU stay put)."""
        if not self._checked:
            self._checked, self._setup_error = True, _missing_extra() or self._check_cuda()
        return self._setup_error

    def _check_cuda(self) -> str | None:
        if self.options.device != "cuda":
            return None
        import torch

        if not torch.cuda.is_available():
            return (
                f"device 'cuda' is set but CUDA is not available here (torch "
                f"{torch.__version__}); set device = 'cpu' or run it on a GPU machine"
            )
        return None

    async def load(self) -> None:
        """Load (and on CUDA optimize and compile) the pipeline now, in a thread."""
        await asyncio.to_thread(self._ensure_loaded)

    async def generate(self, job: Job, control: JobControl) -> GeneratedImage:
        return await asyncio.to_thread(self._generate, job, control)

    async def close(self) -> None:
        """Drop the pipeline (a later task would load it again)."""
        pipe, self._pipe = self._pipe, None
        if self.load_state is LoadState.LOADED:
            self.load_state = LoadState.NOT_LOADED
        if pipe is not None and self.options.device == "cuda":
            del pipe
            import torch

            torch.cuda.empty_cache()

    def _ensure_loaded(self) -> Any:
        with self._load_lock:
            if self.load_state is LoadState.LOADED:
                return self._pipe
            if self.load_state is LoadState.FAILED:
                raise BackendUnavailable(self._load_error or "the pipeline did not load")
            reason = self._setup_problem()
            if reason is None:
                self.load_state = LoadState.LOADING
                reason = self._load_now()
            if reason is not None:  # sticky: no reload of tens of gigabytes per task
                self._load_error, self.load_state = reason, LoadState.FAILED
                raise BackendUnavailable(reason)
            self.load_state = LoadState.LOADED
            return self._pipe

    def _load_now(self) -> str | None:
        """Load into ``_pipe``; None on success, else why not, in a sentence."""
        options, started = self.options, time.perf_counter()
        try:
            self._pipe = self._prepare()
        except Exception as exc:
            first_line = (str(exc).strip() or type(exc).__name__).splitlines()[0][:200]
            log.error(
                "%s: could not load %s from %r (%s: %s). Check 'weights': a hub id (gated repos "
                "need HF_TOKEN) or a directory written by save_pretrained or 'easel demo-weights'",
                self.name,
                options.pipeline,
                options.weights_source,
                type(exc).__name__,
                exc,
            )
            return (
                f"could not load the {options.pipeline} pipeline from "
                f"{options.weights_source!r}: {first_line.rstrip('.')}"
            )
        applied = ", ".join(self.optimizations) or "plain"
        seconds = time.perf_counter() - started
        log.info("%s: %s ready in %.1f s (%s)", self.name, options.pipeline, seconds, applied)
        return None

    def _prepare(self) -> Any:
        """Load; on CUDA also optimize and paint one image so compile happens now.

        If the optimized path fails, log it and serve the plain pipeline instead.
        """
        pipe = _load(self.options)
        if self.options.device != "cuda":
            return pipe
        try:
            self.optimizations = optimize_pipeline(pipe)
            self._paint(pipe, self._warm_up_job(), None)
            return pipe
        except Exception:
            log.exception("%s: optimized pipeline failed; serving plain diffusers", self.name)
        self.optimizations, pipe = [], None  # traceback gone too: free the GPU, then reload
        import torch

        torch._dynamo.reset()
        torch.cuda.empty_cache()
        return _load(self.options)

    def _warm_up_job(self) -> Job:
        png = io.BytesIO()
        Image.new("RGB", (self.options.width, self.options.height), "gray").save(png, "PNG")
        reference = InputImage(png.getvalue(), "png", self.options.width, self.options.height)
        images = (reference,) if self.options.pipeline == "flux-kontext" else ()
        return Job("warm-up", "warm-up", "a gray square", images)

    def _generate(self, job: Job, control: JobControl) -> GeneratedImage:
        pipe = self._ensure_loaded()
        with self._run_lock:
            if control.cancelled:
                raise JobCancelled(job.task_id)
            try:
                image = self._paint(pipe, job, control)
            except (JobCancelled, BackendUnavailable):
                raise
            except Exception as exc:
                raise _translate(exc, self.name) from exc
        out = io.BytesIO()
        image.save(out, format="PNG")
        return GeneratedImage(data=out.getvalue(), format="png")

    def _paint(self, pipe: Any, job: Job, control: JobControl | None) -> Image.Image:
        """One pipeline call with progress, cancel and pacing hooks."""
        import torch

        options, steps = self.options, self.options.steps
        stamps = [time.perf_counter()]

        def on_step(pipeline: Any, step: int, timestep: Any, tensors: dict[str, Any]) -> Any:
            stamps.append(time.perf_counter())
            if control is not None:
                control.progress((step + 1) / steps)
                if control.cancelled:
                    pipeline._interrupt = True
            return tensors

        arguments: dict[str, Any] = {
            "prompt": job.prompt,
            "width": options.width,
            "height": options.height,
            "num_inference_steps": steps,
            "guidance_scale": options.guidance_scale,
            "generator": torch.Generator("cpu").manual_seed(task_seed(job.task_id)),
            "callback_on_step_end": on_step,
        }
        if options.pipeline == "flux-kontext":
            arguments |= self._kontext_arguments(pipe, job)
        image = pipe(**arguments).images[0]
        if getattr(pipe, "_interrupt", False):
            raise JobCancelled(job.task_id)
        if len(stamps) > 2:  # step 1 also pays for the text encoders; pace from step 2 on
            self.seconds_per_step = (stamps[-1] - stamps[1]) / (len(stamps) - 2)
        return image  # type: ignore[no-any-return]

    def _kontext_arguments(self, pipe: Any, job: Job) -> dict[str, Any]:
        area = self.options.width * self.options.height
        arguments: dict[str, Any] = {"max_area": area, "_auto_resize": False}
        if job.images:
            multiple = pipe.vae_scale_factor * 2
            arguments["image"] = reference_canvas(job.images, area, multiple)
        return arguments


def _translate(exc: Exception, name: str) -> Exception:
    """Out of GPU memory may succeed elsewhere (retryable); anything else fails the run."""
    if "out of memory" in str(exc).lower():
        return BackendUnavailable(f"diffusers backend {name!r} ran out of memory: {exc}")
    return BackendFailed(f"diffusers backend {name!r} failed: {type(exc).__name__}: {exc}")


def create(name: str, options: Options, outbound: OutboundPolicy) -> DiffusersBackend:
    del outbound  # runs locally: opens no connection
    return DiffusersBackend(name, options)
