"""The process's ``diffusers`` pipelines and the device memory they hold: :data:`LOADER`.

Backends get their pipeline here, by what it is built from: two backends configured alike
share one copy (and its run lock). Every run goes through :meth:`PipelineLoader.running`,
which makes the pipeline *resident* (on its device) first. Without a budget (the default)
a pipeline, once loaded, stays resident. With one (``gpu_memory_budget_gb``), the pipelines
resident on a device may hold at most that many bytes of parameters and buffers (measured,
:func:`pipeline_bytes`): before a pipeline comes back, the least recently used resident
pipelines of its device that are not running are evicted, to CPU memory (``gpu_offload =
"cpu"``: the next swap-in is a copy back) or freed (``"unload"``: the next run reads the
weights from disk again). A pipeline holding its run lock is never evicted: a run that needs
its room waits until that run ends (the task waits for the swap). A pipeline larger than the
whole budget runs alone. Loads and swaps are timed (:mod:`easel.backends.pipeline_metrics`).

Runs happen in worker threads: one condition guards the bookkeeping, and the slow parts
(reading, moving, freeing) run outside it, with the pipelines they move marked ``moving``.
"""

from __future__ import annotations

import enum
import gc
import logging
import threading
import time
from collections.abc import Callable, Hashable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Literal

from easel.backends.pipeline_metrics import metrics

log = logging.getLogger(__name__)
Offload = Literal["cpu", "unload"]
GB = 10**9
_WAIT_S = 0.5  # how often a run waiting for room looks at its task's cancel flag
# One pipeline is read or prepared at a time in the process: from_pretrained is not
# thread-safe (accelerate's empty-weights init patches torch.nn.Module process-wide: a
# second thread's modules get meta tensors), nor is torch.compile's first run.
_BUILDING = threading.Lock()


class Place(enum.Enum):
    """Where a pipeline is."""

    DEVICE = "device"  # resident: ready to run
    CPU = "cpu"  # parked in CPU memory (gpu_offload = "cpu")
    NONE = "none"  # not in memory: read from disk on its next run (not loaded yet, unloaded)


class Abandoned(Exception):
    """The run's task was cancelled before its pipeline was resident."""


class SwapFailed(Exception):
    """The pipeline could not be made resident (read from disk, moved to its device)."""


@dataclass(slots=True, eq=False)
class Loaded:
    """One pipeline: how to build it, where it is, who uses it, and its run lock."""

    key: Hashable
    label: str  # its name in logs and metrics
    device: str
    read: Callable[[], Any]  # the pipeline from its weights, in CPU memory
    prepare: Callable[[Any], Any]  # on its device after each read (optimize, warm up)
    pipe: Any = None
    place: Place = Place.NONE
    size: int = 0  # bytes of parameters and buffers, measured once read
    users: int = 0
    moving: bool = False  # being swapped in or out (counted as resident meanwhile)
    wanted: int = 0  # runs waiting to evict it: its next run waits for them
    last_used: int = 0
    load_seconds: float | None = None  # the last load or swap-in
    run_lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def resident(self) -> bool:
        return self.place is Place.DEVICE and not self.moving


def pipeline_bytes(pipe: Any) -> int:
    """Bytes of the parameters and buffers of the pipeline's torch modules (a tensor
    shared by two modules counted once; a quantized tensor by the tensors it holds)."""
    import torch

    seen: set[int] = set()
    total = 0
    for component in pipe.components.values():
        if not isinstance(component, torch.nn.Module):
            continue
        for tensor in (*component.parameters(), *component.buffers()):
            if id(tensor) not in seen:
                seen.add(id(tensor))
                total += _tensor_bytes(tensor)
    return total


def _tensor_bytes(tensor: Any) -> int:
    from torch.utils._python_dispatch import is_traceable_wrapper_subclass

    if is_traceable_wrapper_subclass(tensor):  # torchao's fp8: its data and its scales
        names, _ = tensor.__tensor_flatten__()
        return sum(_tensor_bytes(getattr(tensor, name)) for name in names)
    return int(tensor.numel() * tensor.element_size())


def _take(loaded: Loaded) -> Any:
    """The pipeline, no longer referenced by ``loaded``."""
    pipe, loaded.pipe = loaded.pipe, None
    return pipe


def free_memory(device: str) -> None:
    """Let go of what dropped pipelines held (cycles included) and, on CUDA, of the cached
    blocks, so the memory is there for the next pipeline."""
    gc.collect()
    if device.startswith("cuda"):
        import torch

        torch.cuda.empty_cache()


class PipelineLoader:
    """Every diffusers pipeline of this process, by what it is built from, within an
    optional memory budget per device (see the module's text)."""

    def __init__(self, budget_bytes: int | None = None, offload: Offload = "cpu") -> None:
        self.budget_bytes, self.offload = budget_bytes, offload
        self._loaded: dict[Hashable, Loaded] = {}
        self._cond = threading.Condition()
        self._tick = 0

    def configure(self, budget_gb: float | None, offload: Offload) -> None:
        """Set the budget (GB of 10⁹ bytes; None: none) and where evicted pipelines go; it
        applies from the next swap on."""
        with self._cond:
            self.budget_bytes = None if budget_gb is None else int(budget_gb * GB)
            self.offload = offload
            self._cond.notify_all()

    def acquire(
        self,
        key: Hashable,
        label: str,
        device: str,
        read: Callable[[], Any],
        prepare: Callable[[Any], Any],
    ) -> Loaded:
        """The pipeline for ``key``, one user more: loaded (in this thread, and so resident)
        unless some user has loaded it already, wherever it is now. Raises what the load
        raised, counting no user."""
        with self._cond:
            loaded = self._loaded.get(key)
            if loaded is None:
                loaded = self._loaded[key] = Loaded(key, label, device, read, prepare)
            loaded.users += 1
            if loaded.load_seconds is not None:
                return loaded
        try:
            with self.running(loaded, lambda: False, raw=True):
                pass
        except BaseException:
            self.release(key)
            raise
        return loaded

    def release(self, key: Hashable) -> Any:
        """One user fewer; the pipeline when that was the last (to free), else None."""
        with self._cond:
            loaded = self._loaded.get(key)
            if loaded is None:
                return None
            loaded.users -= 1
            if loaded.users > 0:
                return None
            del self._loaded[key]
            pipe, loaded.pipe, loaded.place = loaded.pipe, None, Place.NONE
            self._cond.notify_all()
        metrics().set_resident(loaded.label, 0)
        return pipe

    @contextmanager
    def running(
        self, loaded: Loaded, cancelled: Callable[[], bool], *, raw: bool = False
    ) -> Iterator[Any]:
        """Hold the pipeline's run lock with the pipeline resident on its device; yields the
        pipeline. Raises :class:`Abandoned` when ``cancelled()`` turns true before it is
        resident, :class:`SwapFailed` when it cannot be made resident (``raw``: the
        underlying error, for the first load)."""
        try:
            self._lock_run(loaded, cancelled)
            try:
                if cancelled():
                    raise Abandoned
                self._make_resident(loaded, cancelled)
            except BaseException as exc:
                loaded.run_lock.release()
                if raw or not isinstance(exc, Exception) or isinstance(exc, Abandoned):
                    raise
                raise SwapFailed(f"{type(exc).__name__}: {exc}") from exc
            try:
                yield loaded.pipe
            finally:
                with self._cond:
                    self._tick += 1
                    loaded.last_used = self._tick
                loaded.run_lock.release()
        finally:
            with self._cond:  # a run waiting for room may evict it now
                self._cond.notify_all()

    def _lock_run(self, loaded: Loaded, cancelled: Callable[[], bool]) -> None:
        """Take the run lock; while a run waits to evict this pipeline, let it go first
        (so a busy pipeline cannot keep another waiting for ever)."""
        while True:
            loaded.run_lock.acquire()
            with self._cond:
                if not loaded.wanted:
                    return
            loaded.run_lock.release()
            with self._cond:
                self._cond.notify_all()
                while loaded.wanted:
                    if cancelled():
                        raise Abandoned
                    self._cond.wait(_WAIT_S)

    def _make_resident(self, loaded: Loaded, cancelled: Callable[[], bool]) -> None:
        """With ``loaded.run_lock`` held: read it (if not in memory), make room, move it."""
        with self._cond:
            self._tick += 1
            loaded.last_used = self._tick
            if loaded.place is Place.DEVICE:
                return
        prior, started = loaded.place, time.perf_counter()
        kind = "swap_in" if prior is Place.CPU else "load"
        try:
            if loaded.pipe is None:
                with _BUILDING:
                    loaded.pipe = loaded.read()
                loaded.size = pipeline_bytes(loaded.pipe)
            self._evict(self._make_room(loaded, cancelled))
            loaded.pipe.to(loaded.device)
            if kind == "load":  # handed over: prepare may drop it (and read it again)
                with _BUILDING:
                    loaded.pipe = loaded.prepare(_take(loaded))
                loaded.size = pipeline_bytes(loaded.pipe)  # fp8 halves it
        except BaseException:
            self._undo(loaded, prior)
            raise
        seconds = time.perf_counter() - started
        with self._cond:
            loaded.place, loaded.moving, loaded.load_seconds = Place.DEVICE, False, seconds
            self._cond.notify_all()
        metrics().observe(loaded.label, kind, seconds)
        metrics().set_resident(loaded.label, loaded.size)
        log.info(
            "pipeline %s: %s in %.2f s (%.2f GB on %s)",
            loaded.label,
            "loaded" if kind == "load" else "swapped in",
            seconds,
            loaded.size / GB,
            loaded.device,
        )

    def _undo(self, loaded: Loaded, prior: Place) -> None:
        """A swap-in that failed or was abandoned: a parked pipeline goes back to CPU
        memory (if it can), anything else is dropped and read again next time."""
        place = Place.NONE
        if prior is Place.CPU and loaded.pipe is not None:
            try:
                loaded.pipe.to("cpu")
                place = Place.CPU
            except Exception:
                log.exception("pipeline %s: could not move it back to the CPU", loaded.label)
        with self._cond:
            if place is Place.NONE:
                loaded.pipe = None
            loaded.place, loaded.moving = place, False
            self._cond.notify_all()
        free_memory(loaded.device)

    def _make_room(self, loaded: Loaded, cancelled: Callable[[], bool]) -> list[Loaded]:
        """Mark ``loaded`` moving and pick the pipelines to evict for it (their run locks
        taken), waiting while the room is held by running pipelines (marked ``wanted``, so
        that their next runs wait for this one)."""
        wanted: list[Loaded] = []
        with self._cond:
            try:
                while True:
                    for other in wanted:
                        other.wanted -= 1
                    victims, wanted = self._victims(loaded)
                    if victims is not None:
                        loaded.moving = True
                        for victim in victims:
                            victim.moving = True
                        return victims
                    for other in wanted:
                        other.wanted += 1
                    if cancelled():
                        raise Abandoned
                    self._cond.wait(_WAIT_S)
            finally:
                for other in wanted:
                    other.wanted -= 1
                self._cond.notify_all()

    def _victims(self, loaded: Loaded) -> tuple[list[Loaded] | None, list[Loaded]]:
        """The least recently used pipelines to evict so that ``loaded`` fits (their run
        locks taken), or None and the running pipelines that hold the room."""
        budget = self.budget_bytes
        if budget is None:
            return [], []
        others = [
            other
            for other in self._loaded.values()
            if other is not loaded
            and other.device == loaded.device
            and (other.place is Place.DEVICE or other.moving)
        ]
        room = max(budget - loaded.size, 0)  # larger than the budget: it runs alone
        used = sum(other.size for other in others)
        victims: list[Loaded] = []
        running: list[Loaded] = []
        for other in sorted(others, key=lambda other: other.last_used):
            if used <= room:
                break
            if other.moving:
                continue
            if not other.run_lock.acquire(blocking=False):
                running.append(other)
                continue
            victims.append(other)
            used -= other.size
        if used > room:
            for victim in victims:
                victim.run_lock.release()
            return None, running
        if loaded.size > budget:
            log.warning(
                "pipeline %s holds %.2f GB, more than the whole budget of %.2f GB: it runs "
                "alone on %s",
                loaded.label,
                loaded.size / GB,
                budget / GB,
                loaded.device,
            )
        return victims, []

    def _evict(self, victims: list[Loaded]) -> None:
        """Park or free each victim (their run locks held, released here)."""
        for victim in victims:
            started, place = time.perf_counter(), Place.NONE
            try:
                if self.offload == "cpu":
                    victim.pipe.to("cpu")
                    place = Place.CPU
            except Exception:
                log.exception("pipeline %s: could not move it to the CPU; freed", victim.label)
            finally:
                with self._cond:
                    if place is Place.NONE:
                        victim.pipe = None
                    victim.place, victim.moving = place, False
                    self._cond.notify_all()
                victim.run_lock.release()
            free_memory(victim.device)
            seconds = time.perf_counter() - started
            metrics().observe(victim.label, "swap_out", seconds)
            metrics().set_resident(victim.label, 0)
            where = "parked in CPU memory" if place is Place.CPU else "unloaded"
            log.info("pipeline %s: %s in %.2f s", victim.label, where, seconds)


LOADER = PipelineLoader()
"""The process's one loader: :func:`easel.runtime.open_runtime` sets its budget."""
