"""The store contract, part 2: accounts, the event log, webhooks and their outbox, files,
secrets and metrics, on the in-memory store, SQLite and PostgreSQL (``any_store``)."""

from __future__ import annotations

import time

import pytest

from easel.domain.accounts import MAX_CREDITS, InvalidAccount, UnknownKey
from easel.domain.errors import InvalidParameter
from easel.domain.tasks import Status
from easel.domain.webhooks import MAX_PER_KEY, LoggedAttempt
from easel.store import Store
from easel.store.records import PENDING_SIZE, StoredFile
from test_store_contract import MODEL, caller_with, claimed, submit


async def test_keys_grants_and_revocation(any_store: Store) -> None:
    key = await any_store.accounts.create_key("k", 10)
    caller = await any_store.accounts.authenticate(key)
    other = await any_store.accounts.authenticate(await any_store.accounts.create_key("o", 0))
    both = {caller.key_id, other.key_id}
    assert await any_store.accounts.active_keys(both | {"no-such-key"}) == both
    assert await any_store.accounts.active_keys(set()) == set()
    granted = await any_store.accounts.grant(key, 5)
    assert (granted.balance, granted.frozen) == (15, 0)
    with pytest.raises(InvalidAccount, match="past the maximum"):
        await any_store.accounts.grant(key, MAX_CREDITS)
    balance, ledger = await any_store.accounts.balance_of_key(key)
    assert balance.balance == 15 and [r.kind for r in ledger] == ["grant", "grant"]
    with pytest.raises(UnknownKey):
        await any_store.accounts.authenticate(key + "x")
    await any_store.accounts.revoke(key)
    assert await any_store.accounts.active_keys(both) == {other.key_id}
    with pytest.raises(UnknownKey):
        await any_store.accounts.revoke(key)


async def test_events_replay_from_a_number_per_account(any_store: Store) -> None:
    caller = await caller_with(any_store)
    other = await caller_with(any_store, name="other")
    first = await submit(any_store, caller)
    await submit(any_store, other)
    second = await submit(any_store, caller)
    task = await claimed(any_store)
    await any_store.queue.heartbeat(task, 30, 50)
    await any_store.queue.heartbeat(task, 30, 50)  # no progress: no event
    events = await any_store.events.after(caller.account_id, caller.key_id, 0)
    assert [(e.seq, e.task_id, e.status, e.progress) for e in events] == [
        (1, first, Status.QUEUED, 0),
        (2, second, Status.QUEUED, 0),
        (3, first, Status.RUNNING, 0),
        (4, first, Status.RUNNING, 50),
    ]
    assert [e.seq for e in await any_store.events.after(caller.account_id, caller.key_id, 2)] == [
        3,
        4,
    ]
    of_second = await any_store.events.after(caller.account_id, caller.key_id, 0, task_id=second)
    assert [e.seq for e in of_second] == [2]
    assert await any_store.events.after(caller.account_id, "another key", 0) == []
    assert await any_store.events.last_seq(caller.account_id) == 4
    assert await any_store.events.last_seq(other.account_id) == 1
    assert await any_store.events.last_seq_before(caller.account_id, events[2].created_at) == 2
    assert await any_store.events.prune(before=events[-1].created_at + 1) == 5
    await any_store.queue.complete(task, "outputs/x.png", "dry")
    after = await any_store.events.after(caller.account_id, caller.key_id, 0)
    assert [(e.seq, e.status, e.kind) for e in after] == [(5, Status.SUCCESS, "finalized")]


async def test_webhooks_belong_to_their_key(any_store: Store) -> None:
    owner = await caller_with(any_store)
    stranger = await caller_with(any_store, name="stranger")
    made = {}
    for n in range(MAX_PER_KEY):
        hook = await any_store.webhooks.create(
            owner, url=f"https://h/{n}", event_types=["task.success"], secret="s", base_url="b"
        )
        made[hook.id] = hook
    with pytest.raises(InvalidParameter, match=f"the limit is {MAX_PER_KEY}"):
        await any_store.webhooks.create(
            owner, url="https://h/x", event_types=["task.success"], secret="s", base_url="b"
        )
    listed = await any_store.webhooks.of_key(owner.key_id)
    assert [h.id for h in listed] == list(made)
    some = listed[0]
    assert await any_store.webhooks.of_key(owner.key_id, some.id) == [some]
    assert await any_store.webhooks.of_key(stranger.key_id, some.id) == []
    assert not await any_store.webhooks.delete(some.id, stranger.key_id)
    assert await any_store.webhooks.delete(some.id, owner.key_id)
    assert not await any_store.webhooks.delete(some.id, owner.key_id)
    assert len(await any_store.webhooks.of_key(owner.key_id)) == MAX_PER_KEY - 1


async def test_the_outbox_delivers_each_status_once_under_a_lease(any_store: Store) -> None:
    caller = await caller_with(any_store)
    hook = await any_store.webhooks.create(
        caller,
        url="https://h/",
        event_types=["task.queued", "task.running", "task.success"],
        secret="sec",
        base_url="https://easel",
    )
    task_id = await submit(any_store, caller)
    task = await claimed(any_store)
    await any_store.queue.heartbeat(task, 30, 40)  # progress only: no delivery
    assert await any_store.queue.complete(task, "outputs/x.png", "dry")
    deliveries = await any_store.webhooks.deliveries(hook.id)
    assert sorted(d.event_type for d in deliveries) == [
        "task.queued",
        "task.running",
        "task.success",
    ]
    assert {(d.task_id, d.status) for d in deliveries} == {(task_id, "pending")}
    due = await any_store.webhooks.claim(now=deliveries[0].created_at + 1, lease_s=60, limit=2)
    assert len(due) == 2 and {d.url for d in due} == {"https://h/"} and due[0].secret == "sec"
    leased = await any_store.webhooks.claim(now=deliveries[0].created_at + 1, lease_s=60, limit=9)
    assert len(leased) == 1  # the other two are leased
    at = due[0].created_at + 2
    assert await any_store.webhooks.finish(
        due[0], LoggedAttempt(1, 200, 5.0, None, at), "delivered", None
    )
    assert not await any_store.webhooks.finish(
        due[0], LoggedAttempt(1, 200, 5.0, None, at), "dead", None
    )
    [done] = await any_store.webhooks.deliveries(hook.id, delivery_id=due[0].id)
    assert (done.status, [a.status_code for a in done.attempts]) == ("delivered", [200])
    assert await any_store.webhooks.redeliver(hook.id, done.id, now=at)
    assert not await any_store.webhooks.redeliver(hook.id, "msg_none", now=at)
    [again] = await any_store.webhooks.claim(now=at, lease_s=60, limit=1)
    assert again.id == done.id and again.window_attempts == 0
    assert await any_store.webhooks.finish(again, LoggedAttempt(2, 500, 1.0, "x", at), "dead", None)
    assert await any_store.webhooks.prune(before=at + 1) == 1
    assert len(await any_store.webhooks.deliveries(hook.id)) == 2


async def test_file_records_belong_to_their_account(any_store: Store) -> None:
    owner = await caller_with(any_store)
    stranger = await caller_with(any_store, name="stranger")
    done = StoredFile("t1", owner.account_id, "uploads/t1.png", "png", 10, 4, 4)
    pending = StoredFile("t2", owner.account_id, "uploads/t2.png", "", PENDING_SIZE, 0, 0)
    await any_store.files.add(done)
    await any_store.files.add(pending)
    assert await any_store.files.find(owner.account_id, token="t1") == done
    assert await any_store.files.find(owner.account_id, key="uploads/t1.png") == done
    assert await any_store.files.find(stranger.account_id, token="t1") is None
    assert await any_store.files.pending_before(before=0) == []
    assert await any_store.files.pending_before(before=time.time() + 1) == [pending]
    arrived = StoredFile("t2", owner.account_id, "uploads/t2.png", "webp", 20, 8, 8)
    await any_store.files.complete(arrived)
    await any_store.files.complete(StoredFile("t2", owner.account_id, "k", "png", 30, 1, 1))
    assert await any_store.files.find(owner.account_id, token="t2") == arrived
    await any_store.files.forget_pending("t2")  # no longer pending: kept
    assert await any_store.files.find(owner.account_id, token="t2") == arrived


async def test_secrets_and_metrics(any_store: Store) -> None:
    secret = await any_store.secrets.get_or_create("s")
    assert (
        await any_store.secrets.get_or_create("s")
        == secret
        != await any_store.secrets.get_or_create("t")
    )
    caller = await caller_with(any_store)
    await submit(any_store, caller)
    await submit(any_store, caller)
    task = await claimed(any_store)
    assert await any_store.queue.complete(task, "outputs/x.png", "dry")
    snap = await any_store.metrics.snapshot(time.time())
    assert snap.tasks == {(MODEL, "queued"): 1, (MODEL, "success"): 1}
    assert snap.credits_held == 5 and snap.oldest_queued_s >= 0
    assert snap.credits == {"grant": 100, "hold": 10, "settle": 5}
    assert snap.run_seconds[(MODEL, "dry")].count == 1
    assert snap.wait_seconds[MODEL].count == 1
