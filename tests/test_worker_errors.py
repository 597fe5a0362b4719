"""Outages are retried; everything else fails loudly, at once (easel.store.outage decides).

Before one classifier decided, every SQLAlchemy error and every ``OSError`` counted as "the
database is away" in the worker and the janitor: a SQL bug or Pillow failing on a reference
re-queued the task silently until, after ``max_attempts`` lapsed leases, it failed as "the
worker stopped responding". Now a bug ends the task ``failed`` on its first run, with a
refund, the error in ``error_msg`` and the traceback in the log; a real outage still leaves
the task to be reclaimed and run again.

Errors come from the real database (a trigger raises inside it, see ``triggers.py``) or from
Pillow, the library under the placeholder backend; Easel's own code runs unchanged.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

import pytest
from PIL import Image
from sqlalchemy import select

from apptools import Api, engine_of, png, running_api, settings_for
from conftest import reset_schema
from easel.store.tables import ledger
from triggers import allow_inserts, refuse_inserts

CREDITS = 100
PRICE = 5  # flux.1_kontext_pro, the default model
# Were a bug taken for an outage, the task would fail only after 3 lapsed leases of 1 s.
PATIENT = {"lease_s": 1.0, "max_attempts": 3}
TERMINATING = "terminating connection due to administrator command"


async def submit(api: Api, **body: Any) -> str:
    response = await api.submit(prompt="a fox", **body)
    assert response.status_code == 200, response.text
    task_id: str = response.json()["data"]["task_id"]
    return task_id


async def moves_of(api: Api, task_id: str) -> list[str]:
    async with engine_of(api.runtime.store).connect() as conn:
        rows = await conn.execute(
            select(ledger.c.kind).where(ledger.c.task_id == task_id).order_by(ledger.c.id)
        )
        return [kind for (kind,) in rows]


async def until(condition: Callable[[], bool], timeout_s: float = 10.0) -> None:
    async with asyncio.timeout(timeout_s):
        while True:
            if condition():
                return
            await asyncio.sleep(0.02)


def tracebacks(caplog: pytest.LogCaptureFixture, says: str) -> list[logging.LogRecord]:
    """Records logged at ERROR with a traceback whose exception mentions ``says``."""
    return [
        record
        for record in caplog.records
        if record.levelno >= logging.ERROR
        and record.exc_info
        and says in f"{record.exc_info[1]!r} {record.exc_info[1]}"
    ]


async def assert_failed_at_once_with_a_refund(api: Api, task: dict[str, Any]) -> None:
    assert task["status"] == "failed", task
    assert (task["error_code"], task["consumed_credit"]) == (1001, 0), task
    assert "stopped responding" not in task["error_msg"]
    assert await moves_of(api, task["task_id"]) == ["hold", "refund"]
    assert await api.balance() == {"balance": CREDITS, "frozen": 0}


def pillow_fails_on_references(monkeypatch: pytest.MonkeyPatch, error: OSError) -> None:
    """Pillow raises ``error`` when the backend converts a reference it read from bytes, as
    it does on a file it cannot decode. Easel's own decode at intake does not convert, so
    the reference still passes it."""
    real = Image.Image.convert

    def convert(self: Image.Image, *args: Any, **kwargs: Any) -> Image.Image:
        if self.format is not None:  # read from bytes, not made by Image.new
            raise error
        return real(self, *args, **kwargs)

    monkeypatch.setattr(Image.Image, "convert", convert)


async def test_a_backend_that_raises_unexpectedly_fails_the_task_at_once_with_a_refund(
    database_url: str, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING)
    async with running_api(settings_for(database_url, **PATIENT), credits=CREDITS) as api:
        token = await api.upload(png())
        error = OSError("broken data stream when reading image file")
        pillow_fails_on_references(monkeypatch, error)
        task_id = await submit(api, file={"type": "png", "file_token": token})
        task = await api.wait(task_id, timeout_s=10)
        await assert_failed_at_once_with_a_refund(api, task)
    message = "backend 'dry' failed unexpectedly: OSError: broken data stream"
    assert message in task["error_msg"]
    assert [(a["backend"], a["outcome"]) for a in task["attempts"]] == [("dry", "failed")]
    assert tracebacks(caplog, "broken data stream"), "no traceback in the log"


async def test_a_network_error_leaking_from_a_backend_falls_back_to_the_next_one(
    database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A network error is the provider being away, not a bug: the attempt is retryable and
    the next backend of the chain runs the task."""
    chain = {"backends": {"first": {"kind": "placeholder"}, "second": {"kind": "placeholder"}}}
    settings = settings_for(
        database_url, **chain, models={"flux.1_kontext_pro": {"backends": ["first", "second"]}}
    )
    async with running_api(settings, credits=CREDITS) as api:
        token = await api.upload(png())
        real = Image.Image.convert
        calls = [0]

        def convert_once_reset(self: Image.Image, *args: Any, **kwargs: Any) -> Image.Image:
            if self.format is not None and not calls[0]:
                calls[0] += 1
                raise ConnectionResetError(104, "Connection reset by peer")
            return real(self, *args, **kwargs)

        monkeypatch.setattr(Image.Image, "convert", convert_once_reset)
        task = await api.wait(await submit(api, file={"type": "png", "file_token": token}))
    assert task["status"] == "success", task
    outcomes = [(a["backend"], a["outcome"]) for a in task["attempts"]]
    assert outcomes == [("first", "retryable"), ("second", "success")]
    assert "ConnectionResetError" in task["attempts"][0]["error"]


async def test_a_sql_error_while_running_a_task_fails_it_at_once_with_a_refund(
    database_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    """An IntegrityError (a bug in a statement, here raised by a trigger on the attempts
    table) is not an outage: the task fails on its first run, and the client's message
    names the error without the SQL statement."""
    caplog.set_level(logging.WARNING)
    async with running_api(settings_for(database_url, **PATIENT), credits=CREDITS) as api:
        await refuse_inserts(engine_of(api.runtime.store), "attempts", "refused by a test trigger")
        task = await api.wait(await submit(api), timeout_s=10)
        await assert_failed_at_once_with_a_refund(api, task)
    assert task["error_msg"].startswith("internal error: IntegrityError: ")
    assert "refused by a test trigger" in task["error_msg"]
    assert "INSERT" not in task["error_msg"]
    assert task["attempts"] == []  # the attempt's row is what could not be written
    assert tracebacks(caplog, "refused by a test trigger"), "no traceback in the log"


async def test_a_postgresql_shutdown_while_running_a_task_leaves_it_to_be_reclaimed(
    postgres_database: str, caplog: pytest.LogCaptureFixture
) -> None:
    """57P01 ("terminating connection due to administrator command") is an outage: the task
    is left to be reclaimed, not failed, and succeeds once the server answers again."""
    await reset_schema(postgres_database)
    caplog.set_level(logging.INFO)
    settings = settings_for(postgres_database, lease_s=0.5, max_attempts=5)
    async with running_api(settings, credits=CREDITS) as api:
        engine = engine_of(api.runtime.store)
        await refuse_inserts(engine, "attempts", TERMINATING, sqlstate="57P01")
        task_id = await submit(api)
        await until(lambda: any("interrupted" in r.getMessage() for r in caplog.records))
        await allow_inserts(engine, "attempts")
        task = await api.wait(task_id, timeout_s=15)
        assert task["status"] == "success", task
        assert await moves_of(api, task_id) == ["hold", "settle"]
        assert await api.balance() == {"balance": CREDITS - PRICE, "frozen": 0}
    assert not tracebacks(caplog, TERMINATING)  # an outage is a warning, not a traceback


async def test_a_janitor_pass_that_meets_a_bug_logs_its_traceback_and_the_next_pass_runs(
    database_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="easel.services.janitor")
    settings = settings_for(database_url, queue_timeout_s=0.2, janitor_interval_s=0.05)
    async with running_api(settings, run_worker=False, credits=CREDITS) as api:
        engine = engine_of(api.runtime.store)
        task_id = await submit(api)
        await refuse_inserts(engine, "ledger", "refused by a test trigger")
        await until(lambda: bool(tracebacks(caplog, "refused by a test trigger")))
        await allow_inserts(engine, "ledger")
        task = await api.wait(task_id, timeout_s=10)
        assert task["status"] == "expired", task
        assert await moves_of(api, task_id) == ["hold", "refund"]
