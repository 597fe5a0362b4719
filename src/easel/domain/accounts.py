"""Accounts as the rules see them: who is calling, what a balance is, which amounts and names
the ledger takes. The store keeps them; these are the types and checks every layer shares."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from enum import StrEnum


class LedgerKind(StrEnum):
    """What moved credits (the ledger's ``kind``)."""

    GRANT = "grant"  # the operator added credits to the balance
    HOLD = "hold"  # a submit moved the price from the balance to frozen
    SETTLE = "settle"  # a success consumed the held price
    REFUND = "refund"  # a task that did not succeed gave the held price back


KEY_PREFIX = "tsk_"
# The most credits an account may hold (balance and frozen together), and so the largest
# amount one grant may add: 2^53 - 1. Every figure a client reads back is then exact in a
# JSON number parsed as a double (JavaScript, the playground, many JSON libraries), and no
# sum the database makes of them (a move applied to a balance, SUM over the ledger) comes
# near 2^63, past which SQLite silently turns an INTEGER column's value into a REAL.
MAX_CREDITS = 2**53 - 1
MAX_NAME_CHARS = 200  # accounts.name is varchar(200)


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


@dataclass(frozen=True, slots=True)
class Caller:
    """The authenticated owner of a request."""

    key_id: str
    account_id: str


@dataclass(frozen=True, slots=True)
class Balance:
    balance: int
    frozen: int


@dataclass(frozen=True, slots=True)
class LedgerRow:
    kind: str
    balance_delta: int
    frozen_delta: int
    task_id: str | None
    created_at: float


class UnknownKey(LookupError):
    """No active key with that value."""


class InvalidAccount(ValueError):
    """An amount or account name the ledger refuses; nothing was written."""


def check_amount(credits: int, *, least: int) -> None:
    if not least <= credits <= MAX_CREDITS:
        raise InvalidAccount(
            f"credits must be a whole number from {least} to {MAX_CREDITS} (2^53 - 1), "
            f"not {credits}"
        )


def check_name(name: str) -> None:
    """A name of 1 to MAX_NAME_CHARS characters of valid text, without control characters
    (PostgreSQL refuses NUL and text that is not valid UTF-8; a name is shown in a terminal)."""
    try:
        name.encode()
    except UnicodeEncodeError:
        raise InvalidAccount("the account name is not valid text") from None
    if not 1 <= len(name) <= MAX_NAME_CHARS:
        raise InvalidAccount(
            f"the account name must have 1 to {MAX_NAME_CHARS} characters, not {len(name)}"
        )
    if any(ord(char) < 32 or 127 <= ord(char) < 160 for char in name):
        raise InvalidAccount("the account name may not contain control characters")
