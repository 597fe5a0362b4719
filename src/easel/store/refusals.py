"""The store's words, the same from every store: why it refuses a change (nothing written),
and why it ended a task itself."""

from __future__ import annotations

from easel.domain.accounts import MAX_CREDITS, InvalidAccount
from easel.domain.errors import (
    IdempotencyConflict,
    InvalidParameter,
    NotEnoughCredit,
    TooManyUnfinishedTasks,
)
from easel.domain.webhooks import MAX_PER_KEY
from easel.store.records import NewTask


def idempotency_conflict(key: str) -> IdempotencyConflict:
    return IdempotencyConflict(f"Idempotency-Key {key!r} was used with another request body.")


def too_many_unfinished(
    unfinished: int, max_unfinished: int, retry_after_s: int
) -> TooManyUnfinishedTasks:
    return TooManyUnfinishedTasks(
        f"This key already has {unfinished} unfinished tasks; the limit is {max_unfinished}.",
        retry_after_s=retry_after_s,
    )


def not_enough_credit(new: NewTask, balance: int | None) -> NotEnoughCredit:
    return NotEnoughCredit(
        f"{new.model_version} costs {new.price} credits; the balance is {balance}."
    )


def past_max_credits(credits: int, held: int) -> InvalidAccount:
    return InvalidAccount(
        f"granting {credits} credits would take the account past the maximum of "
        f"{MAX_CREDITS} credits (it holds {held}, frozen included)"
    )


def too_many_webhooks(count: int) -> InvalidParameter:
    return InvalidParameter(
        f"this key already has {count} webhooks; the limit is {MAX_PER_KEY}.",
        "Delete a webhook you no longer need ('DELETE /v2/openapi/webhooks/{id}').",
    )


def worker_gone(attempts: int) -> str:
    """The message of a task failed because its workers' leases lapsed ``attempts`` times."""
    return f"The task's worker stopped responding {attempts} times; giving up."


def waited_too_long(max_wait_s: float) -> str:
    """The message of a task expired in the queue."""
    return (
        f"The task waited more than {max_wait_s:.0f} s in the queue and expired; "
        "its credits were refunded."
    )
