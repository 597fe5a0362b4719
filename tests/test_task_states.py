"""The task state machine: the one table of moves (domain.tasks.TRANSITIONS), and the store's
statements, built from it, refusing every move it does not hold."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import pytest

from easel.domain.tasks import FINAL, REFUNDED, TRANSITIONS, Status, Task, can_move, sources
from easel.store import SqlStore, open_store
from easel.store.db import transaction
from easel.store.lifecycle import end_with_refund, queued
from easel.store.records import NewTask

MODEL = "flux.1_kontext_pro"

# Every move a task may make, written out: the table the code must match.
ALLOWED = {
    (Status.QUEUED, Status.RUNNING),
    (Status.QUEUED, Status.EXPIRED),
    (Status.QUEUED, Status.CANCELLED),
    (Status.QUEUED, Status.FAILED),
    (Status.RUNNING, Status.QUEUED),
    (Status.RUNNING, Status.SUCCESS),
    (Status.RUNNING, Status.FAILED),
    (Status.RUNNING, Status.BANNED),
    (Status.RUNNING, Status.CANCELLED),
}


@pytest.mark.parametrize("current", list(Status))
@pytest.mark.parametrize("target", list(Status))
def test_the_table_of_moves(current: Status, target: Status) -> None:
    assert can_move(current, target) is ((current, target) in ALLOWED)


def test_final_states_are_final_and_sources_invert_the_table() -> None:
    assert all(not TRANSITIONS.get(status) for status in FINAL)
    for target in Status:
        assert sources(target) == {c for c, t in ALLOWED if t == target}
    assert sources(Status.UNKNOWN) == frozenset()  # nothing ever moves a task there


@pytest.fixture
async def store(database_url: str) -> AsyncIterator[SqlStore]:
    store = await open_store(database_url)
    try:
        yield store
    finally:
        await store.close()


async def submitted(store: SqlStore) -> tuple[str, str]:
    """A key with 100 credits and one task of 5 it submitted: (key, task id)."""
    key = await store.accounts.create_key("s", 100)
    caller = await store.accounts.authenticate(key)
    task_id = str(uuid.uuid4())
    new = NewTask(task_id, "generate_image", MODEL, {"prompt": "x"}, "x", (), 5)
    await store.tasks.submit(caller, new, max_unfinished=10, retry_after_s=1)
    return key, task_id


async def current(store: SqlStore, task_id: str) -> Task:
    task = await store.tasks.get(task_id)
    assert task is not None
    return task


async def test_a_finished_task_moves_no_more_and_its_credits_move_once(store: SqlStore) -> None:
    """A success cannot be refunded, failed or put back; the ledger shows one settle."""
    key, task_id = await submitted(store)
    claimed = await store.queue.claim("w", [MODEL], 30)
    assert claimed is not None
    assert await store.queue.complete(claimed, "outputs/x.png", "dry")
    assert not await store.queue.complete(claimed, "outputs/x.png", "dry")
    assert not await store.queue.fail(claimed, Status.FAILED, 1001, "late")
    assert not await store.queue.release(claimed)
    async with transaction(store.engine) as conn:  # even without the worker's fence
        assert not await end_with_refund(
            conn, queued(claimed), claimed, Status.CANCELLED, None, None
        )
    assert (await current(store, task_id)).status is Status.SUCCESS
    balance, ledger = await store.accounts.balance_of_key(key)
    assert (balance.balance, balance.frozen) == (95, 0)
    assert sorted(row.kind for row in ledger if row.task_id == task_id) == ["hold", "settle"]


@pytest.mark.parametrize("end", sorted(REFUNDED - {Status.EXPIRED}))
async def test_a_refunded_end_is_final(store: SqlStore, end: Status) -> None:
    key, task_id = await submitted(store)
    claimed = await store.queue.claim("w", [MODEL], 30)
    assert claimed is not None
    assert await store.queue.fail(claimed, end, 1001 if end is not Status.CANCELLED else None, "x")
    assert not await store.queue.complete(claimed, "outputs/x.png", "dry")
    assert not await store.queue.fail(claimed, end, None, "again")
    assert (await current(store, task_id)).status is end
    balance, _ = await store.accounts.balance_of_key(key)
    assert (balance.balance, balance.frozen) == (100, 0)


async def test_an_expired_task_cannot_be_claimed(store: SqlStore) -> None:
    _, task_id = await submitted(store)
    assert await store.queue.expire_queued(max_wait_s=-1) == 1
    assert await store.queue.claim("w", [MODEL], 30) is None
    assert (await current(store, task_id)).status is Status.EXPIRED
