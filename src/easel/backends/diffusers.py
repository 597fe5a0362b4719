"""Backend kind ``diffusers``: open-weight pipelines on this machine's GPU (or CPU).

The ``pipeline`` option names a family of :data:`FAMILIES` (FLUX.1, Kontext, Z-Image, FLUX.2
klein, Qwen-Image-Edit-Plus): its diffusers class, default weights, steps, guidance and how it
takes references and a negative prompt are data there. :meth:`DiffusersBackend.served_by`
names the class, the weights and the LoRA, for the task's record.

One backend runs one pipeline, loaded once per process (by :data:`LOADER`, which shares it
between backends configured alike): ahead of time by :meth:`DiffusersBackend.load` (the
worker calls it at start), or on first use. Its :class:`LoadState` says where it stands.
Every run takes the pipeline from the loader, which makes it resident on its device first:
under a GPU memory budget an idle pipeline may have been parked in CPU memory or unloaded
meanwhile, and the run waits for its swap-in (``resident`` and ``load_seconds`` say whether
one is due and how long the last took). Before loading, a local weights directory that is
missing or holds no saved pipeline already makes the backend unavailable (so an API process,
which never loads, refuses its model too). Loading and inference run in threads, never on the
event loop; one inference runs at a time per pipeline (a thread lock, so a coroutine cancelled
while waiting cannot start a second run beside the first). A load failure is sticky
(``FAILED``): the backend reports itself unavailable with the reason and every task raises
:class:`BackendUnavailable`, so the worker falls back or fails the model's tasks with a refund
instead of reloading tens of gigabytes per task.

What one run does (inputs, seed, progress, cancel) is in :mod:`easel.backends._diffusers_paint`;
where the weights come from and the fast GPU path (:func:`optimize_pipeline`) in
:mod:`easel.backends._diffusers_load`. A cancelled task sets the pipeline's ``_interrupt``
flag (diffusers skips the remaining steps) and raises :class:`JobCancelled`.
``seconds_per_step`` keeps the pace of the last run for ETAs.

On CUDA the pipeline goes through :func:`optimize_pipeline` and one warm-up image at load time,
so ``torch.compile`` pays its cost at worker start, not on the first task. torch, diffusers
and transformers are imported only inside functions (``pip install 'easel[local]'``).
"""

from __future__ import annotations

import asyncio
import importlib.util
import io
import logging
import threading
import time
from pathlib import Path
from typing import Any, Literal

from PIL import Image
from pydantic import BaseModel, ConfigDict, Field, model_validator

from easel.backends._diffusers_families import FAMILIES, Family
from easel.backends._diffusers_load import (
    is_path,
    optimize_pipeline,
    read_pipeline,
    weights_problem,
)
from easel.backends._diffusers_memory import (
    LOADER,
    Abandoned,
    Loaded,
    PipelineLoader,
    SwapFailed,
    free_memory,
)
from easel.backends._diffusers_paint import paint, references_refusal, warm_up_job
from easel.backends.base import (
    BackendFailed,
    BackendUnavailable,
    GeneratedImage,
    ImageBackend,
    Job,
    JobCancelled,
    JobControl,
    LoadState,
)
from easel.domain.errors import first_line
from easel.outbound import OutboundPolicy

INSTALL_HINT = "pip install 'easel[local]'"
_REQUIRED = ("torch", "diffusers", "transformers")
log = logging.getLogger(__name__)


class Options(BaseModel):
    """One pipeline: its family (:data:`FAMILIES`), weights, optional LoRA and run settings.
    Steps, guidance and true-CFG scale default to the family's published values."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    pipeline: Literal["flux", "flux-kontext", "z-image", "flux2-klein", "qwen-image-edit-plus"]
    weights: str | None = Field(default=None, min_length=1)  # hub id or local directory
    # A LoRA loaded into the pipeline and fused (e.g. a Lightning step-distilled variant):
    # a hub id or local directory, the file in it, and its scale.
    lora: str | None = Field(default=None, min_length=1)
    lora_weight_name: str | None = Field(default=None, min_length=1)
    lora_scale: float = Field(default=1.0, gt=0)
    device: Literal["cuda", "cpu"] = "cuda"
    dtype: Literal["bfloat16", "float16", "float32"] = "bfloat16"
    steps: int | None = Field(default=None, ge=1, le=200)
    guidance: float | None = Field(default=None, ge=0)
    true_cfg: float | None = Field(default=None, ge=1)  # families with true CFG
    width: int = Field(default=1024, ge=16, le=4096, multiple_of=16)
    height: int = Field(default=1024, ge=16, le=4096, multiple_of=16)

    @model_validator(mode="after")
    def _size_fits(self) -> Options:
        problem = self.family.size_problem(self.width, self.height)
        if problem:
            raise ValueError(problem)
        return self

    @property
    def family(self) -> Family:
        return FAMILIES[self.pipeline]

    @property
    def weights_source(self) -> str:
        return self.weights or self.family.weights

    @property
    def num_steps(self) -> int:
        return self.steps if self.steps is not None else self.family.steps

    @property
    def guidance_scale(self) -> float:
        return self.guidance if self.guidance is not None else self.family.guidance

    @property
    def true_cfg_scale(self) -> float:
        return self.true_cfg if self.true_cfg is not None else self.family.true_cfg

    def label(self) -> str:
        """The pipeline in logs and metrics: family and weights by name, and the LoRA."""
        lora = f"+{_named(self.lora_weight_name or self.lora)}" if self.lora else ""
        return f"{self.pipeline}:{_named(self.weights_source)}{lora}"

    def served_by(self) -> str:
        """What paints: the pipeline class, the weights and the LoRA, by name only (a local
        directory by its last part, so no path of the machine is shown)."""
        text = f"diffusers {self.family.pipeline_class}, weights {_named(self.weights_source)}"
        if self.lora:
            text += f", LoRA {_named(self.lora_weight_name or self.lora)}"
        return text


def _named(source: str) -> str:
    """A hub id as it is; a local path by its last part."""
    return Path(source).name if is_path(source) else source


def _missing_extra(options: Options) -> str | None:
    """The packages the configured pipeline needs that are not installed, and how to get them.
    torchvision is no part of the extra: it must be the build that matches the torch."""
    needed = [*_REQUIRED, *options.family.packages, *(("peft",) if options.lora else ())]
    missing = [name for name in needed if importlib.util.find_spec(name) is None]
    if not missing:
        return None
    hint = INSTALL_HINT
    if "torchvision" in missing:
        hint += ", and the torchvision built for the installed torch"
    return f"the {options.pipeline} pipeline needs {', '.join(missing)}: {hint}"


class DiffusersBackend(ImageBackend):
    kind = "diffusers"

    def __init__(self, name: str, options: Options, loader: PipelineLoader = LOADER) -> None:
        self.name = name
        self.options = options
        self._loader = loader  # the process's, unless a test brings its own
        self.seconds_per_step: float | None = None  # pace of the last run, for ETAs
        self.optimizations: list[str] = []
        self.load_state = LoadState.NOT_LOADED
        self._loaded: Loaded | None = None  # from the loader, shared with same-weights backends
        self._load_error: str | None = None  # why the load failed (FAILED)
        self._setup_error: str | None = None  # a missing extra, no CUDA
        self._checked = False
        self._load_lock = threading.Lock()

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
        source, weights = self.options.weights_source, weights_problem(self.options.weights_source)
        if weights:
            weights = f"cannot load the {self.options.pipeline} pipeline from {source!r}: {weights}"
        return self._setup_problem() or weights

    def _setup_problem(self) -> str | None:
        """A missing extra or no CUDA: checked once (the packages and the GPU stay put)."""
        if not self._checked:
            problem = _missing_extra(self.options) or self._check_cuda()
            self._checked, self._setup_error = True, problem
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

    @property
    def resident(self) -> bool:
        """Its pipeline is on its device now: a run needs no load or swap-in first."""
        loaded = self._loaded
        return loaded is not None and loaded.resident

    @property
    def load_seconds(self) -> float | None:
        """How long its pipeline's last load or swap-in took; None before any."""
        loaded = self._loaded
        return None if loaded is None else loaded.load_seconds

    async def close(self) -> None:
        """Let go of the pipeline (freed when no other backend uses it; a later task would
        load it again)."""
        loaded, self._loaded = self._loaded, None
        if self.load_state is LoadState.LOADED:
            self.load_state = LoadState.NOT_LOADED
        if loaded is None:
            return
        pipe = self._loader.release(self._key)
        if pipe is not None:
            del pipe, loaded
            free_memory(self.options.device)

    def served_by(self, provider_model: str | None) -> str:
        del provider_model  # the backend runs its own pipeline, whatever the model table says
        return self.options.served_by()

    @property
    def _key(self) -> tuple[object, ...]:
        """What the pipeline is built from: backends that agree share it (the loader)."""
        o = self.options
        return (
            o.pipeline,
            o.weights_source,
            o.lora,
            o.lora_weight_name,
            o.lora_scale,
            o.device,
            o.dtype,
        )

    def _ensure_loaded(self) -> Loaded:
        with self._load_lock:
            if self.load_state is LoadState.LOADED and self._loaded is not None:
                return self._loaded
            if self.load_state is LoadState.FAILED:
                raise BackendUnavailable(self._load_error or "the pipeline did not load")
            reason = self._setup_problem()
            if reason is None:
                self.load_state = LoadState.LOADING
                reason = self._load_now()
            if reason is not None or self._loaded is None:  # sticky: no reload per task
                self._load_error, self.load_state = reason, LoadState.FAILED
                raise BackendUnavailable(reason or "the pipeline did not load")
            self.load_state = LoadState.LOADED
            return self._loaded

    def _load_now(self) -> str | None:
        """Load into ``_loaded``; None on success, else why not, in a sentence."""
        options, started = self.options, time.perf_counter()
        try:
            self._loaded = self._loader.acquire(
                self._key,
                options.label(),
                options.device,
                lambda: read_pipeline(options),
                self._prepare,
            )
        except Exception as exc:
            reason = first_line(exc, named=False)
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
                f"{options.weights_source!r}: {reason.rstrip('.')}"
            )
        applied = ", ".join(self.optimizations) or "plain"
        seconds = time.perf_counter() - started
        log.info("%s: %s ready in %.1f s (%s)", self.name, options.pipeline, seconds, applied)
        return None

    def _prepare(self, pipe: Any) -> Any:
        """The pipeline just put on its device; on CUDA optimized, with one image painted
        so compile happens now (again after each reload from disk).

        If the optimized path fails, log it and serve the plain pipeline instead.
        """
        if self.options.device != "cuda":
            return pipe
        try:
            self.optimizations = optimize_pipeline(pipe)
            self._paint(pipe, warm_up_job(self.options), None)
            return pipe
        except Exception:
            log.exception("%s: optimized pipeline failed; serving plain diffusers", self.name)
        self.optimizations, pipe = [], None  # traceback gone too: free the GPU, then reload
        import torch

        torch._dynamo.reset()
        free_memory(self.options.device)
        pipe = read_pipeline(self.options)
        pipe.to(self.options.device)
        return pipe

    def _generate(self, job: Job, control: JobControl) -> GeneratedImage:
        # A task this family cannot paint goes to the model's next backend at once, without
        # swapping this pipeline into GPU memory first (a text task on an editing model).
        refusal = references_refusal(self.options.family, len(job.images))
        if refusal:
            raise BackendUnavailable(refusal)
        loaded = self._ensure_loaded()
        try:
            # one run at a time per pipeline, whichever backend asks; resident first
            with self._loader.running(loaded, lambda: control.cancelled) as pipe:
                try:
                    image = self._paint(pipe, job, control)
                except (JobCancelled, BackendUnavailable):
                    raise
                except Exception as exc:
                    raise _translate(exc, self.name) from exc
        except Abandoned:
            raise JobCancelled(job.task_id) from None
        except SwapFailed as exc:
            log.error("%s: could not bring its pipeline back: %s", self.name, exc)
            raise BackendUnavailable(
                f"diffusers backend {self.name!r} could not bring its pipeline back into "
                f"memory: {first_line(exc, named=False)}"
            ) from exc
        out = io.BytesIO()
        image.save(out, format="PNG")
        return GeneratedImage(data=out.getvalue(), format="png")

    def _paint(self, pipe: Any, job: Job, control: JobControl | None) -> Image.Image:
        """One pipeline call (:func:`paint`); keeps its pace for ETAs."""
        image, pace = paint(pipe, self.options, job, control)
        if pace is not None:
            self.seconds_per_step = pace
        return image


def _translate(exc: Exception, name: str) -> Exception:
    """Out of GPU memory may succeed elsewhere (retryable); anything else fails the run."""
    if "out of memory" in str(exc).lower():
        return BackendUnavailable(f"diffusers backend {name!r} ran out of memory: {exc}")
    return BackendFailed(f"diffusers backend {name!r} failed: {type(exc).__name__}: {exc}")


def create(name: str, options: Options, outbound: OutboundPolicy) -> DiffusersBackend:
    del outbound  # runs locally: opens no connection
    return DiffusersBackend(name, options)
