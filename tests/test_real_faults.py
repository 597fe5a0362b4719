"""Real PostgreSQL faults under load: a server of the test's own (``tests/pgserver.py``)
restarted fast and immediately, its connections terminated, and stopped for 10 s, while
clients submit and poll through a real ``easel serve`` process.

Every answer is 200 or 503 (with ``Retry-After`` and the protocol envelope), the worker picks
up again by itself, every task ends ``success`` (a database fault fails no task: interrupted
work is reclaimed), the clients' tasks are exactly the database's, and every account's
credits balance. The figures (how long clients saw 503, when the first 200 came after the
database was back) are printed and written to ``test-artifacts/faults.json``.

The answers are checked last, after the tasks and the ledger, so a failure there still
shows that nothing was lost. During a restart asyncpg says "the database system is starting
up" / "shutting down" wrapped in SQLAlchemy's ``DBAPIError``; those must be classified as an
outage (``easel.store.outage``) to answer 503 rather than 500.

The same for the object store: an S3 server (moto, kept across restarts by
``tests/moto_restartable.py``) stopped for S3_DOWN_S and started again.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path

import asyncpg
import pytest

from easel.store import open_store
from faultload import Workload, ledger_problems, task_problems, task_rows
from moto_restartable import RestartableS3, restartable_moto
from pgserver import PostgresServer, postgres_server
from processes import easel_process, free_port, wait_healthy

pytestmark = [pytest.mark.e2e, pytest.mark.faults]

CLIENTS, GRANT = 3, 10_000
OUTAGE_S = 10.0
S3_DOWN_S = 10.0
CONFIG = """
database_url = "{url}"
storage_url = "{storage}"
lease_s = 2
max_attempts = 10
poll_interval_s = 0.2
worker_concurrency = 4
rate_limit_per_s = 0
max_unfinished_tasks = 100
[backends.dry]
kind = "placeholder"
delay_s = 0.3
width = 64
height = 64
[models."flux.1_kontext_pro"]
backends = ["dry"]
"""


@pytest.fixture(scope="module")
def server() -> Iterator[PostgresServer]:
    with postgres_server() as server:
        yield server


async def admin(server: PostgresServer, sql: str) -> None:
    conn = await asyncpg.connect(server.url(driver="postgresql"))
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


async def create_keys(url: str, count: int) -> list[str]:
    store = await open_store(url)
    try:
        return [await store.accounts.create_key(f"client-{n}", GRANT) for n in range(count)]
    finally:
        await store.close()


Fault = Callable[[PostgresServer, str], Awaitable[float]]


async def restart_fast(server: PostgresServer, database: str) -> float:
    await asyncio.to_thread(server.restart, "fast")
    return time.time()


async def restart_immediate(server: PostgresServer, database: str) -> float:
    await asyncio.to_thread(server.restart, "immediate")
    return time.time()


async def terminate_connections(server: PostgresServer, database: str) -> float:
    """``pg_terminate_backend`` on every connection Easel has open (its pool, its LISTEN)."""
    await admin(
        server,
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
        f"WHERE datname = '{database}' AND pid <> pg_backend_pid()",
    )
    return time.time()


async def refuse_for_a_while(server: PostgresServer, database: str) -> float:
    """Stopped: connections refused for OUTAGE_S, then started again."""
    await asyncio.to_thread(server.stop, "fast")
    await asyncio.sleep(OUTAGE_S)
    await asyncio.to_thread(server.start)
    return time.time()


@pytest.mark.parametrize(
    "fault",
    [restart_fast, restart_immediate, terminate_connections, refuse_for_a_while],
    ids=["restart-fast", "restart-immediate", "terminate-backends", "refused-10s"],
)
def test_a_postgres_fault_answers_503_strands_nothing_and_the_work_resumes(
    server: PostgresServer, fault: Fault, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    database = f"faults_{fault.__name__}"
    asyncio.run(admin(server, f"DROP DATABASE IF EXISTS {database} WITH (FORCE)"))
    asyncio.run(admin(server, f"CREATE DATABASE {database}"))
    url = server.url(database)
    config = tmp_path / "easel.toml"
    config.write_text(CONFIG.format(url=url, storage=f"file://{tmp_path / 'objects'}"))
    keys = asyncio.run(create_keys(url, CLIENTS))
    port, log = free_port(), tmp_path / "serve.log"
    base = f"http://127.0.0.1:{port}"
    with easel_process("serve", "--port", str(port), "--config", str(config), log=log) as proc:
        wait_healthy(base, proc, log)
        load = Workload(base, keys)
        figures = asyncio.run(load.run(lambda: fault(server, database)))
        logs = log.read_text(errors="replace")[-6000:]
        assert proc.poll() is None, logs

    rows = asyncio.run(task_rows(url))
    assert not task_problems(rows, load), (task_problems(rows, load)[:5], logs)
    assert {row.status for row in rows.values()} == {"success"}, logs
    assert not asyncio.run(ledger_problems(url, GRANT))
    back = figures.back_at  # the worker finished tasks again after the fault
    resumed = min(r.finished_at or 0 for r in rows.values() if (r.finished_at or 0) >= back)
    figures.report(
        request.node.callspec.id,
        reclaimed=sum(row.attempts - 1 for row in rows.values()),
        worker_resumed_after_s=round(resumed - back, 3),
    )
    if load.problems():
        pytest.fail(f"{load.describe_problems()}\n{logs}")


# -- the object store ----------------------------------------------------------------------------


@pytest.fixture
def s3(tmp_path: Path) -> Iterator[RestartableS3]:
    with restartable_moto(tmp_path / "s3") as s3:
        yield s3


async def stop_s3_for_a_while(s3: RestartableS3) -> float:
    await asyncio.to_thread(s3.stop)
    await asyncio.sleep(S3_DOWN_S)
    await asyncio.to_thread(s3.start)
    return time.time()


def test_an_s3_server_stopped_mid_run_answers_503_and_strands_nothing(
    s3: RestartableS3, tmp_path: Path
) -> None:
    """Clients upload a reference for every task and download every output while the S3
    server is stopped for S3_DOWN_S and started again (its data kept, as a real one keeps
    it). Answers are 200 or 503; every task ends final, a failed one refunded."""
    bucket = s3.server.create_bucket()
    url = f"sqlite+aiosqlite:///{tmp_path / 'easel.db'}"
    config = tmp_path / "easel.toml"
    config.write_text(CONFIG.format(url=url, storage=f"s3://{bucket}/easel"))
    keys = asyncio.run(create_keys(url, CLIENTS))
    port, log = free_port(), tmp_path / "serve.log"
    base = f"http://127.0.0.1:{port}"
    args = ("serve", "--port", str(port), "--config", str(config))
    with easel_process(*args, log=log, env=s3.server.env()) as proc:
        wait_healthy(base, proc, log)
        load = Workload(base, keys, references=True, downloads=True)
        figures = asyncio.run(load.run(lambda: stop_s3_for_a_while(s3)))
        logs = log.read_text(errors="replace")[-6000:]
        assert proc.poll() is None, logs

    rows = asyncio.run(task_rows(url))
    assert not task_problems(rows, load), (task_problems(rows, load)[:5], logs)
    assert not asyncio.run(ledger_problems(url, GRANT))
    outcomes = {row.status for row in rows.values()}
    assert outcomes <= {"success", "failed"}, logs
    later = {rows[s.task_id].status for s in load.submitted if s.sent >= figures.back_at}
    assert later == {"success"}, logs  # the worker stores outputs again
    figures.report(
        "s3-stopped",
        failed=sum(row.status == "failed" for row in rows.values()),
        reclaimed=sum(row.attempts - 1 for row in rows.values()),
    )
    if load.problems():
        pytest.fail(f"{load.describe_problems()}\n{logs}")
