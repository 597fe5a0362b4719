"""Faults: the database going away, the object store failing writes, a backend hanging and a
full disk. Each test says what becomes of the task and of its credits, and checks that
nothing is lost: every task ends final, held credits are settled or refunded exactly once,
and the ledger agrees with the balance.

Faults are injected at the boundaries only: a TCP proxy in front of the real PostgreSQL
that is cut and restored, obstore's ``put_async`` failing (the third-party library under
``easel.storage.objects``), a placeholder backend slower than its ``timeout_s``, and, where this
machine lets us mount one, a real tmpfs that fills up.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import shutil
import subprocess
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import obstore
import pytest
from obstore.exceptions import GenericError
from sqlalchemy import func, select, text

from apptools import Api, engine_of, png, running_api, settings_for
from easel.store.db import PING_IDLE_S, connection, create_engine
from easel.store.tables import ledger, tasks
from tcpproxy import TcpProxy

CREDITS = 100
PRICE = 5  # flux.1_kontext_pro, the default model
# What obstore's LocalStore raises when the disk is full (seen on a full tmpfs).
ENOSPC_TEXT = (
    "Generic LocalFileSystem error: Unable to copy data to file: No space left on device "
    "(os error 28)"
)


# -- checks ------------------------------------------------------------------------------------


async def moves_of(api: Api, task_id: str) -> list[str]:
    """The ledger rows of one task, by kind (hold, settle, refund), in order."""
    async with engine_of(api.runtime.store).connect() as conn:
        rows = await conn.execute(
            select(ledger.c.kind).where(ledger.c.task_id == task_id).order_by(ledger.c.id)
        )
        return [kind for (kind,) in rows]


async def task_count(api: Api) -> int:
    async with engine_of(api.runtime.store).connect() as conn:
        return int(await conn.scalar(select(func.count()).select_from(tasks)) or 0)


async def assert_credits(api: Api, *, spent: int) -> None:
    """Balance is the grant less what succeeded, nothing stays held, the ledger agrees."""
    caller = await api.runtime.store.accounts.authenticate(api.key)
    balance = await api.runtime.store.accounts.balance(caller.account_id)
    assert (balance.balance, balance.frozen) == (CREDITS - spent, 0)
    assert await api.runtime.store.accounts.ledger_sums(caller.account_id) == balance
    assert await api.balance() == {"balance": CREDITS - spent, "frozen": 0}


def assert_unavailable(response: httpx.Response) -> None:
    """503 in the protocol's envelope (code 1000), telling the client to retry."""
    assert response.status_code == 503, response.text
    body = response.json()
    assert set(body) == {"code", "message", "suggestion"}
    assert body["code"] == 1000
    assert "try again shortly" in body["suggestion"]
    assert int(response.headers["Retry-After"]) > 0


async def submit(api: Api, **body: Any) -> str:
    response = await api.submit(prompt="a fox", **body)
    assert response.status_code == 200, response.text
    task_id: str = response.json()["data"]["task_id"]
    return task_id


async def eventually_ok(call: Callable[[], Awaitable[httpx.Response]]) -> httpx.Response:
    """Retry ``call`` like a patient client until it answers 200 (the server recovers)."""
    async with asyncio.timeout(20):
        while True:
            response = await call()
            if response.status_code == 200:
                return response
            assert_unavailable(response)
            await asyncio.sleep(0.1)


# -- 1. the database goes away -------------------------------------------------------------


async def test_postgres_outage_answers_503_and_the_work_resumes_when_it_is_back(
    postgres_behind_proxy: tuple[str, TcpProxy], caplog: pytest.LogCaptureFixture
) -> None:
    """The API answers 503 (code 1000, "try again shortly") while PostgreSQL is away, not
    a 500 traceback; the worker backs off (one warning, not one per poll), the task it was
    running is reclaimed once its lease lapses, and everything completes afterwards with
    each task charged exactly once."""
    url, proxy = postgres_behind_proxy
    caplog.set_level(logging.INFO, logger="easel.worker")
    settings = settings_for(url, lease_s=1.0, max_attempts=5, placeholder={"delay_s": 1.0})
    async with running_api(settings, credits=CREDITS) as api:
        running = await submit(api)
        await api.wait(running, until={"running"})

        await proxy.cut()
        assert_unavailable(await api.client.get(f"/v2/openapi/task/{running}"))
        assert_unavailable(await api.submit(prompt="refused while the database is away"))
        assert_unavailable(await api.client.get("/v2/openapi/user/balance"))
        await asyncio.sleep(2.5)  # the running task's lease lapses meanwhile
        await proxy.start()

        await eventually_ok(lambda: api.client.get(f"/v2/openapi/task/{running}"))
        first = await api.wait(running, timeout_s=30)
        after = await api.wait(await submit(api), timeout_s=30)

        assert (first["status"], after["status"]) == ("success", "success")
        assert await task_count(api) == 2  # the refused submit left nothing behind
        for task in (first, after):
            assert await moves_of(api, task["task_id"]) == ["hold", "settle"]
        await assert_credits(api, spent=2 * PRICE)
    claims_refused = [r for r in caplog.records if r.getMessage().startswith("cannot claim tasks")]
    assert len(claims_refused) == 1, [r.getMessage() for r in claims_refused]
    assert any("database is back" in r.getMessage() for r in caplog.records)


async def test_pooled_connections_cut_while_idle_are_replaced_before_use(
    postgres_behind_proxy: tuple[str, TcpProxy],
) -> None:
    """A database restart between requests closes every pooled connection. Whether the
    driver saw each one close or the ping a connection idle past ``PING_IDLE_S`` gets finds
    it dead, the pool opens another: every statement after the restart succeeds."""
    url, proxy = postgres_behind_proxy
    engine = create_engine(url)
    try:

        async def one() -> int:
            async with connection(engine) as conn:
                await asyncio.sleep(0.05)  # held a while, so the pool opens several
                return int((await conn.execute(text("select 1"))).scalar_one())

        assert await asyncio.gather(*(one() for _ in range(4))) == [1] * 4
        await proxy.cut()
        await proxy.start()
        await asyncio.sleep(PING_IDLE_S + 0.2)
        assert await asyncio.gather(*(one() for _ in range(4))) == [1] * 4
    finally:
        await engine.dispose()


async def test_pooled_connections_the_server_ended_are_replaced_without_waiting_to_idle(
    postgres_database: str,
) -> None:
    """Connections the server ended a moment after they went back to the pool (killed by
    an administrator, or a killed ``LISTEN`` connection given back) are known closed to the
    driver: they are replaced at checkout, idle or not, and no statement fails."""
    engine, admin = create_engine(postgres_database), create_engine(postgres_database)
    try:

        async def pid() -> int:
            async with connection(engine) as conn:
                await asyncio.sleep(0.05)  # held a while, so the pool opens several
                return int((await conn.execute(text("select pg_backend_pid()"))).scalar_one())

        pids = set(await asyncio.gather(*(pid() for _ in range(4))))
        assert len(pids) == 4
        async with admin.connect() as conn:
            killed = await conn.execute(
                text("select pg_terminate_backend(pid) from unnest(cast(:pids as int[])) as pid"),
                {"pids": list(pids)},
            )
            assert all(row[0] for row in killed)
        await asyncio.sleep(0.2)  # the driver reads the end; well under PING_IDLE_S
        assert not pids & set(await asyncio.gather(*(pid() for _ in range(4))))
    finally:
        await engine.dispose()
        await admin.dispose()


async def test_bursts_reuse_the_pools_connections_and_never_open_more_than_its_size(
    postgres_database: str,
) -> None:
    """Bursts wider than the pool wait for its connections instead of opening more: every
    statement of three bursts of 24 runs on the same ``pool_size`` server processes (each
    new one is a process start on the server and every statement prepared again; with an
    overflow that closes what it opened, every burst opened and closed ten)."""
    engine = create_engine(postgres_database, pool_size=4)
    try:

        async def pid() -> int:
            async with connection(engine) as conn:
                await asyncio.sleep(0.02)  # held a while, so the burst overlaps
                return int((await conn.execute(text("select pg_backend_pid()"))).scalar_one())

        bursts = [set(await asyncio.gather(*(pid() for _ in range(24)))) for _ in range(3)]
        assert len(bursts[0]) == 4
        assert bursts[0] == bursts[1] == bursts[2]
    finally:
        await engine.dispose()


async def test_a_worker_started_during_an_outage_waits_for_the_database_and_then_works(
    postgres_behind_proxy: tuple[str, TcpProxy], caplog: pytest.LogCaptureFixture
) -> None:
    """A worker process may start before its database is back (a restart of both): it
    retries registering instead of dying, then takes tasks. Meanwhile the webhook
    dispatcher says once that it cannot claim deliveries, without a traceback per poll."""
    url, proxy = postgres_behind_proxy
    caplog.set_level(logging.INFO)
    async with running_api(settings_for(url), run_worker=False, credits=CREDITS) as api:
        await proxy.cut()
        stop = asyncio.Event()
        worker = asyncio.create_task(api.runtime.new_worker().run(stop))
        await asyncio.sleep(1.5)  # registration is refused a few times meanwhile
        assert not worker.done(), "the worker died while the database was away"
        await proxy.start()
        await eventually_ok(lambda: api.client.get("/v2/openapi/user/balance"))
        task = await api.wait(await submit(api), timeout_s=30)
        stop.set()
        await worker
    assert task["status"] == "success"
    messages = [r.getMessage() for r in caplog.records]
    assert any(m.startswith("cannot register with the database") for m in messages)
    webhook_logs = [r for r in caplog.records if r.name == "easel.services.webhooks"]
    assert not [r for r in webhook_logs if r.levelno >= logging.ERROR]
    refused = [r for r in webhook_logs if r.getMessage().startswith("cannot claim webhook")]
    assert len(refused) == 1, [r.getMessage() for r in webhook_logs]


# -- a real, tiny filesystem (needs the right to mount one) ----------------------------------


@contextlib.contextmanager
def tiny_filesystem(path: Path, size_kib: int) -> Iterator[Path]:
    """A tmpfs of ``size_kib`` at ``path``. Mounting needs root with CAP_SYS_ADMIN; where
    that is missing the test is skipped (the injected variants below still run)."""
    path.mkdir()
    mount = shutil.which("mount")
    if mount is None:
        pytest.skip("no mount command to make a tiny filesystem")
    done = subprocess.run(
        [mount, "-t", "tmpfs", "-o", f"size={size_kib}k", "tmpfs", str(path)],
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def fill(directory: Path) -> Path:
    """Write a file until the filesystem is full; delete it to free the space again."""
    filler = directory / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT)
    try:
        assert _write_until_an_error(fd) == errno.ENOSPC
    finally:
        os.close(fd)
    return filler


def _write_until_an_error(fd: int) -> int | None:
    while True:
        try:
            os.write(fd, b"\1" * 4096)
        except OSError as exc:
            return exc.errno


async def test_sqlite_on_a_full_disk_answers_503_and_recovers_when_space_is_freed(
    tmp_path: Path,
) -> None:
    """SQLite's "database or disk is full": submits answer 503 (reads still work), the
    running task is reclaimed, and once space is freed everything completes."""
    with tiny_filesystem(tmp_path / "tiny", size_kib=1024) as disk:
        settings = settings_for(
            f"sqlite+aiosqlite:///{disk / 'easel.db'}",
            lease_s=1.0,
            max_attempts=5,
            placeholder={"delay_s": 1.0},
        )
        async with running_api(settings, credits=CREDITS) as api:
            running = await submit(api)
            await api.wait(running, until={"running"})
            filler = fill(disk)

            assert_unavailable(await api.submit(prompt="refused while the disk is full"))
            assert (await api.task(running))["status"] == "running"  # reads still work
            await asyncio.sleep(2.0)
            filler.unlink()

            first = await api.wait(running, timeout_s=30)
            after = await api.wait(await submit(api), timeout_s=30)
            assert (first["status"], after["status"]) == ("success", "success")
            assert await task_count(api) == 2
            for task in (first, after):
                assert await moves_of(api, task["task_id"]) == ["hold", "settle"]
            await assert_credits(api, spent=2 * PRICE)


async def test_a_full_local_store_fails_the_task_with_a_refund_and_says_so(
    database_url: str, tmp_path: Path
) -> None:
    """A real ENOSPC from the file store: the task fails (1001) with its credits refunded
    and an error that says the disk is full; after space is freed tasks succeed again."""
    with tiny_filesystem(tmp_path / "tiny", size_kib=256) as disk:
        settings = settings_for(database_url, storage_url=f"file://{disk / 'objects'}")
        async with running_api(settings, credits=CREDITS) as api:
            filler = fill(disk)
            failed = await api.wait(await submit(api))
            filler.unlink()
            done = await api.wait(await submit(api))

            assert failed["status"] == "failed"
            assert failed["error_code"] == 1001
            assert "disk is full" in failed["error_msg"]
            assert failed["consumed_credit"] == 0
            assert await moves_of(api, failed["task_id"]) == ["hold", "refund"]
            assert done["status"] == "success"
            await assert_credits(api, spent=PRICE)


async def test_an_input_the_object_store_cannot_read_is_retried_then_refunded(
    database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Reading a reference fails while the store is unwell: the attempt is interrupted like
    any outage (no "internal error"), the task runs again once its lease lapses, and after
    ``max_attempts`` it ends failed with a refund. A store that recovers in time lets it
    succeed, charged once."""
    real_get = obstore.get_async
    broken = {"reads": 0, "until": 0}

    async def flaky_get(store: Any, path: str, **options: Any) -> Any:
        if path.startswith("uploads/") and broken["reads"] < broken["until"]:
            broken["reads"] += 1
            raise GenericError("Generic S3 error: Error after 10 retries: HTTP 503")
        return await real_get(store, path, **options)

    monkeypatch.setattr(obstore, "get_async", flaky_get)
    settings = settings_for(database_url, lease_s=0.5, max_attempts=2)
    async with running_api(settings, credits=CREDITS) as api:
        token = await api.upload(png())
        broken["until"] = 1  # one failed read, then the store is well again
        recovered = await api.wait(await submit(api, files=[{"file_token": token}]), timeout_s=30)
        broken.update(reads=0, until=1000)  # never well again
        given_up = await api.wait(await submit(api, files=[{"file_token": token}]), timeout_s=30)

        assert recovered["status"] == "success", recovered
        assert await moves_of(api, recovered["task_id"]) == ["hold", "settle"]
        assert given_up["status"] == "failed", given_up
        assert "internal error" not in given_up["error_msg"]
        assert await moves_of(api, given_up["task_id"]) == ["hold", "refund"]
        await assert_credits(api, spent=PRICE)


# -- 2. and 4. the object store fails writes ----------------------------------------------------


class FailingPuts:
    """``obstore.put_async`` whose first ``failures`` writes under ``prefix`` raise what
    obstore raises (``error``); the others go to the real store."""

    def __init__(self, real: Any, failures: int, prefix: str, error: Exception) -> None:
        self.real, self.failures, self.prefix, self.error = real, failures, prefix, error
        self.failed = 0

    async def __call__(self, store: Any, path: str, data: Any, **options: Any) -> Any:
        if path.startswith(self.prefix) and self.failed < self.failures:
            self.failed += 1
            raise self.error
        return await self.real(store, path, data, **options)


def failing_puts(
    monkeypatch: pytest.MonkeyPatch,
    failures: int,
    prefix: str = "outputs/",
    error: Exception | None = None,
) -> FailingPuts:
    error = error or GenericError("Generic S3 error: Error after 10 retries: HTTP 503")
    puts = FailingPuts(obstore.put_async, failures, prefix, error)
    monkeypatch.setattr(obstore, "put_async", puts)
    return puts


async def test_an_output_write_that_fails_briefly_is_retried_and_the_task_succeeds(
    database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    puts = failing_puts(monkeypatch, failures=2)
    async with running_api(settings_for(database_url), credits=CREDITS) as api:
        task = await api.wait(await submit(api))
        assert task["status"] == "success", task
        assert puts.failed == 2
        key = f"outputs/{task['task_id']}.png"
        assert (await api.runtime.objects.get(key)).startswith(b"\x89PNG")
        assert [a["outcome"] for a in task["attempts"]] == ["success"]  # not generated twice
        assert await moves_of(api, task["task_id"]) == ["hold", "settle"]
        await assert_credits(api, spent=PRICE)


async def test_an_object_store_that_keeps_failing_writes_fails_the_task_with_a_refund(
    database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    failing_puts(monkeypatch, failures=1000)
    async with running_api(settings_for(database_url), credits=CREDITS) as api:
        task = await api.wait(await submit(api), timeout_s=30)
        assert task["status"] == "failed"
        assert task["error_code"] == 1001
        assert "could not be stored" in task["error_msg"]
        assert "HTTP 503" in task["error_msg"]
        assert task["consumed_credit"] == 0 and task["output"] == {}
        assert await moves_of(api, task["task_id"]) == ["hold", "refund"]
        await assert_credits(api, spent=0)


async def test_a_full_disk_fails_the_task_with_a_refund_and_the_message_says_so(
    database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """ENOSPC as obstore reports it (the same text as the real full tmpfs above)."""
    failing_puts(monkeypatch, failures=1000, error=GenericError(ENOSPC_TEXT))
    async with running_api(settings_for(database_url), credits=CREDITS) as api:
        task = await api.wait(await submit(api), timeout_s=30)
        assert task["status"] == "failed"
        assert task["error_code"] == 1001
        assert "disk is full (no space left on device)" in task["error_msg"]
        assert await moves_of(api, task["task_id"]) == ["hold", "refund"]
        await assert_credits(api, spent=0)


async def test_an_upload_to_a_full_disk_answers_503_and_stores_nothing(
    database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    failing_puts(monkeypatch, failures=1, prefix="uploads/", error=GenericError(ENOSPC_TEXT))
    async with running_api(settings_for(database_url), credits=CREDITS) as api:
        refused = await api.client.post(
            "/v2/openapi/upload", files={"file": ("ref.png", png(), "image/png")}
        )
        assert_unavailable(refused)
        token = await api.upload(png())  # the disk has room again
        task = await api.wait(await submit(api, file={"type": "png", "file_token": token}))
        assert task["status"] == "success"
        await assert_credits(api, spent=PRICE)


# -- 3. a backend hangs ----------------------------------------------------------------------------


def hanging_settings(database_url: str, chain: list[str]) -> Any:
    """``hang`` never finishes in time (30 s of work, 0.3 s allowed); ``dry`` is quick."""
    return settings_for(
        database_url,
        backends={
            "hang": {"kind": "placeholder", "delay_s": 30.0, "timeout_s": 0.3},
            "dry": {"kind": "placeholder"},
        },
        models={"flux.1_kontext_pro": {"backends": chain}},
    )


async def test_a_hanging_backend_times_out_and_the_next_backend_runs_the_task(
    database_url: str,
) -> None:
    async with running_api(hanging_settings(database_url, ["hang", "dry"])) as api:
        task = await api.wait(await submit(api), timeout_s=15)
        assert task["status"] == "success", task
        attempts = [(a["backend"], a["outcome"], a["error"]) for a in task["attempts"]]
        assert attempts == [
            ("hang", "retryable", "backend 'hang' did not finish within 0.3 s"),
            ("dry", "success", None),
        ]
        assert await moves_of(api, task["task_id"]) == ["hold", "settle"]
        await assert_credits(api, spent=PRICE)


async def test_a_hanging_backend_with_no_fallback_fails_the_task_with_a_refund(
    database_url: str,
) -> None:
    async with running_api(hanging_settings(database_url, ["hang"])) as api:
        task = await api.wait(await submit(api), timeout_s=15)
        assert task["status"] == "failed"
        assert task["error_code"] == 1001
        assert "did not finish within 0.3 s" in task["error_msg"]
        assert [a["outcome"] for a in task["attempts"]] == ["retryable"]
        assert await moves_of(api, task["task_id"]) == ["hold", "refund"]
        await assert_credits(api, spent=0)
