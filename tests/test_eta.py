"""ETA honesty: queued and running estimates against known run times (the placeholder's
configured delay, a loopback provider's), per backend and kind of request; none before any
measured run."""

from __future__ import annotations

import asyncio
import json
import statistics
import time
from pathlib import Path
from typing import Any

import pytest

from apptools import Api, png, running_api, settings_for
from easel.config import Settings
from easel.domain import eta
from fake_providers import OPENAI_KEY, FakeOpenAI
from loopback import serve_app

DELAY_S = 0.8


MEASURED = eta.Measured(10.0, eta.Basis.BACKEND)


@pytest.mark.parametrize(
    ("measured", "elapsed", "progress", "expected"),
    [
        (None, 0.0, 0, eta.UNKNOWN),  # nothing measured: no number made up
        (MEASURED, 4.0, 0, eta.Estimate(6, eta.Basis.BACKEND)),  # the mean minus time spent
        (MEASURED, 12.0, 0, eta.Estimate(1, eta.Basis.BACKEND)),  # overdue: at least 1 s
        (MEASURED, 3.0, 50, eta.Estimate(3, eta.Basis.PROGRESS)),  # extrapolate the pace
        (None, 3.0, 50, eta.Estimate(3, eta.Basis.PROGRESS)),  # progress is a measure too
    ],
)
def test_running_estimates(
    measured: eta.Measured | None, elapsed: float, progress: int, expected: eta.Estimate
) -> None:
    assert eta.running_left(measured, elapsed, progress) == expected


@pytest.mark.parametrize(
    ("mean", "ahead", "slots", "expected"),
    [(2.0, 0, 1, 2), (2.0, 3, 1, 8), (2.0, 3, 2, 4), (2.0, 3, 0, 8), (None, 0, 4, None)],
)
def test_queued_estimates(mean: float | None, ahead: int, slots: int, expected: int | None) -> None:
    measured = None if mean is None else eta.Measured(mean, eta.Basis.MODEL)
    left = eta.queued_left(measured, ahead, slots)
    assert left.seconds == expected
    assert left.protocol_value == (-1 if expected is None else expected)


def test_a_swap_in_is_added_once_to_a_task_that_waits_for_it() -> None:
    """Queued: after the tasks ahead, before its own run; running: until it paints."""
    measured = eta.Measured(2.0, eta.Basis.BACKEND)
    assert eta.queued_left(measured, 3, 1, swap_s=7.5).seconds == 2 * 4 + 8
    assert eta.queued_left(None, 0, 1, swap_s=7.5) == eta.UNKNOWN  # still nothing made up
    assert eta.running_left(measured, 4.0, 0, swap_s=7.5).seconds == 6
    assert eta.running_left(measured, 4.0, 50, swap_s=7.5).basis is eta.Basis.PROGRESS


def test_the_swap_a_task_waits_for_is_what_its_workers_advertised() -> None:
    """None while a live worker that takes the model has it resident or none said how long
    a swap-in takes; else the shortest advertised, or its own worker's once claimed."""
    model, other = "flux.1_dev", "z_image"
    near = eta.advertised("near", [model, other], 1, [other], {model: 9.0, other: 2.0})
    far = eta.advertised("far", [model], 1, [], {model: 4.0, "not-its": 1.0})
    silent = eta.advertised("silent", [model], 1, [])  # never loaded it: no time to add
    old = eta.advertised("old", [other], 1)  # said nothing of residency: all resident
    assert (far.load_s, old.resident) == ({model: 4.0}, frozenset([other]))
    assert eta.swap_wait([near, far, silent], model) == 4.0
    assert eta.swap_wait([near, far], model, on_worker="near") == 9.0
    assert eta.swap_wait([silent], model) is None
    assert eta.swap_wait([near, far], other) is None
    assert eta.swap_wait([old, far], "flux.1_kontext_pro") is None  # nobody takes it


def test_retry_after_is_a_number_even_before_any_run() -> None:
    assert eta.retry_after(eta.Measured(7.2, eta.Basis.BACKEND)) == 8
    assert eta.retry_after(None) == eta.RETRY_WITHOUT_DATA_S


def record_figures(errors: list[float]) -> None:
    """Keep the measured error for the record (test-artifacts/eta.json, git-ignored)."""
    figures = {"median_relative_error": statistics.median(errors), "worst": max(errors)}
    artifacts = Path(__file__).resolve().parents[1] / "test-artifacts"
    artifacts.mkdir(exist_ok=True)
    (artifacts / "eta.json").write_text(json.dumps(figures | {"errors": errors}, indent=2))


async def test_estimates_track_measured_run_times(tmp_path: Path) -> None:
    """With one worker slot and a backend that takes DELAY_S, the estimate each queued task
    shows at submit is compared with when it really finishes."""
    settings = settings_for(
        f"sqlite+aiosqlite:///{tmp_path / 'eta.db'}",
        worker_concurrency=1,
        poll_interval_s=0.02,
        placeholder={"delay_s": DELAY_S},
    )
    async with running_api(settings, credits=100) as api:
        for _ in range(3):  # measure the model's run time first
            await api.wait((await api.submit(prompt="warm")).json()["data"]["task_id"])
        submitted = []
        for n in range(4):
            task_id = (await api.submit(prompt=f"n{n}")).json()["data"]["task_id"]
            estimate = (await api.task(task_id))["running_left_time"]
            submitted.append((task_id, time.monotonic(), estimate))
        errors = []
        for task_id, start, estimate in submitted:
            await api.wait(task_id, timeout_s=30)
            actual = time.monotonic() - start
            errors.append(abs(estimate - actual) / actual)
    record_figures(errors)
    # Whole seconds of estimate against sub-second reality: allow the rounding, no more.
    assert max(errors) < 0.75, errors
    assert sum(errors) / len(errors) < 0.5, errors


MODEL = "gpt_image_2"
KEY_ENV = "EASEL_TEST_OPENAI_KEY"
TEXT_S, EDIT_S = 0.4, 1.2  # the provider's run times: text only, with a reference image


def served_by(database_url: str, name: str, backend: dict[str, Any]) -> Settings:
    """MODEL served by one backend, one task at a time."""
    return settings_for(
        database_url,
        backends={name: backend},
        models={MODEL: {"backends": [name]}},
        worker_concurrency=1,
    )


async def submit(api: Api, reference: str | None = None) -> str:
    files = [{"type": "png", "file_token": reference}] if reference else []
    response = await api.submit(prompt="a teapot", model_version=MODEL, files=files)
    assert response.status_code == 200, response.text
    task_id: str = response.json()["data"]["task_id"]
    return task_id


async def run(api: Api, reference: str | None = None) -> None:
    assert (await api.wait(await submit(api, reference)))["status"] == "success"


async def running_on_a_backend(api: Api, task_id: str) -> dict[str, Any]:
    """The task once a backend runs it (claimed, its attempt begun)."""
    async with asyncio.timeout(10):
        while True:
            task = await api.wait(task_id, until={"running"})
            if task["attempts"]:
                return task


async def test_a_model_without_measured_runs_shows_no_estimate(database_url: str) -> None:
    settings = settings_for(database_url, max_unfinished_tasks=1)
    async with running_api(settings, run_worker=False) as api:
        task = await api.task(await submit(api))
        assert task["status"] == "queued" and task["queuing_num"] == 0
        assert (task["running_left_time"], task["running_left_basis"]) == (-1, "none")
        refused = await api.submit(prompt="one more", model_version=MODEL)
        assert refused.status_code == 429
        assert refused.headers["Retry-After"] == str(eta.RETRY_WITHOUT_DATA_S)


async def test_each_backend_and_kind_of_request_has_its_own_estimate(
    database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The model first runs on a placeholder that answers at once, then on a provider (an
    OpenAI stand-in on loopback) that takes TEXT_S for text and EDIT_S for an edit: each
    estimate follows the runs of the backend and kind of request it is about."""
    monkeypatch.setenv(KEY_ENV, OPENAI_KEY)
    async with running_api(served_by(database_url, "quick", {"kind": "placeholder"})) as api:
        for _ in range(2):
            await run(api)
    fake = FakeOpenAI(delay_s=TEXT_S)
    with serve_app(fake.app()) as url:
        provider = {"kind": "openai", "base_url": f"{url}/v1", "api_key_env": KEY_ENV}
        async with running_api(served_by(database_url, "provider", provider)) as api:
            first = await submit(api)
            running = await running_on_a_backend(api, first)
            assert running["running_left_basis"] == "model"  # the provider has no run yet
            await api.wait(first)
            await run(api)
            reference = await api.upload(png())
            fake.delay_s = EDIT_S
            edit = await submit(api, reference)
            running = await running_on_a_backend(api, edit)
            assert running["running_left_basis"] == "backend"  # the provider's text runs
            await api.wait(edit)
            await run(api, reference)

            text = await api.runtime.store.tasks.measured(MODEL, edits=False)
            edits = await api.runtime.store.tasks.measured(MODEL, edits=True)
            assert text is not None and edits is not None
            assert text.basis is edits.basis is eta.Basis.BACKEND
            # At least the provider's time (not the placeholder's instant runs); a text run's
            # mean under an edit's time (not mixed with the edits), with room for a busy machine.
            assert TEXT_S <= text.mean_s < EDIT_S, text
            assert EDIT_S <= edits.mean_s < 2 * EDIT_S, edits

            await submit(api, reference)  # runs first, then the two below in order
            queued = [await api.task(await submit(api, ref)) for ref in (None, reference)]
            assert [t["running_left_basis"] for t in queued] == ["backend", "backend"]
            # The text task's estimate is its own kind's run time, not an edit's nor a mix...
            text = await api.runtime.store.tasks.measured(MODEL, edits=False)
            assert text is not None
            assert queued[0]["running_left_time"] == eta.queued_left(text, 0, 1).protocol_value
            # ...and the edit behind it waits for one run and takes another, both edits.
            assert queued[1]["running_left_time"] >= 2 * EDIT_S
            for task in queued:
                await api.wait(task["task_id"])
