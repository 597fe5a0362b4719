"""Worker ids fit the database whatever the hostname (Kubernetes pod names are 63 characters),
and a worker that cannot register says why and stops instead of looping: a definite error at
once, an unreachable database after a bounded, logged wait."""

from __future__ import annotations

import asyncio
import logging
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import IO

import httpx
import pytest
from sqlalchemy import text

from apptools import Api, engine_of, running_api, settings_for
from conftest import reset_schema
from easel.store import Store, open_store
from easel.worker.identity import WORKER_ID_MAX, WorkerCannotRegister, new_worker_id
from easel.worker.runner import Worker
from processes import (
    create_key,
    easel_process,
    free_port,
    wait_healthy,
    write_config,
)
from tcpproxy import TcpProxy

EASEL = str(Path(sys.executable).parent / "easel")
HOSTNAMES = ["a" * 63, "b" * 255, "", "pod.with-dots_and.more", "hôte ünicode/with space"]


@pytest.mark.parametrize("hostname", HOSTNAMES)
def test_worker_ids_fit_the_column_whatever_the_hostname(hostname: str) -> None:
    ids = {new_worker_id(hostname, pid=4194304) for _ in range(1000)}
    assert len(ids) == 1000  # a random suffix: hosts that share a long prefix never collide
    for worker_id in ids:
        assert len(worker_id) <= WORKER_ID_MAX
        assert re.fullmatch(r"[A-Za-z0-9._-]+-4194304-[0-9a-f]{8}", worker_id), worker_id
    readable = next(iter(ids)).rsplit("-", 2)[0]
    assert readable == (re.sub(r"[^A-Za-z0-9._-]", "_", hostname) or "worker")[: len(readable)]
    assert len(readable) >= min(len(hostname), 40)  # most of the hostname is kept


def test_an_explicit_worker_id_past_the_column_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=str(WORKER_ID_MAX)):
        Worker(
            None,  # type: ignore[arg-type]  # refused before anything is used
            None,  # type: ignore[arg-type]
            None,  # type: ignore[arg-type]
            settings_for(f"sqlite+aiosqlite:///{tmp_path / 'e.db'}"),
            worker_id="w" * (WORKER_ID_MAX + 1),
            models=[],
        )


def worker_for(api: Api, worker_id: str) -> Worker:
    runtime = api.runtime
    return Worker(
        runtime.store, runtime.objects, runtime.router, runtime.settings, worker_id=worker_id
    )


async def test_a_worker_on_a_host_with_a_255_character_name_runs_tasks(database_url: str) -> None:
    async with running_api(settings_for(database_url), run_worker=False) as api:
        stop = asyncio.Event()
        running = asyncio.create_task(worker_for(api, new_worker_id("h" * 255)).run(stop))
        try:
            submitted = await api.submit(prompt="a fox")
            task = await api.wait(submitted.json()["data"]["task_id"], timeout_s=30)
            assert task["status"] == "success"
        finally:
            stop.set()
            await running


async def refuse_new_workers(store: Store) -> None:
    """A trigger that refuses every new worker row: a definite error (a constraint
    violation), not an outage."""
    message = "workers refused by the test"
    engine = engine_of(store)
    async with engine.begin() as conn:
        if engine.dialect.name == "sqlite":
            await conn.execute(
                text(
                    "CREATE TRIGGER refuse_workers BEFORE INSERT ON workers "
                    f"BEGIN SELECT RAISE(ABORT, '{message}'); END"
                )
            )
            return
        await conn.execute(
            text(
                "CREATE FUNCTION refuse_workers() RETURNS trigger LANGUAGE plpgsql AS $$ "
                f"BEGIN RAISE EXCEPTION '{message}' USING ERRCODE = 'check_violation'; END $$"
            )
        )
        await conn.execute(
            text(
                "CREATE TRIGGER refuse_workers BEFORE INSERT ON workers "
                "FOR EACH ROW EXECUTE FUNCTION refuse_workers()"
            )
        )


async def test_a_worker_that_cannot_register_stops_at_once_and_says_why(
    database_url: str,
) -> None:
    async with running_api(settings_for(database_url), run_worker=False) as api:
        await refuse_new_workers(api.runtime.store)
        worker = worker_for(api, "refused-worker")
        with pytest.raises(WorkerCannotRegister) as refused:
            await asyncio.wait_for(worker.run(asyncio.Event()), timeout=20)
    message = str(refused.value)
    assert "'refused-worker' cannot register" in message
    assert "workers refused by the test" in message
    assert "\n" not in message  # one line for the log, no SQL dump


async def test_an_in_process_worker_that_cannot_register_shows_in_readyz(
    database_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    """``easel serve`` with its worker inside: the API stays up (it serves reads) but says it
    is not ready, and why, instead of accepting tasks that nothing will run."""
    store = await open_store(database_url)
    try:
        await refuse_new_workers(store)
    finally:
        await store.close()
    async with running_api(settings_for(database_url)) as api:
        for _ in range(400):  # up to 20 s
            ready = await api.client.get("/readyz")
            if ready.status_code != 200:
                break
            await asyncio.sleep(0.05)
    assert ready.status_code == 503
    worker = ready.json()["checks"]["worker"]
    assert "cannot register" in worker and "workers refused by the test" in worker, worker
    assert "this process runs no tasks" in worker
    assert any("workers refused by the test" in r.getMessage() for r in caplog.records)


async def test_an_unreachable_database_is_waited_out_for_a_bounded_time(
    postgres_behind_proxy: tuple[str, TcpProxy], caplog: pytest.LogCaptureFixture
) -> None:
    url, proxy = postgres_behind_proxy
    caplog.set_level(logging.WARNING, logger="easel.worker")
    settings = settings_for(url, worker_register_timeout_s=1.5)
    async with running_api(settings, run_worker=False) as api:
        await proxy.cut()
        worker = worker_for(api, "patient-worker")
        with pytest.raises(WorkerCannotRegister, match=r"unreachable for 1\.5 s"):
            await asyncio.wait_for(worker.run(asyncio.Event()), timeout=20)
        await proxy.start()
    retries = [r for r in caplog.records if r.getMessage().startswith("cannot register")]
    assert len(retries) >= 2, [r.getMessage() for r in caplog.records]


# -- real processes ------------------------------------------------------------------------


def config_for(directory: Path, url: str) -> Path:
    """The placeholder config of ``processes.write_config``, on the database at ``url``."""
    config = write_config(directory, delay_s=0)
    lines = config.read_text().splitlines()
    assert lines[0].startswith("database_url")
    config.write_text("\n".join([f'database_url = "{url}"', *lines[1:]]) + "\n")
    return config


async def test_the_worker_command_exits_1_when_it_cannot_register(
    tmp_path: Path, database_url: str
) -> None:
    async with running_api(settings_for(database_url), run_worker=False) as api:
        await refuse_new_workers(api.runtime.store)
    proc = run_worker_command(config_for(tmp_path, database_url))
    assert proc.returncode == 1, proc.stderr
    assert "Traceback" not in proc.stderr, proc.stderr
    assert "cannot register" in proc.stderr and "workers refused by the test" in proc.stderr


def run_worker_command(config: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [EASEL, "worker", "--config", str(config)], capture_output=True, text=True, timeout=60
    )


def start_worker_on_host(hostname: str, config: Path, sink: IO[bytes]) -> subprocess.Popen[bytes]:
    """``easel worker`` in a UTS namespace of its own, whose hostname is ``hostname``."""
    command = f'hostname "{hostname}" && exec "{EASEL}" worker --config "{config}"'
    return subprocess.Popen(["unshare", "-u", "sh", "-c", command], stdout=sink, stderr=sink)


def _can_unshare() -> bool:
    if shutil.which("unshare") is None:
        return False
    return subprocess.run(["unshare", "-u", "true"], capture_output=True).returncode == 0


@pytest.mark.e2e
@pytest.mark.skipif(not _can_unshare(), reason="needs unshare -u (root or a user namespace)")
async def test_a_worker_on_a_host_with_a_63_character_name_claims_tasks_on_postgres(
    tmp_path: Path, postgres_database: str
) -> None:
    """The worker runs in a UTS namespace of its own whose hostname is 63 characters long
    (a Kubernetes pod name at the limit), against PostgreSQL, whose columns are bounded."""
    await reset_schema(postgres_database)
    config = config_for(tmp_path, postgres_database)
    key = create_key(config, credits=100)
    hostname = "easel-worker-" + "x" * 50
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    log = tmp_path / "easel.log"
    with (
        (tmp_path / "worker.log").open("wb") as worker_sink,
        easel_process(
            "serve", "--no-worker", "--port", str(port), "--config", str(config), log=log
        ) as server,
        start_worker_on_host(hostname, config, worker_sink) as worker,
    ):
        try:
            wait_healthy(base, server, log)
            headers = {"Authorization": f"Bearer {key}"}
            async with httpx.AsyncClient(base_url=base, headers=headers) as client:
                answer = await client.post(
                    "/v2/openapi/task", json={"type": "generate_image", "prompt": "a fox"}
                )
                task_id = answer.json()["data"]["task_id"]
                async with asyncio.timeout(30):
                    while True:
                        task = (await client.get(f"/v2/openapi/task/{task_id}")).json()["data"]
                        if task["status"] not in ("queued", "running"):
                            break
                        assert worker.poll() is None, (tmp_path / "worker.log").read_text()
                        await asyncio.sleep(0.1)
            assert task["status"] == "success", (tmp_path / "worker.log").read_text()
            worker_log = (tmp_path / "worker.log").read_text()
            assert f"worker {hostname[:40]}" in worker_log, worker_log
        finally:
            worker.terminate()
            worker.wait(timeout=30)
