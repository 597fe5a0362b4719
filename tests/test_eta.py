"""ETA honesty: queued and running estimates against the placeholder's known run time."""

from __future__ import annotations

import json
import statistics
import time
from pathlib import Path

import pytest

from apptools import running_api, settings_for
from easel.domain import eta

DELAY_S = 0.8


@pytest.mark.parametrize(
    ("mean", "elapsed", "progress", "expected"),
    [
        (None, 0.0, 0, 5),  # the prior: "a few seconds"
        (10.0, 4.0, 0, 6),  # measured mean minus time spent
        (10.0, 12.0, 0, 1),  # overdue: never below one second
        (10.0, 3.0, 50, 3),  # progress reported: extrapolate the pace
    ],
)
def test_running_estimates(
    mean: float | None, elapsed: float, progress: int, expected: int
) -> None:
    assert eta.running_left(mean, elapsed, progress) == expected


@pytest.mark.parametrize(
    ("mean", "ahead", "slots", "expected"),
    [(2.0, 0, 1, 2), (2.0, 3, 1, 8), (2.0, 3, 2, 4), (2.0, 3, 0, 8), (None, 0, 4, 5)],
)
def test_queued_estimates(mean: float | None, ahead: int, slots: int, expected: int) -> None:
    assert eta.queued_left(mean, ahead, slots) == expected


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
