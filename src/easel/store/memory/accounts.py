"""Accounts, keys and the credit ledger, in memory."""

from __future__ import annotations

import secrets
import time
import uuid
from collections.abc import Collection

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
from easel.store.memory.state import AccountRow, KeyRow, Memory
from easel.store.refusals import past_max_credits


class MemoryAccounts:
    def __init__(self, memory: Memory) -> None:
        self._m = memory

    def _key(self, key: str) -> KeyRow:
        """The key with this value, revoked or not."""
        digest = hash_key(key)
        for row in self._m.keys.values():
            if row.key_hash == digest:
                return row
        raise UnknownKey(key[:10])

    async def create_key(self, name: str, credits: int) -> str:
        check_name(name)
        check_amount(credits, least=0)
        key = KEY_PREFIX + secrets.token_urlsafe(32)
        account_id, key_id, now = str(uuid.uuid4()), str(uuid.uuid4()), time.time()
        async with self._m.lock:
            self._m.accounts[account_id] = AccountRow(name, 0, 0, now)
            self._m.keys[key_id] = KeyRow(key_id, account_id, hash_key(key), now)
            if credits:
                self._m.record_move(account_id, None, LedgerKind.GRANT, credits, 0)
        return key

    async def authenticate(self, key: str) -> Caller:
        async with self._m.lock:
            row = self._key(key)
            if row.revoked_at is not None:
                raise UnknownKey(key[:10])
            return Caller(key_id=row.id, account_id=row.account_id)

    async def active_keys(self, key_ids: Collection[str]) -> set[str]:
        async with self._m.lock:
            return {
                key_id
                for key_id in key_ids
                if (row := self._m.keys.get(key_id)) is not None and row.revoked_at is None
            }

    async def revoke(self, key: str) -> None:
        async with self._m.lock:
            row = self._key(key)
            if row.revoked_at is not None:
                raise UnknownKey(key[:10])
            row.revoked_at = time.time()

    async def grant(self, key: str, credits: int) -> Balance:
        check_amount(credits, least=1)
        async with self._m.lock:
            account_id = self._key(key).account_id
            account = self._m.accounts[account_id]
            held = account.balance + account.frozen
            if held > MAX_CREDITS - credits:
                raise past_max_credits(credits, held)
            self._m.record_move(account_id, None, LedgerKind.GRANT, credits, 0)
            return Balance(account.balance, account.frozen)

    async def balance(self, account_id: str) -> Balance:
        async with self._m.lock:
            account = self._m.accounts[account_id]
            return Balance(account.balance, account.frozen)

    async def balance_of_key(self, key: str) -> tuple[Balance, list[LedgerRow]]:
        async with self._m.lock:
            account_id = self._key(key).account_id
            mine = [e for e in self._m.ledger if e.account_id == account_id]
        tail = [
            LedgerRow(e.kind, e.balance_delta, e.frozen_delta, e.task_id, e.created_at)
            for e in reversed(mine[-10:])
        ]
        return await self.balance(account_id), tail

    async def ledger_sums(self, account_id: str) -> Balance:
        async with self._m.lock:
            mine = [e for e in self._m.ledger if e.account_id == account_id]
        return Balance(sum(e.balance_delta for e in mine), sum(e.frozen_delta for e in mine))
