"""The store contract, part 3: one key changed from every side at once, on the in-memory store,
SQLite and PostgreSQL (``any_store``).

On PostgreSQL each change of a task is one statement committed on its own and a submit
decides its limit before taking the account's lock (``easel.store.changes``,
``easel.store.submit``); SQLite runs each change as a transaction under its single writer.
Both must leave the same books: these tests run submits, claims, progress, settlements,
refunds, releases and cancels of one key concurrently, then audit what was written."""

from __future__ import annotations

import asyncio
import itertools
from collections import Counter
from collections.abc import Awaitable, Callable
from typing import Any

from sqlalchemy import select, update

from easel.domain.accounts import Caller
from easel.domain.errors import IdempotencyConflict, TooManyUnfinishedTasks
from easel.domain.events import Event
from easel.domain.tasks import FINAL, REFUNDED, UNFINISHED, Status, Task, can_move
from easel.store import SqlStore, Store, open_store
from easel.store.db import transaction
from easel.store.records import Idempotency
from easel.store.tables import accounts, ledger
from test_store_contract import MODEL, caller_with, current, new_task, submit

PRICE = 5
EVERY_EVENT = [f"task.{s.value}" for s in Status if s is not Status.UNKNOWN]


async def all_events(store: Store, caller: Caller) -> list[Event]:
    return await store.events.after(caller.account_id, caller.key_id, 0, limit=100_000)


async def audit(store: Store, caller: Caller, granted: int, task_ids: list[str]) -> list[Task]:
    """The books of ``caller``'s account after the dust settled; returns its tasks."""
    found = [await current(store, task_id) for task_id in task_ids]
    assert all(task.status in FINAL for task in found), Counter(t.status for t in found)
    balance = await store.accounts.balance(caller.account_id)
    assert await store.accounts.ledger_sums(caller.account_id) == balance
    consumed = sum(task.consumed_credit for task in found)
    assert consumed == PRICE * sum(task.status is Status.SUCCESS for task in found)
    assert (balance.balance + balance.frozen + consumed, balance.frozen) == (granted, 0)
    # The log: numbered 1..n with none missing; each task's events walk the table of moves
    # from queued to one final event, its last.
    events = await all_events(store, caller)
    assert [e.seq for e in events] == list(range(1, len(events) + 1))
    assert await store.events.last_seq(caller.account_id) == len(events)
    walks: dict[str, list[Status]] = {}
    for e in events:
        walks.setdefault(e.task_id, []).append(e.status)
    assert sorted(walks) == sorted(task_ids)
    for task in found:
        walk = walks[task.id]
        assert walk[0] is Status.QUEUED and walk[-1] is task.status
        assert sum(status in FINAL for status in walk) == 1
        moves = [(a, b) for a, b in itertools.pairwise(walk) if a is not b]
        assert all(can_move(a, b) for a, b in moves), walk
    if isinstance(store, SqlStore):
        await _ledger_rows_per_task(store, found)
    return found


async def _ledger_rows_per_task(store: SqlStore, found: list[Task]) -> None:
    """SQL stores: each task has its hold and, final, one settle or one refund."""
    async with store.engine.connect() as conn:
        rows = (await conn.execute(select(ledger.c.task_id, ledger.c.kind))).all()
    kinds = Counter((task_id, kind) for task_id, kind in rows if task_id is not None)
    for task in found:
        end = "settle" if task.status is Status.SUCCESS else "refund"
        assert task.status is Status.SUCCESS or task.status in REFUNDED
        assert (kinds[(task.id, "hold")], kinds[(task.id, end)]) == (1, 1), task.status
    assert sum(kinds.values()) == 2 * len(found)


async def audit_outbox(store: Store, caller: Caller, webhook_id: str) -> None:
    """One delivery per event that changed its task's status (progress only: none)."""
    expected: Counter[tuple[str, str]] = Counter()
    last: dict[str, Status] = {}
    for e in await all_events(store, caller):
        if last.get(e.task_id) is not e.status:
            expected[(e.task_id, f"task.{e.status.value}")] += 1
        last[e.task_id] = e.status
    deliveries = await store.webhooks.deliveries(webhook_id, limit=100_000)
    assert Counter((d.task_id, d.event_type) for d in deliveries) == expected


def unfinished_at_most(events: list[Event]) -> int:
    """The most unfinished tasks the key had at once, replaying its log in number order
    (the order the account's changes committed in)."""
    status: dict[str, Status] = {}
    most = 0
    for e in events:
        status[e.task_id] = e.status
        most = max(most, sum(s in UNFINISHED for s in status.values()))
    return most


async def test_concurrent_submits_of_one_key_accept_exactly_its_limit(any_store: Store) -> None:
    caller = await caller_with(any_store, credits=1_000)
    limit = 7

    async def attempt() -> str | None:
        try:
            return await submit(any_store, caller, price=PRICE, limit=limit)
        except TooManyUnfinishedTasks:
            return None

    outcomes = await asyncio.gather(*(attempt() for _ in range(40)))
    accepted = [task_id for task_id in outcomes if task_id is not None]
    assert len(accepted) == limit
    balance = await any_store.accounts.balance(caller.account_id)
    assert (balance.balance, balance.frozen) == (1_000 - limit * PRICE, limit * PRICE)
    assert await any_store.accounts.ledger_sums(caller.account_id) == balance
    events = await all_events(any_store, caller)
    assert [(e.seq, e.status) for e in events] == [(n, Status.QUEUED) for n in range(1, 8)]
    assert sorted(e.task_id for e in events) == sorted(accepted)


async def test_the_limit_holds_while_the_key_s_tasks_finish(any_store: Store) -> None:
    """Submits near the limit while workers claim and finish the key's tasks (every change
    moves the account's event number): never more than the limit unfinished at once."""
    caller = await caller_with(any_store, credits=10_000)
    limit, accepted, refused = 3, [], 0
    submitting = True

    async def submitter() -> None:
        nonlocal refused
        for _ in range(15):
            try:
                accepted.append(await submit(any_store, caller, price=PRICE, limit=limit))
            except TooManyUnfinishedTasks:
                refused += 1
            await asyncio.sleep(0)

    async def worker(name: str) -> None:
        while submitting or await _any_unfinished(any_store, accepted):
            task = await any_store.queue.claim(name, [MODEL], 30)
            if task is None:
                await asyncio.sleep(0.002)
                continue
            assert await any_store.queue.complete(task, f"outputs/{task.id}.png", "dry")

    async def submit_all() -> None:
        nonlocal submitting
        await asyncio.gather(*(submitter() for _ in range(4)))
        submitting = False

    await asyncio.gather(submit_all(), worker("w1"), worker("w2"))
    assert len(accepted) + refused == 60 and accepted
    await audit(any_store, caller, 10_000, accepted)
    assert unfinished_at_most(await all_events(any_store, caller)) <= limit


async def _any_unfinished(store: Store, task_ids: list[str]) -> bool:
    for task_id in task_ids:
        if (await current(store, task_id)).status in UNFINISHED:
            return True
    return False


async def test_concurrent_submits_with_one_idempotency_key_make_one_task(
    any_store: Store,
) -> None:
    caller = await caller_with(any_store, credits=1_000)
    key = Idempotency("same", "body")

    async def attempt() -> str:
        return await any_store.tasks.submit(
            caller, new_task(PRICE), max_unfinished=100, retry_after_s=1, idempotency=key
        )

    ids = await asyncio.gather(*(attempt() for _ in range(12)))
    assert len(set(ids)) == 1
    other = Idempotency("same", "another body")
    conflicts = await asyncio.gather(
        *(
            any_store.tasks.submit(
                caller, new_task(PRICE), max_unfinished=100, retry_after_s=1, idempotency=other
            )
            for _ in range(4)
        ),
        return_exceptions=True,
    )
    assert all(isinstance(c, IdempotencyConflict) for c in conflicts)
    assert [t.id for t in await any_store.tasks.recent(caller.key_id, 10)] == [ids[0]]
    balance = await any_store.accounts.balance(caller.account_id)
    assert (balance.balance, balance.frozen) == (1_000 - PRICE, PRICE)
    assert [e.seq for e in await all_events(any_store, caller)] == [1]


async def test_one_key_changed_from_every_side_at_once_keeps_exact_books(
    any_store: Store,
) -> None:
    """Submitters, workers (progress, success, failure, ban, release; one whose leases lapse
    at once), cancels and the janitor's sweeps, all on one key at once; then the books:
    credits, the log, the outbox."""
    granted = 10_000
    caller = await caller_with(any_store, credits=granted)
    hook = await any_store.webhooks.create(
        caller,
        url="http://127.0.0.1:9/hook",
        event_types=EVERY_EVENT,
        secret="whsec_test",
        base_url="http://127.0.0.1",
    )
    task_ids: list[str] = []
    released: set[str] = set()
    state = {"submitting": True}

    async def submitter(count: int) -> None:
        for n in range(count):
            task_ids.append(await submit(any_store, caller, price=PRICE, limit=1_000))
            if n % 6 == 0:  # at once: queued, or claimed already
                await any_store.tasks.cancel(task_ids[-1], caller.key_id)
            await asyncio.sleep(0)

    async def canceller() -> None:
        while state["submitting"]:
            for task_id in task_ids[::4]:
                await any_store.tasks.cancel(task_id, caller.key_id)
            await asyncio.sleep(0.003)

    async def sweeper() -> None:
        while state["submitting"] or await _any_unfinished(any_store, task_ids):
            await any_store.queue.reclaim_lapsed(max_attempts=3)
            await asyncio.sleep(0.005)

    async def worker(name: str, lease_s: float = 30) -> None:
        while state["submitting"] or await _any_unfinished(any_store, task_ids):
            task = await any_store.queue.claim(name, [MODEL], lease_s)
            if task is None:
                await asyncio.sleep(0.002)
                continue
            await _work(any_store, task, released)

    async def everyone() -> None:
        await asyncio.gather(*(submitter(12) for _ in range(3)))
        state["submitting"] = False

    workers = [worker(f"w{n}") for n in range(3)]
    workers.append(worker("lapsing", lease_s=-1))  # its leases lapse at once: the sweeps
    await asyncio.gather(everyone(), canceller(), sweeper(), *workers)
    found = await audit(any_store, caller, granted, task_ids)
    assert len(found) == 36
    await audit_outbox(any_store, caller, hook.id)
    assert {t.status for t in found} >= {Status.SUCCESS, Status.CANCELLED}


async def _work(store: Store, task: Task, released: set[str]) -> None:
    """What a worker does with ``task``, chosen by its id: a progress event or two, then a
    success, a failure, a ban, or a release (once: the task is claimed again)."""
    beat = await store.queue.heartbeat(task, 30, 40)
    if not beat.ours:
        return
    if beat.cancel:
        assert await store.queue.fail(task, Status.CANCELLED, None, None)
        return
    await store.queue.heartbeat(task, 30, 40)  # the same progress: no event
    await store.queue.heartbeat(task, 30, 80)
    ends: list[Callable[[], Awaitable[Any]]] = [
        lambda: store.queue.complete(task, f"outputs/{task.id}.png", "dry"),
        lambda: store.queue.fail(task, Status.FAILED, 1001, "failed"),
        lambda: store.queue.fail(task, Status.BANNED, 2003, "banned"),
        lambda: store.queue.complete(task, f"outputs/{task.id}.png", "dry"),
    ]
    if task.id not in released and int(task.id[:2], 16) % 3 == 0:
        released.add(task.id)
        await store.queue.release(task)
        return
    await ends[int(task.id[-2:], 16) % len(ends)]()


async def test_submits_that_waited_for_the_account_decide_on_what_committed_meanwhile(
    database_url: str,
) -> None:
    """Submits that read the key's state and then waited for its account row (another
    transaction held it): one more task fits the limit, so one is accepted and the others
    refused; of two with the same Idempotency-Key one task is made, the other replays it.
    (PostgreSQL: the statement re-checks under the lock and hands what it cannot decide to
    the locked path; SQLite: the submits wait for the single writer.)"""
    store = await open_store(database_url)
    try:
        caller = await caller_with(store, credits=1_000)
        limit = 3
        for _ in range(limit - 1):
            await submit(store, caller, price=PRICE, limit=limit)
        key = Idempotency("once", "body")

        async def limited() -> str | None:
            try:
                return await submit(store, caller, price=PRICE, limit=limit)
            except TooManyUnfinishedTasks:
                return None

        async def keyed() -> str:
            return await store.tasks.submit(
                caller, new_task(PRICE), max_unfinished=100, retry_after_s=1, idempotency=key
            )

        async with transaction(store.engine) as conn:  # the account row (SQLite: the writer)
            mine = accounts.c.id == caller.account_id
            await conn.execute(update(accounts).where(mine).values(name=accounts.c.name))
            waiting = [asyncio.create_task(limited()) for _ in range(3)]
            await asyncio.sleep(0.3)  # they read, then wait for the row
        outcomes = await asyncio.gather(*waiting)
        assert sum(task_id is not None for task_id in outcomes) == 1
        async with transaction(store.engine) as conn:
            await conn.execute(update(accounts).where(mine).values(name=accounts.c.name))
            both = [asyncio.create_task(keyed()) for _ in range(2)]
            await asyncio.sleep(0.3)
        first, second = await asyncio.gather(*both)
        assert first == second
        tasks = await store.tasks.recent(caller.key_id, 10)
        assert len(tasks) == limit + 1
        balance = await store.accounts.balance(caller.account_id)
        assert (balance.balance, balance.frozen) == (1_000 - 4 * PRICE, 4 * PRICE)
        assert [e.seq for e in await all_events(store, caller)] == [1, 2, 3, 4]
    finally:
        await store.close()
