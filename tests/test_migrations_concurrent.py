"""Processes that start together on an empty database (``easel serve --processes N``, a
rollout of several replicas) migrate it once, one after another: none of them fails.

Real processes: Alembic keeps its migration context in module globals, so migrators in one
process would not race the way separate processes do.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, text

from conftest import reset_schema
from easel.store.db import MIGRATIONS, alembic_config, create_engine
from easel.store.tables import metadata

MIGRATORS = 4
ROUNDS = 3

# Each process imports everything and connects first, says it is ready, then waits for the
# go file, so that all of them migrate at the same moment.
MIGRATOR = """
import asyncio, pathlib, sys, time
from easel.store import open_store
url, ready, go = sys.argv[1], pathlib.Path(sys.argv[2]), pathlib.Path(sys.argv[3])
ready.touch()
while not go.exists():
    time.sleep(0.002)
async def main() -> None:
    store = await open_store(url)
    await store.close()
asyncio.run(main())
"""


def migrate_concurrently(url: str, directory: Path) -> list[subprocess.CompletedProcess[str]]:
    go = directory / "go"
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", MIGRATOR, url, str(directory / f"ready-{n}"), str(go)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for n in range(MIGRATORS)
    ]
    deadline = time.monotonic() + 60
    while not all((directory / f"ready-{n}").exists() for n in range(MIGRATORS)):
        assert time.monotonic() < deadline, "the migrators did not start"
        time.sleep(0.01)
    go.touch()
    results = []
    for proc in procs:
        out, err = proc.communicate(timeout=120)
        results.append(subprocess.CompletedProcess(proc.args, proc.returncode, out, err))
    return results


async def assert_migrated_once(url: str) -> None:
    def check(connection: Connection) -> None:
        context = MigrationContext.configure(connection, opts={"compare_type": True})
        assert list(compare_metadata(context, metadata)) == []
        head = ScriptDirectory.from_config(alembic_config()).get_current_head()
        versions = connection.execute(text("SELECT version_num FROM alembic_version")).all()
        assert [row[0] for row in versions] == [head]

    engine = create_engine(url)
    try:
        async with engine.connect() as conn:
            await conn.run_sync(check)
    finally:
        await engine.dispose()


async def test_migrators_started_together_on_an_empty_database_all_succeed(
    database_url: str, tmp_path: Path
) -> None:
    assert MIGRATIONS.is_dir()
    for round_ in range(ROUNDS):
        directory = tmp_path / f"round-{round_}"
        directory.mkdir()
        url = database_url
        if database_url.startswith("sqlite"):
            url = f"sqlite+aiosqlite:///{directory / 'easel.db'}"
        else:
            await reset_schema(database_url)
        results = migrate_concurrently(url, directory)
        failed = [r.stderr[-3000:] for r in results if r.returncode != 0]
        assert not failed, f"round {round_}: {len(failed)} of {MIGRATORS} failed:\n{failed[0]}"
        await assert_migrated_once(url)
