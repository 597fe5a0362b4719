"""A missing S3 bucket, found at startup instead of after a paid backend run.

Against moto's S3 server on loopback (``s3server``): the server starts and ``/readyz`` says
in one line which bucket is missing and how to fix it; a task submitted meanwhile stays
queued, its backend never called and its credits only held, and completes once the bucket
exists; with ``storage_create_bucket`` the server creates the bucket itself.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from pathlib import Path
from typing import Any

import pytest

from apptools import Api, running_api, settings_for
from easel.config import Settings, load_settings
from easel.storage.check import RETRY_AFTER_S
from s3server import S3Server

CREDITS = 100
PRICE = 5  # flux.1_kontext_pro, the default model
PREFIX = "easel"


@pytest.fixture
def bucket(s3: S3Server, monkeypatch: pytest.MonkeyPatch) -> str:
    """A bucket name nobody has created yet, and the environment that reaches moto."""
    for name, value in s3.env().items():
        monkeypatch.setenv(name, value)
    return f"easel-{uuid.uuid4().hex[:12]}"


def s3_settings(tmp_path: Path, bucket: str, **overrides: Any) -> Settings:
    database = f"sqlite+aiosqlite:///{tmp_path / 'easel.db'}"
    return settings_for(database, storage_url=f"s3://{bucket}/{PREFIX}", **overrides)


def missing(bucket: str) -> str:
    return f"bucket {bucket!r} does not exist (create it, or set storage_create_bucket = true)"


async def ready_within(api: Api, timeout_s: float) -> dict[str, Any]:
    """/readyz's body once it answers 200 (the check probes a failed store every 2 s)."""
    async with asyncio.timeout(timeout_s):
        while True:
            ready = await api.client.get("/readyz")
            if ready.status_code == 200:
                body: dict[str, Any] = ready.json()
                return body
            await asyncio.sleep(0.1)


async def test_readyz_with_a_missing_bucket_says_which_and_how_to_fix_it_in_one_line(
    tmp_path: Path, bucket: str, s3: S3Server, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="easel.storage")
    async with running_api(s3_settings(tmp_path, bucket), run_worker=False) as api:
        ready = await api.client.get("/readyz")

        assert ready.status_code == 503, ready.text
        assert ready.json() == {
            "status": "unavailable",
            "checks": {"database": "ok", "object_store": missing(bucket), "models": "ok"},
        }
        assert len(ready.content) < 300  # was about 2 KB of obstore's Rust debug text
        startup = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
        assert startup == [
            f"object store s3://{bucket}/{PREFIX} is not usable: {missing(bucket)}. /readyz "
            "answers 503 and no task is claimed until it is (checked again every 2 s)"
        ]

        s3.create_bucket(bucket)  # as the operator would; a later check sees it
        body = await ready_within(api, timeout_s=RETRY_AFTER_S + 5)
    assert body["checks"]["object_store"] == "ok"
    assert f"object store s3://{bucket}/{PREFIX}: usable again" in caplog.text


async def test_a_task_waits_in_the_queue_unrun_until_its_output_can_be_stored(
    tmp_path: Path, bucket: str, s3: S3Server
) -> None:
    """A text task (no upload to fail first) used to run its paid backend and then fail at
    the output write. Now no worker claims it while the bucket is missing: it stays queued
    with no attempt and its credits held, and completes, charged once, once the bucket
    exists."""
    async with running_api(s3_settings(tmp_path, bucket), credits=CREDITS) as api:
        submitted = await api.submit(prompt="a lighthouse at dusk")
        assert submitted.status_code == 200, submitted.text
        task_id = submitted.json()["data"]["task_id"]
        await asyncio.sleep(RETRY_AFTER_S + 0.5)  # the worker has checked the store again

        waiting = await api.task(task_id)
        assert (waiting["status"], waiting["attempts"]) == ("queued", [])  # backend not called
        assert await api.balance() == {"balance": CREDITS - PRICE, "frozen": PRICE}

        s3.create_bucket(bucket)
        done = await api.wait(task_id, timeout_s=RETRY_AFTER_S + 15)
        assert done["status"] == "success", done
        assert [a["outcome"] for a in done["attempts"]] == ["success"]
        assert await api.balance() == {"balance": CREDITS - PRICE, "frozen": 0}
    assert s3.keys(bucket) == [f"{PREFIX}/outputs/{task_id}.png"]


@pytest.mark.parametrize("region", ["us-east-1", "eu-west-1"])
async def test_storage_create_bucket_creates_it_at_startup(
    tmp_path: Path,
    bucket: str,
    s3: S3Server,
    region: str,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Outside us-east-1, S3 wants the region named in CreateBucket (moto checks it too)."""
    monkeypatch.setenv("AWS_REGION", region)
    settings = s3_settings(tmp_path, bucket, storage_create_bucket=True)
    async with running_api(settings, credits=CREDITS) as api:
        ready = await api.client.get("/readyz")
        assert ready.status_code == 200, ready.text
        done = await api.wait((await api.submit(prompt="a kite")).json()["data"]["task_id"])
    assert done["status"] == "success", done
    assert s3.keys(bucket) == [f"{PREFIX}/outputs/{done['task_id']}.png"]
    assert f"created bucket {bucket!r} (storage_create_bucket = true)" in caplog.text


def test_storage_create_bucket_is_read_from_the_environment() -> None:
    env = {"EASEL_STORAGE_CREATE_BUCKET": "true", "EASEL_STORAGE_URL": "s3://easel/prod"}
    assert load_settings(env=env).storage_create_bucket is True
    assert load_settings(env={}).storage_create_bucket is False
