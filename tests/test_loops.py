"""The background loops run in one supervised group (``easel.services.loops``): a loop that
crashes (raises, or returns while not told to stop) is logged, named in ``/readyz`` until it
has run a while again, and restarted with a capped exponential back-off; the other loops and
the API run on meanwhile, and stopping stays prompt."""

from __future__ import annotations

import asyncio
import itertools
import logging
import re
import time
from collections.abc import Callable

import httpx
import pytest
from sqlalchemy import text

from apptools import Api, engine_of, running_api, settings_for
from easel.services.loops import Backoff, LoopGroup
from easel.store import Store, open_store
from test_worker_registration import refuse_new_workers

QUICK = Backoff(first_s=0.05, max_s=0.2, stable_s=0.5)
NEVER_SOON = Backoff(first_s=60.0, max_s=60.0, stable_s=60.0)
STAMP = r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ"


async def until(holds: Callable[[], bool], timeout_s: float = 10.0) -> None:
    async with asyncio.timeout(timeout_s):
        while not holds():  # noqa: ASYNC110 - polls state the loops change
            await asyncio.sleep(0.01)


class Flaky:
    """Raises on its first ``failures`` runs, then runs until told to stop."""

    def __init__(self, failures: int) -> None:
        self.failures, self.starts = failures, list[float]()

    async def run(self, stop: asyncio.Event) -> None:
        self.starts.append(time.monotonic())
        if len(self.starts) <= self.failures:
            raise ValueError(f"boom {len(self.starts)}\nSELECT secret FROM the_statement")
        await stop.wait()


class SlowToStop:
    """Ticks until told to stop, then takes 0.3 s to wind down (as the worker releases its
    tasks): the group must wait for it."""

    def __init__(self) -> None:
        self.ticks, self.finished = 0, False

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            self.ticks += 1
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.3)
        self.finished = True


@pytest.mark.parametrize(
    ("lived_s", "delays"),
    [
        ([0, 0, 0, 0, 0, 0, 0], [1, 2, 4, 8, 16, 30, 30]),  # doubling, capped at 30 s
        ([0, 0, 10, 0], [1, 2, 1, 2]),  # a run of stable_s starts the count again
        ([0, 9.9, 0], [1, 2, 4]),  # just short of it does not
    ],
)
def test_restarts_back_off_exponentially_up_to_a_cap(
    lived_s: list[float], delays: list[float]
) -> None:
    backoff = Backoff(first_s=1, max_s=30, stable_s=10)
    assert [backoff.next_delay(lived) for lived in lived_s] == delays


async def test_a_crashed_loop_is_restarted_and_reported_until_it_has_run_a_while(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="easel.services.loops")
    problems: dict[str, str] = {}
    flaky = Flaky(failures=4)
    group = LoopGroup(problems, QUICK)
    group.add("flaky", flaky.run, meanwhile="meanwhile nothing flakes")
    reported: list[str] = []
    async with group.running(asyncio.Event()):
        await until(lambda: len(flaky.starts) == 5)
        reported.append(problems["flaky"])  # reported while the restarted run is young
        await until(lambda: not problems)
        recovered_after = time.monotonic() - flaky.starts[-1]
    assert re.fullmatch(
        rf"crashed at {STAMP}: ValueError: boom 4; restarting in 0\.2 s; meanwhile nothing flakes",
        reported[0],
    )
    gaps = [later - earlier for earlier, later in itertools.pairwise(flaky.starts)]
    for gap, delay in zip(gaps, [0.05, 0.1, 0.2, 0.2], strict=True):  # capped at max_s
        assert delay <= gap < delay + 1.0, gaps
    assert recovered_after >= QUICK.stable_s
    crashes = [r for r in caplog.records if r.getMessage().startswith("the flaky loop crashed")]
    assert len(crashes) == 4
    assert all(r.levelno == logging.ERROR and r.exc_info is not None for r in crashes)
    assert all("SELECT" not in r.getMessage() for r in crashes)  # the first line only
    recovered = "the flaky loop has run 0.5 s since its restart: ok"
    assert recovered in [r.getMessage() for r in caplog.records]


async def test_the_same_crash_again_is_one_log_line_without_another_traceback(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def same_error(stop: asyncio.Event) -> None:
        raise LookupError("the same thing")

    group = LoopGroup({}, QUICK)
    group.add("stubborn", same_error, meanwhile="meanwhile nothing")
    async with group.running(asyncio.Event()):
        await until(lambda: len(caplog.records) >= 3)
    crashes = [r for r in caplog.records if "stubborn loop crashed" in r.getMessage()]
    assert crashes[0].exc_info is not None
    assert [r.exc_info for r in crashes[1:]] == [None] * (len(crashes) - 1)


async def test_a_loop_that_returns_by_itself_counts_as_a_crash_and_the_others_run_on() -> None:
    problems: dict[str, str] = {}
    ended = 0

    async def returns_at_once(stop: asyncio.Event) -> None:
        nonlocal ended
        ended += 1

    neighbour = SlowToStop()
    group = LoopGroup(problems, QUICK)
    group.add("quitter", returns_at_once, meanwhile="meanwhile nothing is done")
    group.add("neighbour", neighbour.run, meanwhile="meanwhile nothing ticks")
    async with group.running(asyncio.Event()):
        await until(lambda: ended >= 3)
        ticks = neighbour.ticks
        assert "LoopEnded: it returned without being told to stop" in problems["quitter"]
        await until(lambda: neighbour.ticks > ticks + 5)
    assert list(problems) == ["quitter"]  # the neighbour never crashed
    assert neighbour.finished


async def test_a_cancellation_from_inside_a_loop_is_a_crash_too() -> None:
    problems: dict[str, str] = {}

    async def awaits_a_cancelled_future(stop: asyncio.Event) -> None:
        future = asyncio.get_running_loop().create_future()
        future.cancel()
        await future

    group = LoopGroup(problems, QUICK)
    group.add("cancelled", awaits_a_cancelled_future, meanwhile="meanwhile nothing")
    async with group.running(asyncio.Event()):
        await until(lambda: "cancelled" in problems)
    assert "LoopEnded: it was cancelled from inside" in problems["cancelled"]


async def test_stopping_is_prompt_during_a_back_off_and_waits_for_each_loop() -> None:
    crashing, slow = Flaky(failures=1_000), SlowToStop()
    group = LoopGroup({}, NEVER_SOON)
    group.add("crashing", crashing.run, meanwhile="meanwhile nothing")
    group.add("slow", slow.run, meanwhile="meanwhile nothing")
    async with group.running(asyncio.Event()):
        await until(lambda: len(crashing.starts) == 1 and slow.ticks > 0)
        asked = time.monotonic()
    took = time.monotonic() - asked
    assert slow.finished  # waited for, not cancelled
    assert 0.3 <= took < 3.0  # the slow loop's wind-down, not the 60 s back-off
    assert len(crashing.starts) == 1


async def test_an_error_in_the_body_comes_out_unchanged_after_the_loops_stopped() -> None:
    slow = SlowToStop()
    group = LoopGroup({}, QUICK)
    group.add("slow", slow.run, meanwhile="meanwhile nothing")

    async def body_that_fails() -> None:
        async with group.running(asyncio.Event()):
            await until(lambda: slow.ticks > 0)
            raise LookupError("the worker could not register")

    with pytest.raises(LookupError, match="the worker could not register"):
        await body_that_fails()
    assert slow.finished


async def test_an_error_while_stopping_is_logged_and_not_restarted(
    caplog: pytest.LogCaptureFixture,
) -> None:
    problems: dict[str, str] = {}
    runs = 0

    async def fails_on_the_way_out(stop: asyncio.Event) -> None:
        nonlocal runs
        runs += 1
        await stop.wait()
        raise OSError("could not say goodbye")

    group = LoopGroup(problems, QUICK)
    group.add("leaving", fails_on_the_way_out, meanwhile="meanwhile nothing")
    async with group.running(asyncio.Event()):
        await until(lambda: runs == 1)
    assert runs == 1 and problems == {}
    [failed] = [r for r in caplog.records if "failed while stopping" in r.getMessage()]
    assert failed.exc_info is not None and "could not say goodbye" in str(failed.exc_info[1])


# -- through the app: the in-process worker of `easel serve` ----------------------------------


async def allow_new_workers(store: Store) -> None:
    """Undo :func:`refuse_new_workers`."""
    engine = engine_of(store)
    async with engine.begin() as conn:
        if engine.dialect.name == "sqlite":
            await conn.execute(text("DROP TRIGGER refuse_workers"))
            return
        await conn.execute(text("DROP TRIGGER refuse_workers ON workers"))
        await conn.execute(text("DROP FUNCTION refuse_workers()"))


async def readyz_until(api: Api, holds: Callable[[httpx.Response], bool]) -> httpx.Response:
    async with asyncio.timeout(20):
        while not holds(answer := await api.client.get("/readyz")):  # noqa: ASYNC110 - HTTP
            await asyncio.sleep(0.05)
    return answer


async def refusing_workers(database_url: str) -> None:
    store = await open_store(database_url)
    try:
        await refuse_new_workers(store)
    finally:
        await store.close()


async def test_a_crashing_in_process_worker_shows_in_readyz_is_restarted_and_recovers(
    database_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Its registration is refused (a real trigger) until the test drops the trigger: /readyz
    answers 503 naming the crash while the API keeps serving, then 200 once the restarted
    worker has run ``stable_s``, and the task accepted meanwhile runs."""
    caplog.set_level(logging.INFO, logger="easel.services.loops")
    await refusing_workers(database_url)
    restarts = Backoff(first_s=0.1, max_s=0.4, stable_s=1.0)
    async with running_api(settings_for(database_url), restarts=restarts) as api:
        down = await readyz_until(api, lambda r: "worker" in r.json()["checks"])
        assert down.status_code == 503
        assert re.fullmatch(
            rf"crashed at {STAMP}: WorkerCannotRegister: worker '[^']+' cannot register with "
            r"the database: .*workers refused by the test; restarting in 0\.[124] s; "
            r"meanwhile this process runs no tasks",
            down.json()["checks"]["worker"],
        ), down.json()
        submitted = await api.submit(prompt="accepted while the worker is down")
        assert submitted.status_code == 200, submitted.text
        task_id = submitted.json()["data"]["task_id"]
        assert (await api.client.get("/healthz")).status_code == 200
        await until(lambda: crashes(caplog) >= 3)  # restarted, and refused again
        assert (await api.task(task_id))["status"] == "queued"

        await allow_new_workers(api.runtime.store)
        up = await readyz_until(api, lambda r: r.status_code == 200)
        assert "worker" not in up.json()["checks"]
        assert (await api.wait(task_id))["status"] == "success"
    assert any("starting the worker loop again" in r.getMessage() for r in caplog.records)


def crashes(caplog: pytest.LogCaptureFixture) -> int:
    return sum(1 for r in caplog.records if "the worker loop crashed" in r.getMessage())


async def test_the_api_shuts_down_promptly_while_a_crashed_loop_waits_to_restart(
    database_url: str,
) -> None:
    await refusing_workers(database_url)
    async with running_api(settings_for(database_url), restarts=NEVER_SOON) as api:
        down = await readyz_until(api, lambda r: "worker" in r.json()["checks"])
        assert "restarting in 60 s" in down.json()["checks"]["worker"]
        assert (await api.balance()) == {"balance": 100, "frozen": 0}  # the API serves
        leaving = time.monotonic()
    assert time.monotonic() - leaving < 5.0
