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
from typing import Any, Literal

from PIL import Image
from pydantic import BaseModel, ConfigDict, Field

from easel.backends._diffusers_load import load_pipeline, optimize_pipeline, weights_problem
from easel.backends._diffusers_paint import paint, warm_up_job
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


def _missing_extra() -> str | None:
    missing = [name for name in _REQUIRED if importlib.util.find_spec(name) is None]
    if not missing:
        return None
    return f"the diffusers backend needs {', '.join(missing)}: {INSTALL_HINT}"


class DiffusersBackend(ImageBackend):
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
        source, weights = self.options.weights_source, weights_problem(self.options.weights_source)
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

    def _prepare(self) -> Any:
        """Load; on CUDA also optimize and paint one image so compile happens now.

        If the optimized path fails, log it and serve the plain pipeline instead.
        """
        pipe = load_pipeline(self.options)
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
        torch.cuda.empty_cache()
        return load_pipeline(self.options)

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
