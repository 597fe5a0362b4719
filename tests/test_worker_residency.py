"""A worker prefers the tasks of models it has resident (no pipeline to swap into GPU memory
first) without starving the others, advertises what it has resident, and the ETA of a task
whose model no live worker has resident counts the swap-in.

The backends are placeholders whose residency the test sets: a real ``ImageBackend``
subclass (the port's double), so the worker, the store and the API run as in production."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest

from apptools import Api, running_api, settings_for
from easel.backends.base import GeneratedImage, Job, JobControl
from easel.backends.fallback import Leg, Router
from easel.backends.placeholder import Options, PlaceholderBackend
from easel.worker.runner import Worker

ON_GPU = "flux.1_kontext_pro"  # its backend is resident
SWAPPED_OUT = "flux.1_dev"  # its backend must be swapped in first


class Swappable(PlaceholderBackend):
    """A placeholder whose pipeline the test keeps in GPU memory or not; it records the
    tasks it starts, and holds each at ``gate`` while that is closed."""

    def __init__(self, name: str, started: list[str], *, resident: bool, load_s: float) -> None:
        super().__init__(name, Options(width=64, height=64))
        self.started, self.is_resident, self.swap_s = started, resident, load_s
        self.gate = asyncio.Event()
        self.gate.set()

    @property
    def resident(self) -> bool:
        return self.is_resident

    @property
    def load_seconds(self) -> float | None:
        return self.swap_s

    async def generate(self, job: Job, control: JobControl) -> GeneratedImage:
        self.started.append(job.task_id)
        await self.gate.wait()
        return await super().generate(job, control)


@contextlib.asynccontextmanager
async def worker_with(
    store_url: str, patience_s: float, started: list[str]
) -> AsyncIterator[tuple[Api, Swappable, Swappable, asyncio.Event]]:
    """An app without its own worker, two backends (``ON_GPU``'s resident, ``SWAPPED_OUT``'s
    not, 7 s to swap in) and a one-slot worker over them, started by setting the event."""
    settings = settings_for(store_url, worker_concurrency=1, swap_patience_s=patience_s)
    settings = settings.model_copy(update={"worker_drain_s": 0.0})
    near = Swappable("near", started, resident=True, load_s=2.0)
    far = Swappable("far", started, resident=False, load_s=7.0)
    router = Router(
        chains={ON_GPU: [Leg(near, None)], SWAPPED_OUT: [Leg(far, None)]},
        backends={"near": near, "far": far},
        catalog=settings.catalog,
    )
    async with running_api(settings, run_worker=False, credits=1000) as api:
        runtime = api.runtime
        worker = Worker(runtime.store, runtime.objects, router, settings, worker_id="w1")
        go, stop = asyncio.Event(), asyncio.Event()

        async def run() -> None:
            await go.wait()
            await worker.run(stop)

        running = asyncio.create_task(run())
        try:
            yield api, near, far, go
        finally:
            near.gate.set()
            far.gate.set()
            go.set()
            stop.set()
            await running


async def submit(api: Api, model: str) -> str:
    response = await api.submit(prompt="a fox", model_version=model)
    assert response.status_code == 200, response.text
    task_id: str = response.json()["data"]["task_id"]
    return task_id


async def until(check: Callable[[], Awaitable[bool]], timeout_s: float = 20.0) -> None:
    async with asyncio.timeout(timeout_s):
        while True:
            if await check():
                return
            await asyncio.sleep(0.02)


async def test_a_resident_model_goes_first_until_another_has_waited_its_patience(
    store_url: str,
) -> None:
    """The swapped-out model's task is the oldest, yet the resident model's task is taken
    first; once that one has waited past the patience it goes before the next resident one."""
    started: list[str] = []
    async with worker_with(store_url, 3.0, started) as (api, near, _, go):
        near.gate.clear()
        far_id = await submit(api, SWAPPED_OUT)
        near_ids = [await submit(api, ON_GPU) for _ in range(2)]
        go.set()

        async def first_started() -> bool:
            return started == near_ids[:1]

        await until(first_started)
        assert (await api.task(far_id))["status"] == "queued"
        await asyncio.sleep(3.1)  # far_id has now waited longer than the patience
        near.gate.set()
        for task_id in (far_id, *near_ids):
            assert (await api.wait(task_id))["status"] == "success"
    assert started == [near_ids[0], far_id, near_ids[1]]


@pytest.mark.parametrize(("patience_s", "aged_s"), [(0.0, 0.0), (0.2, 0.3)])
async def test_without_preference_or_past_the_patience_the_plain_order_holds(
    store_url: str, patience_s: float, aged_s: float
) -> None:
    """Patience 0: no preference. A task of a swapped-out model that has waited past the
    patience is not kept waiting behind younger tasks of resident models."""
    started: list[str] = []
    async with worker_with(store_url, patience_s, started) as (api, _, _, go):
        order = [await submit(api, SWAPPED_OUT)]
        await asyncio.sleep(aged_s)
        order += [await submit(api, ON_GPU) for _ in range(2)]
        go.set()
        for task_id in order:
            assert (await api.wait(task_id))["status"] == "success"
    assert started == order


async def test_the_eta_of_a_queued_task_counts_its_model_s_swap_in(store_url: str) -> None:
    """A queued task whose model no live worker has resident is estimated with the swap-in
    time the worker advertised (7 s) on top of the run; once resident, without it. The v3
    view shows the same estimate."""
    started: list[str] = []
    async with worker_with(store_url, 30.0, started) as (api, near, far, go):
        far.is_resident = True
        go.set()
        measured = await submit(api, SWAPPED_OUT)  # a run to estimate from
        assert (await api.wait(measured))["status"] == "success"
        near.gate.clear()
        busy = await submit(api, ON_GPU)  # takes the one slot: what follows stays queued
        await api.wait(busy, until={"running"})
        queued = await submit(api, SWAPPED_OUT)
        resident_eta = (await api.task(queued))["running_left_time"]
        assert resident_eta >= 1
        far.is_resident = False  # its pipeline was moved out of GPU memory

        async def swap_counted() -> bool:
            return bool((await api.task(queued))["running_left_time"] != resident_eta)

        await until(swap_counted)  # the worker advertises it with its next heartbeat
        task = await api.task(queued)
        assert (task["status"], task["running_left_time"]) == ("queued", resident_eta + 7)
        v3 = (await api.client.get(f"/v3/tasks/{queued}")).json()["data"]
        assert v3["running_left_time"] == resident_eta + 7
        far.is_resident = True
        near.gate.set()
        assert (await api.wait(queued))["status"] == "success"
