"""The store contract, part 1: tasks, the queue and credits. Every test runs on the in-memory
store, SQLite and PostgreSQL (``any_store``): what the services rely on, so the in-memory store
can stand in for a database wherever a test is not about SQL."""

from __future__ import annotations

import asyncio
import uuid

import pytest

from easel.domain.accounts import Caller
from easel.domain.errors import IdempotencyConflict, NotEnoughCredit, TooManyUnfinishedTasks
from easel.domain.tasks import REFUNDED, AttemptOutcome, Status, Task
from easel.store import Store
from easel.store.records import Idempotency, NewTask

MODEL = "flux.1_kontext_pro"
OTHER_MODEL = "gpt_image_1"


def new_task(price: int = 5, model: str = MODEL) -> NewTask:
    return NewTask(str(uuid.uuid4()), "generate_image", model, {"prompt": "x"}, "x", (), price)


async def caller_with(store: Store, credits: int = 100, name: str = "c") -> Caller:
    return await store.accounts.authenticate(await store.accounts.create_key(name, credits))


async def submit(store: Store, caller: Caller, price: int = 5, limit: int = 10, **kw: str) -> str:
    new = new_task(price, kw.get("model", MODEL))
    return await store.tasks.submit(caller, new, max_unfinished=limit, retry_after_s=1)


async def current(store: Store, task_id: str) -> Task:
    task = await store.tasks.get(task_id)
    assert task is not None
    return task


async def credits(store: Store, caller: Caller) -> tuple[int, int]:
    balance = await store.accounts.balance(caller.account_id)
    assert await store.accounts.ledger_sums(caller.account_id) == balance
    return balance.balance, balance.frozen


async def claimed(store: Store, worker: str = "w", lease_s: float = 30) -> Task:
    task = await store.queue.claim(worker, [MODEL], lease_s)
    assert task is not None
    return task


# -- submit ---------------------------------------------------------------------------------


async def test_a_submit_holds_the_price_and_queues_the_task(any_store: Store) -> None:
    caller = await caller_with(any_store)
    task_id = await submit(any_store, caller, price=7)
    assert await credits(any_store, caller) == (93, 7)
    task = await current(any_store, task_id)
    assert (task.status, task.price, task.consumed_credit, task.attempts) == (
        Status.QUEUED,
        7,
        0,
        0,
    )
    assert (task.input, task.api_key_id) == ({"prompt": "x"}, caller.key_id)
    events = await any_store.events.after(caller.account_id, caller.key_id, 0)
    assert [(e.seq, e.task_id, e.status) for e in events] == [(1, task_id, Status.QUEUED)]


async def test_a_refused_submit_changes_nothing(any_store: Store) -> None:
    caller = await caller_with(any_store, credits=6)
    first = await submit(any_store, caller, price=5)
    with pytest.raises(NotEnoughCredit, match="costs 5 credits; the balance is 1"):
        await submit(any_store, caller, price=5)
    with pytest.raises(TooManyUnfinishedTasks) as limited:
        await submit(any_store, caller, price=1, limit=1)
    assert limited.value.retry_after_s == 1
    assert await credits(any_store, caller) == (1, 5)
    assert [t.id for t in await any_store.tasks.recent(caller.key_id, 10)] == [first]
    assert await any_store.events.last_seq(caller.account_id) == 1


async def test_an_idempotent_submit_returns_the_first_task(any_store: Store) -> None:
    caller = await caller_with(any_store)
    key = Idempotency("k1", "body-a")
    first = await any_store.tasks.submit(
        caller, new_task(), max_unfinished=10, retry_after_s=1, idempotency=key
    )
    again = await any_store.tasks.submit(
        caller, new_task(), max_unfinished=10, retry_after_s=1, idempotency=key
    )
    assert again == first
    with pytest.raises(IdempotencyConflict):
        await any_store.tasks.submit(
            caller,
            new_task(),
            max_unfinished=10,
            retry_after_s=1,
            idempotency=Idempotency("k1", "body-b"),
        )
    assert await credits(any_store, caller) == (95, 5)


async def test_concurrent_submits_never_overdraw_or_exceed_the_limit(any_store: Store) -> None:
    caller = await caller_with(any_store, credits=37)  # room for 7 tasks of 5

    async def attempt(limit: int) -> str:
        try:
            await submit(any_store, caller, limit=limit)
        except NotEnoughCredit:
            return "poor"
        except TooManyUnfinishedTasks:
            return "limited"
        return "ok"

    outcomes = await asyncio.gather(*(attempt(10) for _ in range(20)))
    assert (outcomes.count("ok"), outcomes.count("poor")) == (7, 13)
    assert await credits(any_store, caller) == (2, 35)
    rich = await caller_with(any_store, credits=10_000, name="rich")
    limited = await asyncio.gather(
        *(
            any_store.tasks.submit(rich, new_task(1), max_unfinished=5, retry_after_s=1)
            for _ in range(12)
        ),
        return_exceptions=True,
    )
    assert sum(isinstance(r, str) for r in limited) == 5
    assert all(isinstance(r, (str, TooManyUnfinishedTasks)) for r in limited)
    assert await credits(any_store, rich) == (10_000 - 5, 5)


# -- the queue: order, fencing, finishing ----------------------------------------------------


async def test_two_workers_never_claim_the_same_task(any_store: Store) -> None:
    caller = await caller_with(any_store, credits=500)
    for _ in range(12):
        await submit(any_store, caller, limit=100)
    claims = await asyncio.gather(*(any_store.queue.claim(f"w{i}", [MODEL], 30) for i in range(16)))
    ids = [task.id for task in claims if task is not None]
    assert len(ids) == len(set(ids)) == 12


async def test_claim_order_and_positions(any_store: Store) -> None:
    """The key with fewer running tasks first, then the oldest; of the models asked for only."""
    busy = await caller_with(any_store, name="busy")
    calm = await caller_with(any_store, name="calm")
    busy_ids = [await submit(any_store, busy) for _ in range(3)]
    assert (await claimed(any_store)).id == busy_ids[0]
    calm_id = await submit(any_store, calm)
    positions = {
        task_id: await any_store.tasks.position(await current(any_store, task_id))
        for task_id in [*busy_ids[1:], calm_id]
    }
    assert positions == {calm_id: 0, busy_ids[1]: 1, busy_ids[2]: 2}
    found = await any_store.tasks.view(calm_id, calm.key_id)
    assert found is not None and found[1].position == 0
    order = [(await claimed(any_store)).id for _ in range(3)]
    assert order == [calm_id, busy_ids[1], busy_ids[2]]
    other = await submit(any_store, busy, model=OTHER_MODEL)
    assert await any_store.queue.claim("w", [MODEL], 30) is None
    assert await any_store.queue.claim("w", [], 30) is None
    assert (await current(any_store, other)).status is Status.QUEUED


async def test_a_success_settles_the_price_exactly_once(any_store: Store) -> None:
    key = await any_store.accounts.create_key("c", 100)
    caller = await any_store.accounts.authenticate(key)
    task_id = await submit(any_store, caller)
    task = await claimed(any_store)
    attempt = await any_store.queue.start_attempt(task, "dry", "placeholder: a test card")
    assert await any_store.queue.complete(task, "outputs/x.png", "dry", attempt)
    assert not await any_store.queue.complete(task, "outputs/y.png", "dry")
    assert not await any_store.queue.fail(task, Status.FAILED, 1001, "late")
    assert not await any_store.queue.release(task)
    assert (await any_store.tasks.cancel(task_id, caller.key_id)) == await current(
        any_store, task_id
    )
    done = await current(any_store, task_id)
    assert (done.status, done.output_key, done.consumed_credit, done.progress) == (
        Status.SUCCESS,
        "outputs/x.png",
        5,
        100,
    )
    assert await credits(any_store, caller) == (95, 0)
    _, ledger = await any_store.accounts.balance_of_key(key)
    assert [(r.kind, r.balance_delta, r.frozen_delta) for r in ledger] == [
        ("settle", 0, -5),
        ("hold", -5, 5),
        ("grant", 100, 0),
    ]
    found = await any_store.tasks.view(task_id)
    assert found is not None
    assert [(a.backend, a.outcome, a.served_by) for a in found[1].attempts] == [
        ("dry", "success", "placeholder: a test card")
    ]
    assert await any_store.tasks.measured(MODEL, edits=False) is not None


@pytest.mark.parametrize("end", sorted(REFUNDED - {Status.EXPIRED}))
async def test_a_refunded_end_gives_the_price_back_and_is_final(
    any_store: Store, end: Status
) -> None:
    caller = await caller_with(any_store)
    task_id = await submit(any_store, caller)
    task = await claimed(any_store)
    code = None if end is Status.CANCELLED else 1001
    assert await any_store.queue.fail(task, end, code, "why")
    assert not await any_store.queue.complete(task, "outputs/x.png", "dry")
    assert not await any_store.queue.fail(task, end, code, "again")
    ended = await current(any_store, task_id)
    assert (ended.status, ended.error_code, ended.consumed_credit) == (end, code, 0)
    assert await credits(any_store, caller) == (100, 0)


async def test_a_stale_lease_cannot_finish_what_another_worker_claimed(any_store: Store) -> None:
    caller = await caller_with(any_store)
    task_id = await submit(any_store, caller)
    stale = await claimed(any_store, "w1", lease_s=-1)  # lapsed at once
    assert await any_store.queue.reclaim_lapsed(max_attempts=3) == 1
    assert (await current(any_store, task_id)).status is Status.QUEUED
    fresh = await claimed(any_store, "w2")
    assert fresh.attempts == 2
    beat = await any_store.queue.heartbeat(stale, 30, 50)
    assert not beat.ours
    assert not await any_store.queue.complete(stale, "outputs/stale.png", "dry")
    assert not await any_store.queue.fail(stale, Status.FAILED, 1001, "stale")
    assert not await any_store.queue.release(stale)
    assert (await any_store.queue.heartbeat(fresh, 30, 40)).ours
    assert (await current(any_store, task_id)).progress == 40
    assert await any_store.queue.complete(fresh, "outputs/fresh.png", "dry")
    assert (await current(any_store, task_id)).output_key == "outputs/fresh.png"
    assert await credits(any_store, caller) == (95, 0)


async def test_a_release_puts_the_task_back_without_counting_the_claim(any_store: Store) -> None:
    caller = await caller_with(any_store)
    task_id = await submit(any_store, caller)
    task = await claimed(any_store)
    assert await any_store.queue.release(task)
    back = await current(any_store, task_id)
    assert (back.status, back.attempts, back.worker_id) == (Status.QUEUED, 0, None)
    assert (await claimed(any_store)).attempts == 1
    assert await credits(any_store, caller) == (95, 5)


async def test_dead_leases_are_requeued_until_out_of_attempts(any_store: Store) -> None:
    caller = await caller_with(any_store)
    task_id = await submit(any_store, caller)
    for _ in range(2):
        await claimed(any_store, lease_s=-1)
        assert await any_store.queue.reclaim_lapsed(max_attempts=2) == 1
    assert (await current(any_store, task_id)).status is Status.FAILED
    failed = await current(any_store, task_id)
    assert failed.error_code == 1001 and "stopped responding 2 times" in (failed.error_msg or "")
    assert await credits(any_store, caller) == (100, 0)
    assert await any_store.queue.reclaim_lapsed(max_attempts=2) == 0


async def test_cancel(any_store: Store) -> None:
    """Queued: cancelled at once with a refund. Running: asked to stop (the heartbeat
    says so); a lapsed lease then ends it cancelled. Someone else's task: None."""
    caller = await caller_with(any_store)
    queued_id = await submit(any_store, caller)
    assert await any_store.tasks.cancel(queued_id, "another key") is None
    cancelled = await any_store.tasks.cancel(queued_id, caller.key_id)
    assert cancelled is not None and cancelled.status is Status.CANCELLED
    assert await credits(any_store, caller) == (100, 0)
    running_id = await submit(any_store, caller)
    task = await claimed(any_store, lease_s=-1)
    asked = await any_store.tasks.cancel(running_id, caller.key_id)
    assert asked is not None and asked.status is Status.RUNNING
    assert (await any_store.queue.heartbeat(task, -1, 0)).cancel
    assert await any_store.queue.reclaim_lapsed(max_attempts=3) == 1
    assert (await current(any_store, running_id)).status is Status.CANCELLED
    assert await credits(any_store, caller) == (100, 0)


async def test_expiry_and_failing_a_model_s_queue(any_store: Store) -> None:
    caller = await caller_with(any_store)
    kept = await submit(any_store, caller, model=OTHER_MODEL)
    doomed = await submit(any_store, caller)
    assert await any_store.queue.fail_queued(MODEL, "no backend could load") == 1
    assert (await current(any_store, doomed)).error_msg == "no backend could load"
    assert await any_store.queue.expire_queued(max_wait_s=3600) == 0
    assert await any_store.queue.expire_queued(max_wait_s=-1) == 1
    expired = await current(any_store, kept)
    assert (expired.status, expired.error_code) == (Status.EXPIRED, 1001)
    assert await any_store.queue.claim("w", [MODEL, OTHER_MODEL], 30) is None
    assert await credits(any_store, caller) == (100, 0)


async def test_attempts_workers_and_estimates(any_store: Store) -> None:
    caller = await caller_with(any_store)
    await any_store.queue.register_worker("w", [MODEL], 2)
    assert await any_store.queue.live_models() == {MODEL}
    task_id = await submit(any_store, caller)
    found = await any_store.tasks.view(task_id, caller.key_id)
    assert found is not None
    assert (found[1].position, found[1].live_slots, found[1].measured) == (0, 2, None)
    task = await claimed(any_store)
    first = await any_store.queue.start_attempt(task, "fast")
    await any_store.queue.end_attempt(first, AttemptOutcome.RETRYABLE, "busy")
    second = await any_store.queue.start_attempt(task, "slow")
    assert await any_store.queue.complete(task, "outputs/x.png", "slow", second)
    outlook = await any_store.tasks.outlook(await current(any_store, task_id))
    assert [(a.backend, a.claim, a.outcome, a.error) for a in outlook.attempts] == [
        ("fast", 1, "retryable", "busy"),
        ("slow", 1, "success", None),
    ]
    measured = await any_store.tasks.measured(MODEL, edits=False)
    assert measured is not None and measured.basis == "backend"
    await any_store.queue.unregister_worker("w")
    assert await any_store.queue.live_models() == set()


async def test_workers_advertise_what_is_resident_and_a_swap_is_waited_for(
    any_store: Store,
) -> None:
    """A worker says which of its models it has resident and how long each took to swap in
    (one that says nothing has all resident). A task of a model no live worker has resident
    waits for the shortest advertised swap-in, queued, and claimed but not yet painting."""
    caller = await caller_with(any_store)
    both = [MODEL, OTHER_MODEL]
    times = {MODEL: 3.0, OTHER_MODEL: 7.5, "not-its-model": 1.0}
    await any_store.queue.register_worker("w", both, 1, resident=[MODEL], load_s=times)
    await any_store.queue.register_worker("slow", [OTHER_MODEL], 1, [], {OTHER_MODEL: 9.0})
    await any_store.queue.register_worker("old", [MODEL], 1)  # from before the advert
    assert await any_store.queue.live_models() == set(both)
    resident_id = await submit(any_store, caller)
    swapping_id = await submit(any_store, caller, model=OTHER_MODEL)
    resident = await any_store.tasks.outlook(await current(any_store, resident_id))
    swapping = await any_store.tasks.outlook(await current(any_store, swapping_id))
    assert (resident.swap_s, swapping.swap_s, swapping.live_slots) == (None, 7.5, 3)
    task = await any_store.queue.claim("slow", [OTHER_MODEL], 30)
    assert task is not None and task.id == swapping_id
    assert (await any_store.tasks.outlook(task)).swap_s == 9.0  # its worker's swap-in
    assert (await any_store.queue.heartbeat(task, 30, 10)).ours  # painting: swapped in
    assert (await any_store.tasks.outlook(await current(any_store, task.id))).swap_s is None
    # "w" swaps OTHER_MODEL in: a new advert is counted at once by the process it reached.
    await any_store.queue.register_worker("w", both, 1, resident=both, load_s=times)
    later_id = await submit(any_store, caller, model=OTHER_MODEL)
    later = await any_store.tasks.view(later_id)
    assert later is not None and later[1].swap_s is None


async def test_the_oldest_queued_task_of_some_models(any_store: Store) -> None:
    """What a worker asks before it prefers its resident models: when the oldest queued
    task of the others was created, across keys, queued tasks only."""
    first, second = await caller_with(any_store, name="a"), await caller_with(any_store, name="b")
    assert await any_store.queue.oldest_queued([MODEL]) is None
    other_id = await submit(any_store, first, model=OTHER_MODEL)
    model_id = await submit(any_store, second)
    await submit(any_store, first)
    created = {i: (await current(any_store, i)).created_at for i in (other_id, model_id)}
    assert await any_store.queue.oldest_queued([MODEL]) == created[model_id]
    assert await any_store.queue.oldest_queued([MODEL, OTHER_MODEL]) == created[other_id]
    assert await any_store.queue.oldest_queued([]) is None
    assert await any_store.queue.oldest_queued(["gpt_image_2"]) is None
    assert (await any_store.queue.claim("w", [OTHER_MODEL], 30)) is not None
    assert await any_store.queue.oldest_queued([OTHER_MODEL]) is None
    assert await any_store.queue.oldest_queued([OTHER_MODEL, MODEL]) == created[model_id]


async def test_outputs_past_their_retention(any_store: Store) -> None:
    caller = await caller_with(any_store)
    task_id = await submit(any_store, caller)
    assert await any_store.queue.complete(await claimed(any_store), "outputs/x.png", "dry")
    assert await any_store.tasks.outputs_past(3600) == []
    assert await any_store.tasks.outputs_past(-1) == [(task_id, ["outputs/x.png"])]
    await any_store.tasks.mark_output_deleted(task_id)
    gone = await current(any_store, task_id)
    assert gone.output_key is None and gone.output_deleted_at is not None
    assert await any_store.tasks.outputs_past(-1) == []
    views = {"front": "outputs/f.png", "back": "outputs/b.png"}
    multi_id = await submit(any_store, caller)
    multi = await claimed(any_store)
    assert await any_store.queue.complete(multi, "outputs/f.png", "dry", views=views)
    assert (await current(any_store, multi_id)).output_views == views
    assert await any_store.tasks.outputs_past(-1) == [
        (multi_id, ["outputs/b.png", "outputs/f.png"])
    ]
