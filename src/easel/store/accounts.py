"""Accounts, API keys and the credit ledger: every statement that moves credits."""

from __future__ import annotations

import secrets
import time
import uuid
from collections.abc import Collection

from sqlalchemy import bindparam, func, insert, select, update
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from easel.domain.accounts import (
    KEY_PREFIX,
    MAX_CREDITS,
    Balance,
    Caller,
    LedgerKind,
    LedgerRow,
    UnknownKey,
    check_amount,
    check_name,
    hash_key,
)
from easel.store.db import connection, read_only, transaction
from easel.store.refusals import past_max_credits
from easel.store.tables import accounts, api_keys, ledger

# A credit move's statements, built once with bound parameters (every task makes two moves).
_INSERT_LEDGER_ROW = insert(ledger)
_MOVE = (
    update(accounts)
    .where(accounts.c.id == bindparam("account_id"))
    .values(
        balance=accounts.c.balance + bindparam("balance_delta"),
        frozen=accounts.c.frozen + bindparam("frozen_delta"),
    )
)

# Holds, settles and refunds never raise balance + frozen; only a grant does, so only a
# grant checks the maximum.
_balance_and_frozen = accounts.c.balance + accounts.c.frozen
_GRANT = (
    update(accounts)
    .where(accounts.c.id == bindparam("account_id"), _balance_and_frozen <= bindparam("room"))
    .values(balance=accounts.c.balance + bindparam("credits"))
)
_HELD = select(_balance_and_frozen).where(accounts.c.id == bindparam("account_id"))


async def write_ledger_row(
    conn: AsyncConnection,
    account_id: str,
    task_id: str | None,
    kind: LedgerKind,
    balance: int,
    frozen: int,
) -> None:
    """The ledger row of a move already applied to the account in this transaction."""
    await conn.execute(
        _INSERT_LEDGER_ROW,
        {
            "account_id": account_id,
            "task_id": task_id,
            "kind": kind,
            "balance_delta": balance,
            "frozen_delta": frozen,
            "created_at": time.time(),
        },
    )


async def record_move(
    conn: AsyncConnection,
    account_id: str,
    task_id: str | None,
    kind: LedgerKind,
    balance: int,
    frozen: int,
) -> None:
    """Apply one credit move to the account and write its ledger row (same transaction)."""
    move = {"account_id": account_id, "balance_delta": balance, "frozen_delta": frozen}
    await conn.execute(_MOVE, move)
    await write_ledger_row(conn, account_id, task_id, kind, balance, frozen)


_UNKNOWN_CACHE_S = 60.0  # an unknown key stays unknown: no key is ever made with its value


class AccountStore:
    """Accounts and keys. ``authenticate`` remembers a good key for ``auth_cache_s`` seconds
    (clients poll often); a revocation made elsewhere takes effect within that time. It
    remembers an unknown key for a minute, so a client repeating a bad key costs no query."""

    def __init__(self, engine: AsyncEngine, auth_cache_s: float = 5.0) -> None:
        self._engine = engine
        self._reads = read_only(engine)
        self._auth_cache_s = auth_cache_s
        self._callers: dict[str, tuple[float, Caller]] = {}
        self._unknown: dict[str, float] = {}  # digest -> until when it is known unknown

    async def create_key(self, name: str, credits: int) -> str:
        """A new account with one key and ``credits`` granted; returns the key (shown once).
        Raises :class:`InvalidAccount` for a name or amount out of bounds."""
        check_name(name)
        check_amount(credits, least=0)
        key = KEY_PREFIX + secrets.token_urlsafe(32)
        account_id, now = str(uuid.uuid4()), time.time()
        async with transaction(self._engine) as conn:
            await conn.execute(
                insert(accounts).values(
                    id=account_id, name=name, balance=0, frozen=0, created_at=now
                )
            )
            await conn.execute(
                insert(api_keys).values(
                    id=str(uuid.uuid4()),
                    account_id=account_id,
                    key_hash=hash_key(key),
                    prefix=key[:10],
                    created_at=now,
                )
            )
            if credits:
                await record_move(conn, account_id, None, LedgerKind.GRANT, credits, 0)
        return key

    async def authenticate(self, key: str) -> Caller:
        digest = hash_key(key)
        cached = self._callers.get(digest)
        if cached is not None and cached[0] > time.monotonic():
            return cached[1]
        if self._unknown.get(digest, 0.0) > time.monotonic():
            raise UnknownKey(key[:10])
        async with connection(self._reads) as conn:
            row = (
                await conn.execute(
                    select(api_keys.c.id, api_keys.c.account_id).where(
                        api_keys.c.key_hash == digest, api_keys.c.revoked_at.is_(None)
                    )
                )
            ).first()
        if row is None:
            self._callers.pop(digest, None)
            if len(self._unknown) > 10_000:
                self._unknown.clear()
            self._unknown[digest] = time.monotonic() + _UNKNOWN_CACHE_S
            raise UnknownKey(key[:10])
        caller = Caller(key_id=row.id, account_id=row.account_id)
        if len(self._callers) > 10_000:
            self._callers.clear()
        self._callers[digest] = (time.monotonic() + self._auth_cache_s, caller)
        return caller

    async def active_keys(self, key_ids: Collection[str]) -> set[str]:
        """Which of ``key_ids`` are still unrevoked, asked of the database (no cache) in one
        query: what the open event streams of a process re-check together."""
        if not key_ids:
            return set()
        async with connection(self._reads) as conn:
            rows = await conn.execute(
                select(api_keys.c.id).where(
                    api_keys.c.id.in_(sorted(key_ids)), api_keys.c.revoked_at.is_(None)
                )
            )
            return {key_id for (key_id,) in rows}

    async def _account_of(self, conn: AsyncConnection, key: str) -> str:
        account_id = (
            await conn.execute(
                select(api_keys.c.account_id).where(api_keys.c.key_hash == hash_key(key))
            )
        ).scalar()
        if account_id is None:
            raise UnknownKey(key[:10])
        return str(account_id)

    async def revoke(self, key: str) -> None:
        self._callers.pop(hash_key(key), None)
        async with transaction(self._engine) as conn:
            result = await conn.execute(
                update(api_keys)
                .where(api_keys.c.key_hash == hash_key(key), api_keys.c.revoked_at.is_(None))
                .values(revoked_at=time.time())
            )
            if result.rowcount == 0:
                raise UnknownKey(key[:10])

    async def grant(self, key: str, credits: int) -> Balance:
        """Add ``credits`` (1 to MAX_CREDITS); refused with :class:`InvalidAccount`, and
        nothing written, if the account would then hold more than MAX_CREDITS."""
        check_amount(credits, least=1)
        async with transaction(self._engine) as conn:
            account_id = await self._account_of(conn, key)
            # One conditional statement: concurrent grants cannot pass the maximum together.
            granted = await conn.execute(
                _GRANT,
                {"account_id": account_id, "credits": credits, "room": MAX_CREDITS - credits},
            )
            if granted.rowcount == 0:
                held = (await conn.execute(_HELD, {"account_id": account_id})).scalar_one()
                raise past_max_credits(credits, held)
            await write_ledger_row(conn, account_id, None, LedgerKind.GRANT, credits, 0)
        return await self.balance(account_id)

    async def balance(self, account_id: str) -> Balance:
        async with connection(self._reads) as conn:
            row = (
                await conn.execute(
                    select(accounts.c.balance, accounts.c.frozen).where(accounts.c.id == account_id)
                )
            ).one()
        return Balance(balance=row.balance, frozen=row.frozen)

    async def balance_of_key(self, key: str) -> tuple[Balance, list[LedgerRow]]:
        """Balance and the newest ledger rows (newest first) of the key's account."""
        async with connection(self._reads) as conn:
            account_id = await self._account_of(conn, key)
            rows = (
                await conn.execute(
                    select(ledger)
                    .where(ledger.c.account_id == account_id)
                    .order_by(ledger.c.id.desc())
                    .limit(10)
                )
            ).all()
        tail = [
            LedgerRow(r.kind, r.balance_delta, r.frozen_delta, r.task_id, r.created_at)
            for r in rows
        ]
        return await self.balance(account_id), tail

    async def ledger_sums(self, account_id: str) -> Balance:
        """The ledger's view of the account (must equal :meth:`balance`)."""
        async with connection(self._reads) as conn:
            row = (
                await conn.execute(
                    select(
                        func.coalesce(func.sum(ledger.c.balance_delta), 0),
                        func.coalesce(func.sum(ledger.c.frozen_delta), 0),
                    ).where(ledger.c.account_id == account_id)
                )
            ).one()
        return Balance(balance=int(row[0]), frozen=int(row[1]))
