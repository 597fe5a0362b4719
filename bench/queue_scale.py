"""Queue scale: what a claim, a submit and a queued task's poll cost as the queue grows.

For each queue size (``--sizes``, default 10, 1,000 and 100,000 queued tasks spread over
``--keys`` keys), on SQLite (a file in a temporary directory) and, with ``--postgres URL``,
on a scratch PostgreSQL database made beside URL and dropped after, it fills the queue with
one bulk insert (rows as a submit writes them; credits are not held, which these figures
do not depend on), then times, as the median and the worst of ``--repeat`` calls:

- ``claim``: a worker's claim of the next task (fair between keys: the key with the fewest
  running tasks first, then the oldest task);
- ``position``: ``queuing_num`` of the newest queued task (every other task is ahead of it);
- ``view``: the whole read of ``GET /task`` for that task (task, position, estimates);
- ``submit``: one more task from a key that already has its share of the queue.

The goal (issue 18) is that each stays O(log n) or bounded: the 100,000 column should be a
small multiple of the 10 column, not 10,000 times it. Usage::

    .venv/bin/python bench/queue_scale.py [--sizes 10,1000,100000] [--keys 25]
        [--repeat 20] [--postgres postgresql+asyncpg://postgres@127.0.0.1:5432/test]
"""

from __future__ import annotations

import argparse
import asyncio
import platform
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))

from throughput import _cpus, _scratch_postgres  # the sibling script, found through the line above

from easel.domain.accounts import Caller
from easel.store import SqlStore, open_store
from easel.store.records import NewTask
from easel.store.tables import tasks

MODEL = "flux.1_kontext_pro"
CHUNK = 5_000  # rows per INSERT of the fill


async def _callers(store: SqlStore, count: int) -> list[Caller]:
    keys = [await store.accounts.create_key(f"bench-{n}", 10**9) for n in range(count)]
    return [await store.accounts.authenticate(key) for key in keys]


async def _fill(store: SqlStore, callers: list[Caller], size: int, start: float) -> None:
    """``size`` queued tasks, taking turns among ``callers``, oldest first."""
    rows: list[dict[str, Any]] = []
    for n in range(size):
        caller = callers[n % len(callers)]
        rows.append(
            {
                "id": str(uuid.uuid4()),
                "account_id": caller.account_id,
                "api_key_id": caller.key_id,
                "type": "generate_image",
                "status": "queued",
                "model_version": MODEL,
                "input": {"prompt": f"task {n}"},
                "prompt": f"task {n}",
                "refs": [],
                "price": 5,
                "consumed_credit": 0,
                "progress": 0,
                "attempts": 0,
                "created_at": start + n * 1e-4,
            }
        )
    async with store.engine.begin() as conn:
        for at in range(0, len(rows), CHUNK):
            await conn.execute(tasks.insert(), rows[at : at + CHUNK])


async def _timed(call: Callable[[], Awaitable[object]], repeat: int) -> tuple[float, float]:
    """Median and worst of ``repeat`` calls, in milliseconds."""
    spent = []
    for _ in range(repeat):
        began = time.perf_counter()
        await call()
        spent.append((time.perf_counter() - began) * 1000)
    return statistics.median(spent), max(spent)


async def measure(database_url: str, size: int, keys: int, repeat: int) -> dict[str, Any]:
    store = await open_store(database_url)
    try:
        callers = await _callers(store, keys)
        await _fill(store, callers, size, time.time() - 3600)
        if database_url.startswith("postgresql"):
            async with store.engine.connect() as conn:
                await conn.exec_driver_sql("ANALYZE")
        newest = await store.tasks.submit(
            callers[0],
            NewTask(str(uuid.uuid4()), "generate_image", MODEL, {}, "newest", (), 5),
            max_unfinished=10**9,
            retry_after_s=1,
        )
        task = await store.tasks.get(newest)
        assert task is not None
        figures: dict[str, Any] = {"queued": size + 1}
        figures["position"] = await _timed(lambda: store.tasks.position(task), repeat)
        figures["view"] = await _timed(lambda: store.tasks.view(newest), repeat)
        figures["claim"] = await _timed(
            lambda: store.queue.claim("bench-worker", [MODEL], 60.0), repeat
        )
        figures["submit"] = await _timed(
            lambda: store.tasks.submit(
                callers[1],
                NewTask(str(uuid.uuid4()), "generate_image", MODEL, {}, "more", (), 5),
                max_unfinished=10**9,
                retry_after_s=1,
            ),
            repeat,
        )
        figures["position_value"] = await store.tasks.position(task)
        return figures
    finally:
        await store.close()


def _cell(pair: tuple[float, float]) -> str:
    return f"{pair[0]:8.2f} / {pair[1]:8.2f}"


def report(label: str, rows: list[dict[str, Any]]) -> None:
    print(f"\n{label}: median / worst ms of each call")
    print(f"{'queued':>8}  {'claim':>19}  {'position':>19}  {'view':>19}  {'submit':>19}")
    for row in rows:
        cells = "  ".join(_cell(row[name]) for name in ("claim", "position", "view", "submit"))
        print(f"{row['queued']:>8}  {cells}")
    first, last = rows[0], rows[-1]
    ratios = ", ".join(
        f"{name} ×{last[name][0] / max(first[name][0], 1e-9):.1f}"
        for name in ("claim", "position", "view", "submit")
    )
    print(f"largest / smallest queue (medians): {ratios}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="10,1000,100000")
    parser.add_argument("--keys", type=int, default=25)
    parser.add_argument("--repeat", type=int, default=20)
    parser.add_argument("--postgres", help="an admin URL (postgresql+asyncpg://…)")
    args = parser.parse_args(argv)
    sizes = [int(size) for size in args.sizes.split(",")]
    print(f"{platform.python_version()} on {_cpus()}; {args.keys} keys; {args.repeat} calls each")
    with tempfile.TemporaryDirectory() as tmp:
        rows = []
        for size in sizes:
            url = f"sqlite+aiosqlite:///{tmp}/q{size}.db"
            rows.append(asyncio.run(measure(url, size, args.keys, args.repeat)))
    report("SQLite", rows)
    if args.postgres:
        rows = []
        for size in sizes:
            with _scratch_postgres(args.postgres) as url:
                rows.append(asyncio.run(measure(url, size, args.keys, args.repeat)))
        report("PostgreSQL", rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
