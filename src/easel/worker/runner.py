"""The worker: claim → resolve inputs → run the backend chain → store the output → settle.

A multiview task runs the chain once per view (:mod:`easel.worker.multiview`) and stores four
outputs (:mod:`easel.worker.outputs`); everything else is the same path. A worker runs
``worker_concurrency`` tasks at once. Each running task has a heartbeat that renews its lease
and stores its progress; if the heartbeat finds the claim gone (the lease lapsed and another
worker took the task), the run is abandoned. Every path ends the task in a final state
(success, or failed/banned with a refund) or, on shutdown, back in the queue.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Collection

from easel.backends.base import (
    BackendError,
    BackendRejected,
    GeneratedImage,
    InputImage,
    Job,
    JobCancelled,
)
from easel.backends.fallback import Router
from easel.config import Settings
from easel.domain.errors import EaselError, FatalServerError, first_line
from easel.domain.multiview import MULTIVIEW_TYPES
from easel.domain.options import task_options
from easel.domain.tasks import AttemptOutcome, Status, Task
from easel.outbound import OutboundPolicy
from easel.storage.check import StorageCheck
from easel.storage.objects import ObjectStore, ObjectStoreError
from easel.store import Store, is_outage, outages_suppressed
from easel.worker.attempts import Control, in_format, outcome_of, run_attempt
from easel.worker.health import WorkerHealth
from easel.worker.identity import (
    WorkerCannotRegister,
    check_worker_id,
    new_worker_id,
    register,
)
from easel.worker.inputs import resolve
from easel.worker.models import advert, claim_next, fail_unloadable, warm_up
from easel.worker.multiview import RunControl, make_views, stop_reason
from easel.worker.outputs import output_key, store_output, store_views

__all__ = ["Worker", "WorkerCannotRegister"]

log = logging.getLogger("easel.worker")
HOUSEKEEPING_S = 1.0
OUTAGE_BACKOFF_MAX_S = 5.0  # longest wait between claims while the database is away
STOP_WAIT_S = 5.0  # after the drain: how long stopped tasks get to notice before cancelled


class _NoBackend(BackendError):
    """Every backend of the chain was unavailable or failed retryably."""


class Worker:
    def __init__(
        self,
        store: Store,
        objects: ObjectStore,
        router: Router,
        settings: Settings,
        *,
        models: Collection[str] | None = None,
        worker_id: str | None = None,
        storage: StorageCheck | None = None,
    ) -> None:
        self.store, self.objects, self.router, self.settings = store, objects, router, settings
        self.storage = storage or StorageCheck(objects)
        self.wanted = list(models) if models is not None else list(router.chains)
        self.id = check_worker_id(worker_id) if worker_id is not None else new_worker_id()
        self.policy = OutboundPolicy.from_strings(settings.allow_outbound_cidrs)
        self._wake = asyncio.Event()
        self._running: set[asyncio.Task[None]] = set()
        self._full = False  # the last claims stopped at the slot limit, not an empty queue
        self._controls: dict[str, Control] = {}  # of the running tasks, by task id
        self._listener = store.wake_ups(self.wake)
        self._last_housekeeping = -HOUSEKEEPING_S
        self.health = WorkerHealth(self.storage, lambda: self.models)

    @property
    def models(self) -> list[str]:
        """The wanted models that have a ready backend now (a backend that failed to load
        is no longer ready, so its model is left to other workers)."""
        return [model for model in self.wanted if self.router.ready_backends(model)]

    def wake(self) -> None:
        """A task was queued in this process: look now instead of at the next poll."""
        self._wake.set()

    async def run(
        self, stop: asyncio.Event, on_registered: Callable[[], None] | None = None
    ) -> None:
        """Claim and run tasks until ``stop`` is set; then release what is still running.
        ``on_registered`` is called once the worker has announced itself."""
        slots = self.settings.worker_concurrency
        await warm_up(self.router, self.wanted)
        backoff = 0.0  # > 0 while the database is away
        try:
            if not await self._register(slots, stop):
                return
            self.health.registered()
            if on_registered is not None:
                on_registered()
            log.info("worker %s takes %s", self.id, ", ".join(self.models) or "no model")
            while not stop.is_set():
                await self._housekeeping(slots)
                try:
                    await self._claim_until_full(slots, stop)
                except Exception as exc:
                    if not is_outage(exc):
                        log.exception("claiming tasks failed; retrying with back-off")
                    elif not backoff:
                        log.warning("cannot claim tasks (%s); retrying with back-off", exc)
                    backoff = min(
                        OUTAGE_BACKOFF_MAX_S, max(backoff * 2, self.settings.poll_interval_s)
                    )
                else:
                    if backoff:
                        log.info("the database is back; claiming tasks again")
                    backoff = 0.0
                await self._sleep(stop, backoff or self.settings.poll_interval_s)
        finally:
            self.health.draining = True
            await self._shutdown()

    async def _claim_until_full(self, slots: int, stop: asyncio.Event) -> None:
        self._full = False
        if await self.storage.problem() is not None:
            return  # no output could be stored: the tasks stay queued (the check logs why)
        while not stop.is_set():
            if len(self._running) >= slots:
                self._full = True
                return
            models = self.models
            task = await claim_next(
                self.store.queue,
                self.id,
                models,
                advert(self.router, models)[0],
                lease_s=self.settings.lease_s,
                patience_s=self.settings.swap_patience_s,
            )
            if task is None:
                return
            runner = asyncio.create_task(self.run_task(task))
            self._running.add(runner)
            runner.add_done_callback(self._finished)

    def _finished(self, runner: asyncio.Task[None]) -> None:
        self._running.discard(runner)
        if self._full:  # tasks may be waiting for this slot; else the queue was empty
            self._wake.set()

    async def _housekeeping(self, slots: int) -> None:
        """At most once a second: heartbeat, listen again if needed, reclaim lapsed leases."""
        now = time.monotonic()
        if now - self._last_housekeeping < HOUSEKEEPING_S:
            return
        self._last_housekeeping = now
        await self._listener.ensure()
        try:
            await self._announce(slots)
            self.health.registered()
            await fail_unloadable(self.router, self.store.queue, self.wanted)
            reclaimed = await self.store.queue.reclaim_lapsed(self.settings.max_attempts)
            if reclaimed:
                log.warning("reclaimed %d task(s) whose worker stopped responding", reclaimed)
        except Exception as exc:
            if not is_outage(exc):
                log.exception("housekeeping failed")
            else:  # the database may be restarting; try again next round
                log.warning("housekeeping failed (%s); trying again in %g s", exc, HOUSEKEEPING_S)

    async def _register(self, slots: int, stop: asyncio.Event) -> bool:
        """Announce this worker; False if ``stop`` came first. Raises
        :class:`WorkerCannotRegister` when it cannot (see :func:`identity.register`)."""

        async def sleep(seconds: float) -> bool:
            await self._sleep(stop, seconds)
            return stop.is_set()

        return await register(
            self.id,
            lambda: self._announce(slots),
            sleep,
            patience_s=self.settings.worker_register_timeout_s,
            first_wait_s=self.settings.poll_interval_s,
        )

    async def _announce(self, slots: int) -> None:
        """Register, or renew the registration (each housekeeping round): the models it
        takes, its slots, which models are resident and how long each took to swap in."""
        models = self.models
        resident, load_s = advert(self.router, models)
        await self.store.queue.register_worker(self.id, models, slots, resident, load_s)

    async def _sleep(self, stop: asyncio.Event, timeout_s: float) -> None:
        self._wake.clear()
        waiters = [asyncio.create_task(self._wake.wait()), asyncio.create_task(stop.wait())]
        await asyncio.wait(waiters, timeout=timeout_s, return_when=asyncio.FIRST_COMPLETED)
        for waiter in waiters:
            waiter.cancel()

    async def _shutdown(self) -> None:
        """Drain: claim nothing more; the running tasks get ``worker_drain_s`` to finish. Then
        each still running is told to stop (a local pipeline stops at its next step) and put
        back in the queue, where another worker takes it at once."""
        await self._listener.close()
        drain_s = self.settings.worker_drain_s
        if self._running and drain_s > 0:
            log.info("stopping: %d running task(s) get %g s to finish", len(self._running), drain_s)
            await asyncio.wait(self._running, timeout=drain_s)
        if self._running:
            log.info("stopping: %d task(s) go back to the queue", len(self._running))
            for control in self._controls.values():
                control.stopping = control.stop = True
            await asyncio.wait(self._running, timeout=STOP_WAIT_S)
        for runner in list(self._running):
            runner.cancel()  # it puts its task back in the queue
        await asyncio.gather(*self._running, return_exceptions=True)
        with contextlib.suppress(Exception):
            await self.store.queue.unregister_worker(self.id)

    # -- one task -------------------------------------------------------------------------

    async def run_task(self, task: Task) -> None:
        control = self._controls[task.id] = Control()
        heartbeat = asyncio.create_task(self._heartbeat(task, control))
        try:
            await self._execute(task, control)
        except asyncio.CancelledError:
            control.stopping = control.stop = True  # a backend's thread stops at its next step
            with outages_suppressed():  # else its lease lapses: reclaimed
                await self.store.queue.release(task)  # shutdown: back to the queue, not lost
            raise
        except Exception as exc:
            if is_outage(exc):
                # The database or the object store is away: stop renewing the lease, so the
                # task is reclaimed and run again (bounded by max_attempts) once it is back.
                log.warning("task %s interrupted (%s); it will be reclaimed", task.id, exc)
                return
            # Anything else is a bug: re-running the task would meet it again. It ends now,
            # with a refund; the traceback is in the log.
            log.exception("task %s failed unexpectedly", task.id)
            with outages_suppressed():
                await self.store.queue.fail(
                    task, Status.FAILED, FatalServerError.code, f"internal error: {first_line(exc)}"
                )
        finally:
            self._controls.pop(task.id, None)
            heartbeat.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await heartbeat

    async def _heartbeat(self, task: Task, control: Control) -> None:
        interval = min(self.settings.lease_s / 3, 1.0)
        while True:
            await asyncio.sleep(interval)
            try:
                beat = await self.store.queue.heartbeat(
                    task, self.settings.lease_s, int(control.fraction * 99)
                )
            except Exception as exc:
                if not is_outage(exc):
                    log.exception("heartbeat of task %s failed; retrying", task.id)
                else:
                    log.warning("heartbeat of task %s failed (%s); retrying", task.id, exc)
                continue
            if beat.cancel and not control.cancel_requested:
                log.info("task %s: cancel requested; stopping at the next checkpoint", task.id)
                control.cancel_requested = control.stop = True
            if not beat.ours:
                log.warning("task %s was taken over elsewhere; abandoning it", task.id)
                control.stop = True
                return

    async def _execute(self, task: Task, control: Control) -> None:
        model = self.settings.catalog[task.model_version]
        try:
            images = await resolve(
                task.refs, model, self.objects, self.policy, self.settings.fetch_timeout_s
            )
        except EaselError as exc:
            await self.store.queue.fail(task, Status.FAILED, exc.code, exc.message)
            return
        views: dict[str, GeneratedImage] | None = None
        try:
            if task.type in MULTIVIEW_TYPES:
                views, backend, attempt = await make_views(
                    task, images, control, self._generate, self.store.queue.end_attempt
                )
                image = views["front"]
            else:
                image, backend, attempt = await self._generate(task, images, control)
        except JobCancelled:
            if control.cancel_requested:
                await self.store.queue.fail(task, Status.CANCELLED, None, None)
            elif control.stopping:  # this worker is stopping: another one runs it
                await self.store.queue.release(task)
            return  # otherwise the claim was lost; its new owner finishes the task
        except BackendRejected as exc:
            await self.store.queue.fail(task, Status.BANNED, exc.error_code, str(exc))
            return
        except BackendError as exc:
            await self.store.queue.fail(task, Status.FAILED, FatalServerError.code, str(exc))
            return
        # The successful attempt is recorded with the task's completion, in one transaction,
        # or here when the task ends otherwise.
        if control.cancel_requested:  # the backend finished before its next checkpoint
            await self.store.queue.end_attempt(attempt, AttemptOutcome.SUCCESS)
            await self.store.queue.fail(task, Status.CANCELLED, None, None)
            return
        if views is None:
            image = await in_format(image, task_options(task.input).output_format)
        key, keys = output_key(task.id, image), None
        try:
            if views is None:
                await store_output(self.objects, key, image.data)
            else:
                keys = await store_views(self.objects, task.id, views)
                key = keys["front"]
        except ObjectStoreError as exc:
            self.storage.recheck()  # probe before the next claim; the last verdict is stale
            await self.store.queue.end_attempt(attempt, AttemptOutcome.SUCCESS)
            message = f"the output image could not be stored: {exc.strerror}"
            await self.store.queue.fail(task, Status.FAILED, FatalServerError.code, message)
            return
        await self.store.queue.complete(task, key, backend, attempt, views=keys)

    async def _generate(
        self,
        task: Task,
        images: tuple[InputImage, ...],
        control: RunControl,
        prompt: str | None = None,
        seed: int | None = None,
    ) -> tuple[GeneratedImage, str, int]:
        """Run the model's backends in order until one succeeds; record every attempt.
        Returns the image, the backend and its attempt, which is left for the caller to end.
        ``prompt`` and ``seed``: a multiview view's (else the task's prompt, no seed)."""
        queue, problems = self.store.queue, []
        for leg in self.router.chain(task.model_version):
            backend = leg.backend
            served_by = backend.served_by(leg.provider_model)
            attempt = await queue.start_attempt(task, backend.name, served_by)
            reason = backend.unavailable_reason()
            if reason is not None:
                await queue.end_attempt(attempt, AttemptOutcome.SKIPPED, reason)
                problems.append(f"{backend.name}: {reason}")
                continue
            job = Job(
                task.id,
                task.model_version,
                task.prompt if prompt is None else prompt,
                images,
                leg.provider_model,
                negative_prompt=str(task.input.get("negative_prompt", "")),
                seed=seed,
                options=task_options(task.input),
            )
            try:
                image = await run_attempt(backend, job, control)
            except BackendError as exc:
                outcome = outcome_of(exc)
                await queue.end_attempt(attempt, outcome, str(exc))
                if outcome != "retryable":
                    raise
                log.warning("backend %s failed for task %s: %s", backend.name, task.id, exc)
                problems.append(f"{backend.name}: {exc}")
                continue
            except JobCancelled:
                reason = stop_reason(control)
                await queue.end_attempt(attempt, AttemptOutcome.CANCELLED, reason)
                raise
            return image, backend.name, attempt
        raise _NoBackend("no backend could run the task: " + "; ".join(problems or ["none"]))
