"""The worker's models: loading their backends at start, failing the queue of a model none of
them can run, what it advertises with each heartbeat (which models it has resident and how
long swapping each in took), and the claim that prefers resident models without starving
the others.

A model is *resident* here when the first ready backend of its chain is
(:attr:`easel.backends.base.ImageBackend.resident`): a local pipeline in GPU memory, or any
remote provider. A task of a model that is not must first wait for its pipeline to be swapped
in, which the claim avoids while it may (:func:`claim_next`) and the ETA counts
(:func:`easel.domain.eta.swap_wait`).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence

from easel.backends.base import ImageBackend, LoadState
from easel.backends.fallback import Router
from easel.domain.tasks import Task
from easel.store.ports import QueuePort

log = logging.getLogger("easel.worker")


async def warm_up(router: Router, wanted: Sequence[str]) -> None:
    """Load local pipelines (and compile them) before taking tasks, not on the first one.
    A backend that fails to load is ``LoadState.FAILED`` from then on: unavailable, and the
    tasks of a model left with no backend are failed by :func:`fail_unloadable`."""
    names = {leg.backend.name for m in wanted for leg in router.chain(m)}
    for name in sorted(names):
        backend = router.backends[name]
        if backend.load_state is not LoadState.NOT_LOADED:
            continue
        log.info("loading backend %s", name)
        try:
            await backend.load()
        except Exception as exc:  # FAILED now; one backend must not stop the worker
            log.error("backend %s did not load: %s", name, exc)


async def fail_unloadable(router: Router, queue: QueuePort, wanted: Sequence[str]) -> None:
    """End, with a refund, the queued tasks of each model this worker was to take whose
    every backend failed to load here, unless a live worker elsewhere takes the model:
    nothing would ever run them, and the client should hear why now, not at the queue
    timeout an hour later."""
    reasons = {m: r for m in wanted if (r := router.load_failure(m)) is not None}
    if not reasons:
        return
    live = await queue.live_models()
    for model, reason in reasons.items():
        if model in live:
            continue
        message = f"model_version {model!r} cannot run on this server: {reason}"
        failed = await queue.fail_queued(model, message)
        if failed:
            log.warning("failed %d queued task(s) of %s: %s", failed, model, reason)


def _first_ready(router: Router, model: str) -> ImageBackend | None:
    ready = router.ready_backends(model)
    return router.backends[ready[0]] if ready else None


def advert(router: Router, models: Sequence[str]) -> tuple[list[str], dict[str, float]]:
    """Which of ``models`` are resident here, and how long swapping each in took (for
    those whose first ready backend has loaded: ``load_seconds``)."""
    resident, load_s = [], {}
    for model in models:
        backend = _first_ready(router, model)
        if backend is None:
            continue
        if backend.resident:
            resident.append(model)
        if backend.load_seconds is not None:
            load_s[model] = backend.load_seconds
    return resident, load_s


async def claim_next(
    queue: QueuePort,
    worker_id: str,
    models: Sequence[str],
    resident: Sequence[str],
    *,
    lease_s: float,
    patience_s: float,
) -> Task | None:
    """Claim the next task of ``models``, preferring the ``resident`` ones.

    While the oldest queued task of the other models has waited less than ``patience_s``,
    a task of a resident model is taken first (no swap); with none queued, or once that task
    has waited longer (no starvation), the plain claim order over all ``models`` decides.
    ``patience_s`` 0, or every model resident (remote backends: the common case), is the
    plain order at no extra cost; otherwise one cheap read more per claim
    (:meth:`QueuePort.oldest_queued`).
    """
    swapping = [m for m in models if m not in resident]
    if patience_s > 0 and swapping and len(swapping) < len(models):
        oldest = await queue.oldest_queued(swapping)
        if oldest is not None and time.time() - oldest < patience_s:
            preferred = [m for m in models if m in resident]
            task = await queue.claim(worker_id, preferred, lease_s)
            if task is not None:
                return task
    return await queue.claim(worker_id, models, lease_s)
