"""GPU memory management of the ``diffusers`` backends (:mod:`easel.backends._diffusers_memory`),
on CPU with tiny random FLUX and Z-Image pipelines: a budget that holds either but not both,
least-recently-used eviction and swap-in, unloading that really frees, runs that are never
evicted, the settings, and the load times in ``/metrics``.

On the CPU, "parked in CPU memory" (``gpu_offload = "cpu"``) moves nothing: those tests check
the bookkeeping (which pipeline is resident, load times, metrics); ``"unload"`` really frees
and reads again. Each test brings its own loader, except the end-to-end one, which goes
through the settings to the process's :data:`LOADER` and puts it back as it was.
"""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import subprocess
import sys
import threading
import time
import weakref
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry
from prometheus_client.multiprocess import MultiProcessCollector

from apptools import running_api, settings_for
from diffusers_tools import Control
from easel.backends import pipeline_metrics
from easel.backends._diffusers_load import read_pipeline
from easel.backends._diffusers_memory import (
    LOADER,
    Abandoned,
    Loaded,
    PipelineLoader,
    pipeline_bytes,
)
from easel.backends.base import BackendUnavailable, Job, JobCancelled, LoadState
from easel.backends.demo_weights import write_demo_weights
from easel.backends.diffusers import DiffusersBackend, Options
from easel.config import ConfigError, load_settings
from easel.runtime import open_runtime

pytestmark = pytest.mark.local  # torch and diffusers: the local extra

SIZE = 64
FLUX, ZIMAGE = "flux:flux", "z-image:z-image"  # the pipelines' labels in metrics


@pytest.fixture(scope="module")
def weights(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return write_demo_weights(tmp_path_factory.mktemp("memory-weights"), ("flux", "z-image"))


def options(weights: dict[str, Path], pipeline: str) -> Options:
    table = {"pipeline": pipeline, "weights": str(weights[pipeline]), "device": "cpu"}
    return Options.model_validate(
        {**table, "dtype": "float32", "steps": 2, "width": SIZE, "height": SIZE}
    )


@pytest.fixture(scope="module")
def fits_one(weights: dict[str, Path]) -> int:
    """A budget in bytes that holds either pipeline but not both."""
    sizes = [pipeline_bytes(read_pipeline(options(weights, p))) for p in ("flux", "z-image")]
    budget = max(sizes) + min(sizes) // 2
    assert max(sizes) < budget < sum(sizes)
    return budget


def pair(
    weights: dict[str, Path], loader: PipelineLoader
) -> tuple[DiffusersBackend, DiffusersBackend]:
    return (
        DiffusersBackend("tiny-flux", options(weights, "flux"), loader),
        DiffusersBackend("tiny-zimage", options(weights, "z-image"), loader),
    )


def acquire(loader: PipelineLoader, weights: dict[str, Path], pipeline: str) -> Loaded:
    """The loader's own entry point, with the backend's CPU path (read; nothing to prepare)."""
    opts = options(weights, pipeline)
    return loader.acquire(pipeline, opts.label(), "cpu", lambda: read_pipeline(opts), lambda p: p)


def job(task_id: str = "t-1") -> Job:
    return Job(task_id, "flux.1_dev", "a red cat", ())


def count(pipeline: str, kind: str) -> float:
    """easel_pipeline_load_seconds_count of one pipeline and kind in this process."""
    registry = CollectorRegistry()
    registry.register(pipeline_metrics.metrics().seconds)
    labels = {"pipeline": pipeline, "kind": kind}
    return registry.get_sample_value("easel_pipeline_load_seconds_count", labels) or 0.0


def wait_for(condition: Callable[[], bool]) -> None:
    deadline = time.monotonic() + 30
    while not condition():
        assert time.monotonic() < deadline, "the condition never held"
        time.sleep(0.01)


def test_a_pipelines_size_is_its_parameters_and_buffers(weights: dict[str, Path]) -> None:
    full = options(weights, "flux")
    size = pipeline_bytes(read_pipeline(full))
    half = pipeline_bytes(read_pipeline(full.model_copy(update={"dtype": "float16"})))
    on_disk = sum(f.stat().st_size for f in weights["flux"].rglob("*.safetensors"))
    assert 0.9 * on_disk < size <= on_disk  # the saved tensors, less the files' headers
    assert half == pytest.approx(size / 2, rel=0.05)


async def test_alternating_runs_swap_two_pipelines_within_the_budget(
    weights: dict[str, Path], fits_one: int
) -> None:
    flux, zimage = pair(weights, PipelineLoader(fits_one, "cpu"))
    assert (flux.resident, flux.load_seconds) == (False, None)
    await flux.load()
    loaded = flux.load_seconds
    assert flux.resident
    assert loaded is not None
    await zimage.load()  # no room for both: the least recently used is parked
    assert (flux.resident, zimage.resident) == (False, True)
    swaps = count(FLUX, "swap_in")
    first = await flux.generate(job(), Control())
    assert (flux.resident, zimage.resident) == (True, False)
    assert count(FLUX, "swap_in") == swaps + 1
    assert flux.load_seconds is not None
    assert flux.load_seconds != loaded  # now the swap-in's
    await zimage.generate(job(), Control())
    assert (flux.resident, zimage.resident) == (False, True)
    again = await flux.generate(job(), Control())
    assert again.data == first.data
    assert (flux.load_state, zimage.load_state) == (LoadState.LOADED, LoadState.LOADED)


async def test_without_a_budget_every_pipeline_stays_resident(weights: dict[str, Path]) -> None:
    flux, zimage = pair(weights, PipelineLoader())
    for backend in (flux, zimage):
        await backend.load()
    loaded = flux.load_seconds, zimage.load_seconds
    swaps = count(FLUX, "swap_in"), count(FLUX, "swap_out")
    for backend in (flux, zimage, flux):
        await backend.generate(job(), Control())
    assert (flux.resident, zimage.resident) == (True, True)
    assert (flux.load_seconds, zimage.load_seconds) == loaded  # no swap since the load
    assert (count(FLUX, "swap_in"), count(FLUX, "swap_out")) == swaps


async def test_unload_frees_the_pipeline_and_the_next_run_reads_it_again(
    weights: dict[str, Path], fits_one: int
) -> None:
    flux, zimage = pair(weights, PipelineLoader(fits_one, "unload"))
    first = await flux.generate(job(), Control())  # loads on first use
    reads = count(FLUX, "load")
    await zimage.generate(job(), Control())
    assert (flux.resident, zimage.resident) == (False, True)
    again = await flux.generate(job(), Control())
    assert count(FLUX, "load") == reads + 1  # read from disk again
    assert again.data == first.data  # the same weights
    assert (flux.resident, zimage.resident) == (True, False)


async def test_an_unloaded_pipeline_whose_weights_vanished_cannot_come_back(
    weights: dict[str, Path], fits_one: int, tmp_path: Path
) -> None:
    """Retryable (another backend may run the task), and not final: the weights may return."""
    copy = {**weights, "flux": Path(shutil.copytree(weights["flux"], tmp_path / "flux"))}
    flux, zimage = pair(copy, PipelineLoader(fits_one, "unload"))
    await flux.load()
    await zimage.load()
    shutil.rmtree(copy["flux"])
    with pytest.raises(BackendUnavailable, match="could not bring its pipeline back"):
        await flux.generate(job(), Control())
    assert (flux.load_state, flux.resident, zimage.resident) == (LoadState.LOADED, False, True)
    shutil.copytree(weights["flux"], copy["flux"])
    image = await flux.generate(job(), Control())
    assert image.format == "png"
    assert (flux.resident, zimage.resident) == (True, False)


def test_an_unloaded_pipeline_is_gone_from_memory(weights: dict[str, Path], fits_one: int) -> None:
    loader = PipelineLoader(fits_one, "unload")
    flux = acquire(loader, weights, "flux")
    gone = weakref.ref(flux.pipe)
    zimage = acquire(loader, weights, "z-image")
    assert gone() is None  # no reference left anywhere
    assert (flux.pipe, flux.resident, zimage.resident) == (None, False, True)
    with loader.running(flux, lambda: False) as pipe:
        assert pipe is not None
        assert pipe is flux.pipe
    assert (flux.resident, zimage.resident, zimage.pipe) == (True, False, None)


def test_a_running_pipeline_is_never_evicted(weights: dict[str, Path], fits_one: int) -> None:
    """A run that needs the room a running pipeline holds waits for that run to end; a
    run of the busy pipeline queued meanwhile waits for it in turn (no starvation)."""
    loader = PipelineLoader(fits_one, "cpu")
    flux, zimage = acquire(loader, weights, "flux"), acquire(loader, weights, "z-image")
    started, finish, order = threading.Event(), threading.Event(), []

    def run(entry: Loaded, name: str, hold: bool = False) -> None:
        with loader.running(entry, lambda: False):
            order.append((name, flux.resident, zimage.resident))
            if hold:
                started.set()
                finish.wait(30)

    threads = [threading.Thread(target=run, args=(flux, "flux first", True))]
    threads[0].start()
    assert started.wait(30)
    threads.append(threading.Thread(target=run, args=(zimage, "zimage")))
    threads[1].start()
    wait_for(lambda: flux.wanted == 1)  # zimage waits for flux's room
    threads.append(threading.Thread(target=run, args=(flux, "flux again")))
    threads[2].start()
    assert (flux.resident, zimage.resident) == (True, False)
    finish.set()
    for thread in threads:
        thread.join(30)
    assert order == [
        ("flux first", True, False),
        ("zimage", False, True),
        ("flux again", True, False),
    ]
    assert flux.wanted == zimage.wanted == 0


def test_a_run_waiting_for_room_stops_when_cancelled(
    weights: dict[str, Path], fits_one: int
) -> None:
    loader = PipelineLoader(fits_one, "cpu")
    flux, zimage = acquire(loader, weights, "flux"), acquire(loader, weights, "z-image")
    cancel, outcome = threading.Event(), []

    def waiting() -> None:
        try:
            with loader.running(zimage, cancel.is_set):
                outcome.append("ran")
        except Abandoned:
            outcome.append("abandoned")

    with loader.running(flux, lambda: False):
        thread = threading.Thread(target=waiting)
        thread.start()
        wait_for(lambda: flux.wanted == 1)
        cancel.set()
        thread.join(30)
        assert outcome == ["abandoned"]
        assert (flux.resident, zimage.resident, flux.wanted) == (True, False, 0)


async def test_a_cancelled_task_waiting_for_a_swap_is_cancelled(
    weights: dict[str, Path], fits_one: int
) -> None:
    flux, zimage = pair(weights, PipelineLoader(fits_one, "cpu"))
    await zimage.load()
    await flux.load()
    paused, resume = threading.Event(), threading.Event()

    class Pausing(Control):
        def progress(self, fraction: float) -> None:
            super().progress(fraction)
            paused.set()
            resume.wait(30)

    running = asyncio.create_task(flux.generate(job(), Pausing()))
    assert await asyncio.to_thread(paused.wait, 30)
    control = Control()
    waiting = asyncio.create_task(zimage.generate(job(), control))
    control.cancel_after = 0  # cancelled now
    with pytest.raises(JobCancelled):
        await waiting
    assert (flux.resident, zimage.resident) == (True, False)
    resume.set()
    await running


async def test_a_pipeline_larger_than_the_budget_runs_alone(
    weights: dict[str, Path], caplog: pytest.LogCaptureFixture
) -> None:
    flux, zimage = pair(weights, PipelineLoader(1000, "cpu"))
    with caplog.at_level(logging.WARNING):
        await flux.load()
    assert "more than the whole budget" in caplog.text
    await zimage.load()
    assert (flux.resident, zimage.resident) == (False, True)
    await flux.generate(job(), Control())
    assert (flux.resident, zimage.resident) == (True, False)


@pytest.mark.parametrize(
    ("env", "problem"),
    [
        ({"EASEL_GPU_MEMORY_BUDGET_GB": "0"}, "gpu_memory_budget_gb: Input should be greater"),
        ({"EASEL_GPU_MEMORY_BUDGET_GB": "lots"}, "gpu_memory_budget_gb: Input should be a"),
        ({"EASEL_GPU_OFFLOAD": "disk"}, "gpu_offload: Input should be 'cpu' or 'unload'"),
    ],
)
def test_a_bad_memory_setting_is_a_clear_configuration_error(
    env: dict[str, str], problem: str
) -> None:
    with pytest.raises(ConfigError, match=problem):
        load_settings(env=env)


@pytest.fixture
def process_loader() -> Iterator[None]:
    """The process's loader as the test found it, afterwards."""
    budget, offload = LOADER.budget_bytes, LOADER.offload
    yield
    LOADER.budget_bytes, LOADER.offload = budget, offload


async def test_the_settings_set_the_process_loader(process_loader: None) -> None:
    settings = load_settings(
        env={"EASEL_GPU_MEMORY_BUDGET_GB": "1.5", "EASEL_GPU_OFFLOAD": "unload"}
    )
    assert (settings.gpu_memory_budget_gb, settings.gpu_offload) == (1.5, "unload")
    memory = {"database_url": "memory://", "storage_url": "memory://"}
    runtime = await open_runtime(settings.model_copy(update=memory))
    await runtime.close()
    assert (LOADER.budget_bytes, LOADER.offload) == (1_500_000_000, "unload")


async def test_loads_and_swaps_are_in_metrics(
    weights: dict[str, Path], fits_one: int, process_loader: None
) -> None:
    """Through the settings and the embedded worker: two models on pipelines that do not fit
    together, run in turn, unload and read each other again; /metrics says so."""
    tables: dict[str, Any] = {
        name: {"kind": "diffusers", **options(weights, pipeline).model_dump(exclude_none=True)}
        for name, pipeline in (("tiny-flux", "flux"), ("tiny-zimage", "z-image"))
    }
    settings = settings_for(
        "memory://",
        backends=tables,
        models={
            "flux.1_dev": {"backends": ["tiny-flux"]},
            "z_image": {"backends": ["tiny-zimage"]},
        },
        gpu_memory_budget_gb=fits_one / 1e9,
        gpu_offload="unload",
    )
    reads = count(FLUX, "load"), count(ZIMAGE, "load")
    async with running_api(settings) as api:
        for model in ("flux.1_dev", "z_image", "flux.1_dev"):
            submitted = await api.submit(prompt="a red cat", model_version=model)
            task = await api.wait(submitted.json()["data"]["task_id"], timeout_s=120)
            assert task["status"] == "success", task
        text = (await api.client.get("/metrics")).text
    assert count(FLUX, "load") >= reads[0] + 2  # at least once more after its eviction
    assert count(ZIMAGE, "load") >= reads[1] + 1
    assert f'easel_pipeline_load_seconds_count{{kind="swap_out",pipeline="{ZIMAGE}"}}' in text
    resident = {
        line.split('"')[1]: float(line.split()[-1])
        for line in text.splitlines()
        if line.startswith("easel_pipeline_resident_bytes{")
    }
    assert resident[FLUX] > 0  # the last run's
    assert resident[ZIMAGE] == 0  # unloaded to make room for it


def test_a_supervised_workers_figures_reach_the_shared_metrics_directory(tmp_path: Path) -> None:
    """Under ``easel serve --processes N`` the worker is a process of its own with
    ``$PROMETHEUS_MULTIPROC_DIR`` set: what it records, every API process's scrape reads."""
    record = (
        "from easel.backends.pipeline_metrics import collectors, metrics\n"
        "assert collectors() == []  # the directory carries them, not this process's scrape\n"
        "metrics().observe('z-image:Z-Image-Turbo', 'swap_in', 2.0)\n"
        "metrics().set_resident('z-image:Z-Image-Turbo', 12345)\n"
    )
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(tmp_path)}
    subprocess.run([sys.executable, "-c", record], env=env, check=True, timeout=60)
    registry = CollectorRegistry()
    MultiProcessCollector(registry, path=str(tmp_path))  # type: ignore[no-untyped-call]
    labels = {"pipeline": "z-image:Z-Image-Turbo"}
    swaps = registry.get_sample_value(
        "easel_pipeline_load_seconds_count", {**labels, "kind": "swap_in"}
    )
    assert swaps == 1
    assert registry.get_sample_value("easel_pipeline_resident_bytes", labels) == 12345
